"""The model registry and offline models: real loading code of every library, no network.

Uses the session-scoped ``models_dir`` fixture (tests/conftest.py), which runs
``prepare_offline`` once (~15 s on 2 cores).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from corpora import put_audio, speech
from corpus_tools import models as M
from corpus_tools.models.ct2_to_openai import read_ct2_model

SITE = Path(torch.__file__).resolve().parent.parent
SAMPLE_WAV = SITE / "pyannote" / "audio" / "sample" / "sample.wav"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("CORPUS_MODELS", raising=False)
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def hello_wav(tmp_path_factory) -> Path:
    """Synthetic English speech (espeak-ng), 16 kHz mono."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng (Debian package) is not installed; it synthesises the ASR test clip")
    return put_audio(tmp_path_factory.mktemp("tts") / "hello.wav", speech("hello world, this is a test", "en", 175))


# ------------------------------------------------------------------------------------------
# preparation and resolution


@pytest.mark.slow
def test_prepare_offline_is_idempotent_and_documented(models_dir):
    again = M.prepare_offline(models_dir)
    assert again["created"] == []
    assert len(again["skipped"]) == len(again["entries"])
    manifest = json.loads((models_dir / "models.json").read_text())
    for entry in manifest["entries"]:
        assert (models_dir / entry["path"]).exists(), entry
        if entry["stand_in"]:
            assert entry["name"].startswith(("random-", "punkt_tab-stub"))
    assert "STAND-IN" in (models_dir / "MODELS.md").read_text()
    # Whisper base: the two package halves concatenated into one valid CTranslate2 file.
    ct2 = read_ct2_model(models_dir / "whisper-ct2" / "base" / "model.bin")
    assert ct2.spec == "WhisperSpec" and ct2.scalar("encoder/num_heads") == 8
    assert ct2.get("decoder/projection/weight") is ct2.get("decoder/embeddings/weight")   # alias


@pytest.mark.slow
def test_resolve_by_name_alias_path_and_env(models_dir, monkeypatch):
    base = (models_dir / "whisper-ct2" / "base").resolve()
    assert M.resolve("whisper-ct2", "base", models_dir) == base
    assert M.resolve("whisper-ct2", "Systran/faster-whisper-base", models_dir) == base   # alias
    assert M.resolve("whisper-ct2", str(base), None) == base                            # a path wins
    assert M.resolve("whisper-openai", "base", models_dir).name == "base.pt"
    assert M.resolve("vad", "silero", models_dir).name == "silero_vad.jit"
    assert M.resolve("vad", "pyannote-segmentation-3.0", models_dir).parent.name == "pyannote-segmentation-3.0"
    assert M.resolve("demucs", "random-tiny-htdemucs", models_dir).suffix == ".yaml"
    monkeypatch.setenv("CORPUS_MODELS", str(models_dir))
    r = M.locate("align", "random-wav2vec2-ctc-nl")
    assert r.source == "models-dir" and r.stand_in
    # Package-bundled files are found without a models folder.
    monkeypatch.delenv("CORPUS_MODELS")
    assert M.locate("vad", "whisperx-pyannote", None).source in ("package", "models-dir")


@pytest.mark.parametrize("kind,name,option", [
    ("whisper-ct2", "large-v2", "--whisper-model"),
    ("whisper-openai", "large-v2", "--whisper-model"),
    ("align", "jonatasgrosman/wav2vec2-large-xlsr-53-dutch", "--align-model"),
    ("diarization", "pyannote/speaker-diarization-community-1", "--diarize-model"),
    ("vad", "no-such-vad", "--vad-model"),
    ("demucs", "htdemucs", "--demucs-model"),
    ("whisper-ct2", "./missing/dir", "--whisper-model"),
])
@pytest.mark.slow
def test_missing_model_error_names_the_option(models_dir, kind, name, option):
    with pytest.raises(M.ModelNotFoundError) as info:
        M.resolve(kind, name, models_dir)
    message = str(info.value)
    assert option in message and "corpus models prepare-offline" in message


def test_wrong_folder_is_rejected(tmp_path):
    with pytest.raises(M.ModelNotFoundError, match="no model.bin"):
        M.resolve("whisper-ct2", str(tmp_path))


@pytest.mark.slow
def test_defaults_fall_back_to_models_folder_when_offline(models_dir):
    assert M.default_model("whisper-ct2", models_dir=models_dir) == "base"
    assert M.default_model("diarization", models_dir=models_dir) == "pyannote-seg3-campplus"
    # alignment falls back to Whisper's own, in any language (no CTC model needed)
    assert M.default_model("align", "nl", models_dir) == M.default_model("align", "sw", models_dir) == "whisper"
    with pytest.raises(M.ModelNotFoundError, match="Whisper model of wx-asr"):
        M.align_model_path(None, "nl", models_dir)  # a CTC loader cannot load the Whisper aligner


