#!/usr/bin/env bash
# System packages the toolkit and its tests need (Debian/Ubuntu). Idempotent: installs only
# what is missing. ffmpeg: decoding (torchcodec, whisper, pyannote, demucs need it);
# espeak-ng: Dutch test speech; alsa-utils: real voice clips; asc-music: real music clips.
set -euo pipefail
need=()
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
[ -e /usr/share/sounds/alsa/Front_Center.wav ] || need+=(alsa-utils)
ls /usr/share/games/asc/music/*.mp3 >/dev/null 2>&1 || need+=(asc-music)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
echo "installing system packages: ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${need[@]}" >/dev/null
