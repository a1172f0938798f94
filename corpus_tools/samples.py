"""A small "broadcast" archive built from real audio that packages ship.

Used by ``make demo`` and by the tests. Sources (all arrive through package registries):

* pyannote.audio's ``sample/sample.wav``: a real 2-speaker telephone call (30 s), with a
  reference ``sample.rttm`` (speaker turns) and ``sample.stm`` (transcript);
* Debian ``alsa-utils`` voice clips (``/usr/share/sounds/alsa/*.wav``) and ``Noise.wav``;
* Debian ``asc-music`` (``/usr/share/games/asc/music/*.mp3``) for music-only stretches;
* ``espeak-ng -v nl`` for Dutch speech (synthetic, several voices).

Each built file comes with its timeline (kind per stretch), so tests can check that
segmentation keeps speech and leaves music and silence out, and with a reference for
`corpus score` in ``reference/``: ``<id>.rttm`` (speaker turns) and ``<id>.labels.csv``
(music / noise / silence stretches).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from corpus_tools.audio import SAMPLE_RATE, load_audio, write_audio

ALSA_DIR = Path("/usr/share/sounds/alsa")
MUSIC_DIR = Path("/usr/share/games/asc/music")

DUTCH_SENTENCES = [
    "Goedemorgen, dit is het nieuws van acht uur.",
    "Het kabinet heeft vandaag nieuwe maatregelen aangekondigd voor de woningmarkt.",
    "In het noorden van het land wordt het morgen droog en zonnig.",
    "De minister zei dat er volgend jaar meer geld komt voor het onderwijs.",
    "Welkom bij de quiz van vanavond, we beginnen meteen met de eerste vraag.",
    "Wat is de hoofdstad van de provincie Gelderland?",
    "Dat is het goede antwoord, u krijgt tien punten.",
    "In deze documentaire volgen we een boer uit Friesland gedurende een heel jaar.",
]
DUTCH_VOICES = ["nl", "nl+m3", "nl+f2", "nl+m7"]


class SampleSourceMissing(RuntimeError):
    pass


def pyannote_sample_dir() -> Path:
    spec = importlib.util.find_spec("pyannote.audio")
    if spec is None or not spec.submodule_search_locations:
        raise SampleSourceMissing("pyannote.audio is not installed (it ships sample/sample.wav)")
    d = Path(list(spec.submodule_search_locations)[0]) / "sample"
    if not (d / "sample.wav").exists():
        raise SampleSourceMissing(f"{d}/sample.wav not found")
    return d


def alsa_clips() -> list[Path]:
    clips = sorted(p for p in ALSA_DIR.glob("*.wav") if p.name != "Noise.wav")
    if not clips:
        raise SampleSourceMissing("Debian alsa-utils voice clips not found in /usr/share/sounds/alsa")
    return clips


def music_files() -> list[Path]:
    files = sorted(MUSIC_DIR.glob("*.mp3"))
    if not files:
        raise SampleSourceMissing("Debian asc-music not found in /usr/share/games/asc/music")
    return files


def espeak(text: str, voice: str = "nl", speed: int = 150) -> np.ndarray:
    """Synthesise ``text`` with espeak-ng and return 16 kHz mono float32."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SampleSourceMissing("espeak-ng not found (Debian: apt-get install -y espeak-ng)")
    res = subprocess.run([exe, "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True, check=True)
    import io

    import soundfile as sf

    x, sr = sf.read(io.BytesIO(res.stdout), dtype="float32")
    import soxr

    return soxr.resample(x, sr, SAMPLE_RATE).astype(np.float32)


@dataclass
class Stretch:
    start: float
    end: float
    kind: str  # speech | music | silence | noise
    source: str


def _noise(seconds: float, rng: np.random.Generator, level: float = 0.05) -> np.ndarray:
    return (rng.standard_normal(int(seconds * SAMPLE_RATE)) * level).astype(np.float32)


def build_broadcast(out_wav: Path, seed: int = 0, dutch: bool = True,
                    music_seconds: float = 8.0) -> list[Stretch]:
    """Write one broadcast-like 16 kHz wav and return its timeline.

    Layout: music intro · Dutch news read by several voices · silence · the real
    2-speaker call · noise · music · Dutch quiz · short alsa clips · music outro.
    """
    rng = np.random.default_rng(seed)
    parts: list[tuple[np.ndarray, str, str]] = []
    music = music_files()

    def add_music(i: int, secs: float):
        path = music[i % len(music)]
        off = 20.0 + 7.0 * i
        parts.append((load_audio(path, off, off + secs) * 0.6, "music", path.name))

    add_music(seed, music_seconds)
    if dutch:
        for k, sent in enumerate(DUTCH_SENTENCES[:4]):
            voice = DUTCH_VOICES[(k + seed) % len(DUTCH_VOICES)]
            parts.append((espeak(sent, voice), "speech", f"espeak:{voice}"))
            parts.append((np.zeros(int(0.4 * SAMPLE_RATE), np.float32), "silence", "pause"))
    parts.append((np.zeros(int(4.0 * SAMPLE_RATE), np.float32), "silence", "silence"))
    call = pyannote_sample_dir() / "sample.wav"
    parts.append((load_audio(call), "speech", "pyannote:sample.wav"))
    parts.append((_noise(3.0, rng), "noise", "white noise"))
    add_music(seed + 1, music_seconds)
    if dutch:
        for k, sent in enumerate(DUTCH_SENTENCES[4:]):
            voice = DUTCH_VOICES[(k + seed + 1) % len(DUTCH_VOICES)]
            parts.append((espeak(sent, voice), "speech", f"espeak:{voice}"))
            parts.append((np.zeros(int(0.3 * SAMPLE_RATE), np.float32), "silence", "pause"))
    for clip in alsa_clips()[:3]:
        parts.append((load_audio(clip), "speech", f"alsa:{clip.name}"))
        parts.append((np.zeros(int(0.5 * SAMPLE_RATE), np.float32), "silence", "pause"))
    add_music(seed + 2, music_seconds / 2)

    timeline, t, chunks = [], 0.0, []
    for x, kind, src in parts:
        dur = len(x) / SAMPLE_RATE
        timeline.append(Stretch(round(t, 4), round(t + dur, 4), kind, src))
        chunks.append(x)
        t += dur
    write_audio(out_wav, np.concatenate(chunks))
    return timeline


def _ffmpeg(*args: str) -> None:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise SampleSourceMissing("ffmpeg not found (Debian: apt-get install -y ffmpeg)")
    subprocess.run([exe, "-nostdin", "-v", "error", "-y", *args], check=True)


def build_sample_archive(out_dir: str | Path, n_broadcasts: int = 2, dutch: bool = True,
                         with_bad_files: bool = False) -> Path:
    """A folder of broadcasts in several containers + metadata.csv + timelines.json.

    ``with_bad_files`` adds the hostile cases ingest must survive: a zero-byte file, a
    truncated mp3, a text file renamed ``.wav`` and an mp4 without an audio stream.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timelines, meta = {}, []
    for i in range(n_broadcasts):
        rid = f"bc{i:03d}"
        wav = out / f"{rid}.wav"
        timelines[rid] = [asdict(s) for s in build_broadcast(wav, seed=i, dutch=dutch)]
        write_sample_reference(out / REFERENCE_DIR, rid, timelines[rid], load_audio(wav))
        if i % 3 == 1:  # vary containers like a real archive: mp3 and AAC-in-mp4
            _ffmpeg("-i", str(wav), "-c:a", "libmp3lame", "-b:a", "96k", str(out / f"{rid}.mp3"))
            wav.unlink()
        elif i % 3 == 2:
            _ffmpeg("-f", "lavfi", "-i", "color=c=black:s=64x64:r=5", "-i", str(wav), "-shortest",
                    "-c:v", "libx264" if _has_encoder("libx264") else "mpeg4", "-c:a", "aac", "-b:a", "96k",
                    str(out / f"{rid}.mp4"))
            wav.unlink()
        meta.append({"id": rid, "title": f"Programma {i}", "summary": "Nieuws en achtergronden",
                     "genre": ["actualiteiten", "quiz", "documentaire"][i % 3],
                     "date": f"2020-01-{i + 1:02d}"})
    if with_bad_files:
        add_bad_files(out)
    import csv

    with open(out / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(meta[0]))
        w.writeheader()
        w.writerows(meta)
    (out / "timelines.json").write_text(json.dumps(timelines, indent=1))
    return out


REFERENCE_DIR = "reference"
# espeak-ng ends each utterance with ~0.4 s of digital silence and the alsa clips carry some
# too: a reference turn runs from the first to the last sample above -40 dBFS of its stretch.
SPEECH_EDGE_LEVEL = 0.01
ALSA_SPEAKER = "alsa"  # the alsa-utils clips are read by one voice


def sample_reference(timeline: list[dict], audio: np.ndarray) -> tuple[list[tuple], list[tuple]]:
    """Speaker turns and non-speech labels of a built broadcast, from its timeline and audio.

    Each espeak voice is a speaker (``espeak:nl+m3``); the pyannote call contributes the turns
    of its own ``sample.rttm`` (``pyannote:speaker90``), shifted to where it sits; the alsa clips
    are one speaker. Music, noise and silence stretches become labels of that kind."""
    from corpus_tools.score.reference import load_references

    turns, labels = [], []
    for st in timeline:
        start, end, kind, src = float(st["start"]), float(st["end"]), st["kind"], st["source"]
        if kind != "speech":
            labels.append((start, end, kind))
        elif src == "pyannote:sample.wav":
            call = load_references(pyannote_sample_dir() / "sample.rttm")["sample"]
            turns += [(start + t0, min(end, start + t1), f"pyannote:{spk}") for t0, t1, spk in call.turns]
        else:
            chunk = audio[int(round(start * SAMPLE_RATE)):int(round(end * SAMPLE_RATE))]
            loud = np.flatnonzero(np.abs(chunk) > SPEECH_EDGE_LEVEL)
            if loud.size:
                speaker = ALSA_SPEAKER if src.startswith("alsa:") else src
                turns.append((start + loud[0] / SAMPLE_RATE, start + (loud[-1] + 1) / SAMPLE_RATE, speaker))
    return sorted(turns), labels


def write_sample_reference(ref_dir: Path, rid: str, timeline: list[dict], audio: np.ndarray) -> None:
    """``ref_dir/<rid>.rttm`` (speaker turns) and ``ref_dir/<rid>.labels.csv`` (non-speech)."""
    import csv

    from corpus_tools.score.metrics import annotation

    turns, labels = sample_reference(timeline, audio)
    ref_dir.mkdir(parents=True, exist_ok=True)
    with open(ref_dir / f"{rid}.rttm", "w", encoding="utf-8") as fh:
        annotation(turns, rid).write_rttm(fh)
    with open(ref_dir / f"{rid}.labels.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["recording", "start", "end", "label"])
        w.writerows([rid, f"{a:.4f}", f"{b:.4f}", kind] for a, b, kind in labels)


def write_missing_references(out: Path) -> int:
    """References for an archive built before they were written (decoded from its media)."""
    timelines = json.loads((out / "timelines.json").read_text())
    done = 0
    for rid, timeline in timelines.items():
        if (out / REFERENCE_DIR / f"{rid}.rttm").exists():
            continue
        media = [p for p in sorted(out.glob(f"{rid}.*")) if p.suffix in (".wav", ".mp3", ".mp4")]
        if media:
            write_sample_reference(out / REFERENCE_DIR, rid, timeline, load_audio(media[0]))
            done += 1
    return done


def _has_encoder(name: str) -> bool:
    res = subprocess.run([shutil.which("ffmpeg") or "ffmpeg", "-hide_banner", "-encoders"],
                         capture_output=True, text=True)
    return name in res.stdout


def add_bad_files(out: Path) -> dict[str, str]:
    """Hostile inputs with the status ingest must give each."""
    (out / "empty.wav").write_bytes(b"")
    (out / "notes_renamed.wav").write_text("this is a text file, not audio\n" * 20)
    src = out / "_tmp_src.wav"
    write_audio(src, espeak("Dit bestand wordt afgekapt.", "nl") if shutil.which("espeak-ng")
                else _noise(4.0, np.random.default_rng(0)))
    _ffmpeg("-i", str(src), "-c:a", "libmp3lame", "-b:a", "64k", str(out / "_full.mp3"))
    data = (out / "_full.mp3").read_bytes()
    (out / "truncated.mp3").write_bytes(data[: len(data) // 2])
    (out / "_full.mp3").unlink()
    src.unlink()
    _ffmpeg("-f", "lavfi", "-i", "color=c=blue:s=64x64:r=5:d=2", "-an", "-c:v", "mpeg4",
            str(out / "video_only.mp4"))
    return {"empty.wav": "failed", "notes_renamed.wav": "failed", "truncated.mp3": "failed",
            "video_only.mp4": "failed"}


def main(argv: list[str] | None = None) -> None:
    """``python -m corpus_tools.samples OUT_DIR [N]``: build the demo archive."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: python -m corpus_tools.samples OUT_DIR [N_BROADCASTS]")
    out = Path(args[0])
    if (out / "timelines.json").exists():
        added = write_missing_references(out)
        print(f"sample archive already in {out}" + (f" (wrote {added} missing reference(s))" if added else ""))
        return
    n = int(args[1]) if len(args) > 1 else 2
    build_sample_archive(out, n_broadcasts=n)
    print(f"sample archive with {n} broadcasts → {out}")


if __name__ == "__main__":
    main()