@pytest.mark.slow
@pytest.mark.parametrize("kind, option, standin", [("demucs", "--demucs-model", "random-tiny-htdemucs")])
def test_a_random_stand_in_is_never_a_default(models_dir, kind, option, standin):
    """When the real default is missing and the models folder has only a random-weight
    stand-in, the default is refused with the option that names it; named, it loads."""
    with pytest.raises(M.StandInRefused) as exc:
        M.default_model(kind, models_dir=models_dir)
    assert option in str(exc.value) and standin in str(exc.value) and "\n" not in str(exc.value)
    assert M.locate(kind, standin, models_dir).stand_in


def test_fingerprint_follows_content_not_place(tmp_path):
    """Cheap fingerprint: names, sizes, and sampled bytes (the first and last MiB among them)."""
    from corpus_tools.models.fingerprint import fingerprint

    data = bytearray(np.random.default_rng(0).integers(0, 256, 5 << 20, dtype=np.uint8).tobytes())
    a = tmp_path / "a"
    a.mkdir()
    (a / "model.bin").write_bytes(data)
    (a / "config.json").write_text('{"layers": 2}')
    reference = fingerprint(a)
    assert reference.startswith("sha256:")
    assert fingerprint(shutil.copytree(a, tmp_path / "elsewhere")) == reference  # moved: same
    assert fingerprint(a / "model.bin") == fingerprint(tmp_path / "elsewhere" / "model.bin")
    for offset in (10, len(data) - 10):  # same size, other bytes at the start or the end
        changed = shutil.copytree(a, tmp_path / f"changed-{offset}")
        edited = bytearray(data)
        edited[offset] ^= 0xFF
        (changed / "model.bin").write_bytes(edited)
        assert fingerprint(changed) != reference
    renamed = shutil.copytree(a, tmp_path / "renamed")
    (renamed / "config.json").rename(renamed / "config2.json")
    assert fingerprint(renamed) != reference
    # rewritten in place after it was fingerprinted: the in-process memo must not hide it
    data[0] ^= 0xFF
    (a / "model.bin").write_bytes(data)
    assert fingerprint(a) != reference


@pytest.mark.slow
def test_model_identity_is_its_content(models_dir, tmp_path):
    """What a stage cache is keyed on: the files' fingerprint, whether they are found by name,
    by path or in a moved folder; the name, source, target and stand-in flag are recorded."""
    r = M.locate("align", "random-wav2vec2-ctc-nl", models_dir)
    ident = M.identify(r)
    assert ident["stand_in"] and ident["source"] == "models-dir" and ident["name"] == "random-wav2vec2-ctc-nl"
    assert ident["target"] == str(r.target) and ident["fingerprint"].startswith("sha256:")
    by_path = M.identify(M.locate("align", str(shutil.copytree(r.target, tmp_path / "copy"))))
    assert by_path["source"] == "path" and M.identity_key(by_path) == M.identity_key(ident)
    from corpus_tools.models.random_standins import build_random_wav2vec2_ctc

    other = M.identify(M.locate("align", str(build_random_wav2vec2_ctc(tmp_path / "other", seed=1))))
    assert M.identity_key(other) != M.identity_key(ident)
    # a model the library would download is known by what it publishes, not by a path
    online = M.identify(M.Resolved("align", "WAV2VEC2_ASR_BASE_960H", "WAV2VEC2_ASR_BASE_960H", "download"))
    assert online["fingerprint"] is None and M.identity_key(online) == {"published": "torchaudio:WAV2VEC2_ASR_BASE_960H"}


# ------------------------------------------------------------------------------------------
# real loading code paths


@pytest.mark.slow
def test_ct2_to_openai_checkpoint_transcribes(models_dir, hello_wav):
    import whisper

    model = whisper.load_model(str(models_dir / "whisper-openai" / "base.pt"), device="cpu")
    assert model.dims.n_text_layer == 6 and model.dims.n_vocab == 51865
    text = model.transcribe(str(hello_wav), language="en", fp16=False, beam_size=1, temperature=0.0)["text"]
    words = text.lower()
    assert "hello" in words and "world" in words and "test" in words, text


@pytest.mark.slow
def test_openai_loader_restores_alignment_heads_and_caches(models_dir):
    model = M.load_openai_whisper("base", "cpu", models_dir)
    assert M.load_openai_whisper("base", "cpu", models_dir) is model            # cached per process
    heads = model.alignment_heads.to_dense()
    assert int(heads.sum()) == 8 and bool(heads[5, 1])                           # from config.json


@pytest.mark.slow
def test_faster_whisper_loads_ct2_base(models_dir, hello_wav):
    model = M.load_faster_whisper("base", "cpu", "int8", models_dir, cpu_threads=2)
    segments, info = model.transcribe(str(hello_wav), language="en", beam_size=1)
    text = " ".join(s.text for s in segments).lower()
    assert "hello" in text and "world" in text, text


@pytest.mark.slow
def test_silero_vad_finds_speech_in_sample(models_dir):
    from silero_vad import get_speech_timestamps

    model = M.load_silero_vad(models_dir)
    assert M.load_silero_vad(models_dir) is model
    x, sr = sf.read(SAMPLE_WAV, dtype="float32")
    regions = get_speech_timestamps(torch.from_numpy(x), model, sampling_rate=sr, return_seconds=True)
    assert regions and 6.0 < regions[0]["start"] < 8.0          # reference: speech starts at 6.69 s


@pytest.mark.slow
def test_demucs_standin_separates_one_second(models_dir):
    from demucs.apply import apply_model

    model = M.load_demucs("random-tiny-htdemucs", models_dir, "cpu")
    assert list(model.sources) == ["drums", "bass", "other", "vocals"] and model.samplerate == 44100
    mix = torch.randn(1, 2, 44100, generator=torch.Generator().manual_seed(0)) * 0.1
    stems = apply_model(model, mix, device="cpu", progress=False)
    assert stems.shape == (1, 4, 2, 44100) and torch.isfinite(stems).all()


@pytest.mark.slow
def test_align_standin_runs_whisperx_align(models_dir):
    import whisperx

    model, meta = M.load_align_model("random-wav2vec2-ctc-nl", "nl", "cpu", models_dir)
    assert meta["type"] == "huggingface" and "a" in meta["dictionary"]
    x, _ = sf.read(SAMPLE_WAV, dtype="float32")
    out = whisperx.align([{"start": 7.6, "end": 12.0, "text": "Hallo, dit is een test. Nog een zin."}],
                         model, meta, x, "cpu")
    assert [s["text"] for s in out["segments"]] == ["Hallo, dit is een test.", "Nog een zin."]  # punkt stub
    assert all(7.6 <= w["start"] <= w["end"] <= 12.0 for s in out["segments"] for w in s["words"])


@pytest.mark.slow
def test_diarization_pipeline_on_sample(models_dir):
    diarizer = M.load_diarization_pipeline("pyannote-seg3-campplus", "cpu", models_dir)
    x, sr = sf.read(SAMPLE_WAV, dtype="float32")
    annotation = diarizer({"waveform": torch.from_numpy(x)[None], "sample_rate": sr})
    turns = diarizer.turns(annotation)
    assert len(turns) >= 1 and 1 <= len(annotation.labels()) <= 4
    assert turns["start"].min() > 5.0 and turns["end"].max() <= 30.01     # no speech before 6.7 s
    # The same folder is an ordinary pyannote pipeline folder, so whisperx loads it too.
    from whisperx.diarize import DiarizationPipeline

    wx = DiarizationPipeline(model_name=str(M.resolve("diarization", "pyannote-seg3-campplus", models_dir)))
    assert type(wx.model).__name__ == "LocalSpeakerDiarization"


@pytest.mark.slow
def test_embedding_model_separates_speakers(models_dir):
    model = M.load_embedding_model("campplus", "cpu", models_dir)
    x, sr = sf.read(SAMPLE_WAV, dtype="float32")

    def emb(a, b):
        with torch.inference_mode():
            return torch.nn.functional.normalize(model(torch.from_numpy(x[int(a * sr):int(b * sr)])[None, None]), dim=1)[0]

    # sample.rttm: speaker90 talks at 10.6-14.6 and 18.6-21.4 s, speaker91 at 14.5-17.9 and 22-27 s
    same = float(emb(10.6, 14.4) @ emb(18.6, 21.4))
    other = float(emb(10.6, 14.4) @ emb(14.8, 17.8))
    assert same > other + 0.2, (same, other)


# ------------------------------------------------------------------------------------------
# CLI


@pytest.mark.slow
def test_cli_list_and_prepare(models_dir):
    from typer.testing import CliRunner

    from corpus_tools.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["models", "list", "--models-dir", str(models_dir)])
    assert res.exit_code == 0, res.output
    for stage in M.KINDS:
        assert stage in res.output
    assert "random-tiny-htdemucs" in res.output and "RANDOM STAND-IN" in res.output
    rows = {r["stage"]: r for r in M.list_models(models_dir)}
    assert rows["align"]["model"] == "whisper" and rows["align"]["source"] == "whisper"
    assert rows["demucs"]["source"] == "missing" and "random-tiny-htdemucs" in rows["demucs"]["location"]
    assert not any(r["stand_in"] for r in rows.values())  # a stand-in is listed, never a default
    res = runner.invoke(app, ["models", "prepare-offline", "--models-dir", str(models_dir)])
    assert res.exit_code == 0 and "0 built" in res.output, res.output
    res = runner.invoke(app, ["models", "--help"])
    assert res.exit_code == 0 and "prepare-offline" in res.output


def test_cli_prepare_offline_into_an_unusable_folder_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from corpus_tools.cli import app

    (tmp_path / "a-file").write_text("")
    res = CliRunner().invoke(app, ["models", "prepare-offline", "--models-dir", str(tmp_path / "a-file" / "models")])
    assert res.exit_code == 2, res.output
    assert "error: " in res.output and "Not a directory" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_cli_list_without_models_folder_reports_missing(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from corpus_tools.cli import app

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["models", "list"])
    assert res.exit_code == 0 and "missing" in res.output, res.output
