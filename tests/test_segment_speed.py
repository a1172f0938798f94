"""What makes segmentation fast without changing what it keeps: decoding ahead, VAD scores
and Whisper encoder outputs computed once per recording, no embedding of silent speakers."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from corpus_tools.segment.prefetch import decode_ahead


# -- decode ahead --------------------------------------------------------------------------


def _recs(n: int) -> list[dict]:
    return [{"recording_id": f"r{i}", "path": f"r{i}.wav"} for i in range(n)]


def test_decode_ahead_decodes_the_next_recording_while_this_one_is_used():
    started: list[str] = []
    lock = threading.Lock()

    def decode(path):
        with lock:
            started.append(path)
        return np.full(10, int(path[1]), np.float32)

    seen = []
    for rec, audio in decode_ahead(_recs(4), lambda r: True, decode=decode):
        deadline = time.time() + 5
        nxt = f"r{int(rec['recording_id'][1]) + 1}.wav"
        while nxt not in started and rec["recording_id"] != "r3" and time.time() < deadline:
            time.sleep(0.01)  # the next decode runs in the background, before it is asked for
        assert rec["recording_id"] == "r3" or nxt in started
        seen.append((rec["recording_id"], float(audio()[0])))
    assert seen == [("r0", 0.0), ("r1", 1.0), ("r2", 2.0), ("r3", 3.0)]
    assert started == ["r0.wav", "r1.wav", "r2.wav", "r3.wav"]


def test_decode_ahead_holds_at_most_depth_plus_one_recordings():
    live = {"now": 0, "max": 0}
    lock = threading.Lock()

    class Tracked(np.ndarray):
        def __del__(self):
            with lock:
                live["now"] -= 1

    def decode(path):
        with lock:
            live["now"] += 1
            live["max"] = max(live["max"], live["now"])
        return np.zeros(10, np.float32).view(Tracked)

    for _rec, audio in decode_ahead(_recs(6), lambda r: True, decode=decode):
        x = audio()
        time.sleep(0.05)  # let the background decode finish while this one is held
        del x
    assert live["max"] <= 2


def test_decode_ahead_skips_cached_recordings_and_reports_failures_on_use():
    calls = []

    def decode(path):
        calls.append(path)
        if path == "r2.wav":
            raise RuntimeError("corrupt file")
        return np.ones(3, np.float32)

    out = []
    for rec, audio in decode_ahead(_recs(4), lambda r: r["recording_id"] != "r1", decode=decode):
        try:
            out.append((rec["recording_id"], len(audio())))
        except RuntimeError as exc:
            out.append((rec["recording_id"], str(exc)))
    assert out == [("r0", 3), ("r1", 3), ("r2", "corrupt file"), ("r3", 3)]
    assert calls.count("r1.wav") == 1  # only when asked: it was not decoded ahead


# -- diarization: no embedding for a speaker absent from the chunk --------------------------


def test_campplus_gives_nan_for_a_silent_speaker_without_running_the_network(monkeypatch):
    from corpus_tools.models.campplus import CAMPPlusEmbedding

    torch.manual_seed(0)
    model = CAMPPlusEmbedding().eval()
    calls = []
    inner = model.campplus.forward
    monkeypatch.setattr(model.campplus, "forward", lambda x: calls.append(x.shape) or inner(x))
    wave = torch.randn(3, 1, 16000 * 2) * 0.1
    weights = torch.zeros(3, 200)
    weights[0, :120] = 1.0
    weights[2, 50:] = 1.0
    with torch.inference_mode():
        emb = model(wave, weights=weights)
        alone = [model(wave[i:i + 1], weights=weights[i:i + 1])[0] for i in (0, 2)]
    assert torch.isnan(emb[1]).all()
    assert len(calls) == 2 + 2  # rows 0 and 2 in the batch, then each alone
    for row, ref in zip((0, 2), alone):
        torch.testing.assert_close(emb[row], ref)


def test_campplus_embeds_the_middle_3_s_of_one_speaker_in_a_chunk(monkeypatch):
    """In diarization (frame weights given) CAM++ embeds at most its 3 s training crop, the
    middle of the speaker's frames; without weights it embeds the whole waveform."""
    from corpus_tools.models.campplus import CAMPPlusEmbedding
    from corpus_tools.segment.backends import SPEAKER_CROP_S

    torch.manual_seed(0)
    model = CAMPPlusEmbedding().eval()
    calls = []
    inner = model.campplus.forward
    monkeypatch.setattr(model.campplus, "forward", lambda x: calls.append(x) or inner(x))
    wave = torch.randn(2, 1, 16000 * 10) * 0.1
    weights = torch.zeros(2, 589)                 # pyannote's frames for a 10 s chunk
    weights[0, :] = 1.0                           # speaking the whole chunk: cropped
    weights[1, :100] = 1.0                        # 1.7 s (170 fbank frames): embedded whole
    with torch.inference_mode():
        emb = model(wave, weights=weights)
        whole = model(wave[:1])
        feats = model.compute_fbank(wave[0, 0])
        middle = inner(feats[None, 349:649])[0]   # 998 frames: the middle 300
    assert [c.shape[1] for c in calls] == [300, 170, 998]
    assert CAMPPlusEmbedding.CROP_FRAMES == round(SPEAKER_CROP_S * 100)
    torch.testing.assert_close(emb[0], middle)
    assert not torch.allclose(emb[0], whole[0])


def test_campplus_embeds_equal_lengths_in_one_batch_with_the_same_result(monkeypatch):
    from corpus_tools.models.campplus import CAMPPlusEmbedding

    torch.manual_seed(0)
    model = CAMPPlusEmbedding().eval()
    calls = []
    inner = model.campplus.forward
    monkeypatch.setattr(model.campplus, "forward", lambda x: calls.append(x.shape[0]) or inner(x))
    wave = torch.randn(5, 1, 16000 * 10) * 0.1
    weights = torch.zeros(5, 589)
    weights[[0, 2, 4], 100:500] = 1.0             # 6.8 s each: cropped to 3 s
    weights[1, :100] = 1.0                        # 1.7 s
    with torch.inference_mode():
        batched = model(wave, weights=weights)
        assert sorted(calls) == [1, 3]            # the three 3 s crops in one call
        alone = torch.stack([model(wave[i:i + 1], weights=weights[i:i + 1])[0] for i in range(5)])
    assert torch.isnan(batched[3]).all() and torch.isnan(alone[3]).all()
    rows = [0, 1, 2, 4]
    torch.testing.assert_close(batched[rows], alone[rows], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_diarization_is_unchanged_by_skipping_silent_speakers(models_dir, monkeypatch):
    """The pipeline's turns equal those computed with the old behaviour (an absent speaker's
    embedding taken over the whole chunk, as for any speaker with too few frames)."""
    from corpus_tools.audio import load_audio
    from corpus_tools.models.campplus import CAMPPlusEmbedding
    from corpus_tools.samples import pyannote_sample_dir
    from corpus_tools.segment import diarize
    from corpus_tools.segment.backends import ModelSet, SegmentConfig

    audio = load_audio(pyannote_sample_dir() / "sample.wav")
    models = ModelSet(SegmentConfig(whisper_model="base", models_dir=str(models_dir), device="cpu"))
    pipeline = models.diarizer()
    new = diarize.diarize_turns(pipeline, audio)

    skipping = CAMPPlusEmbedding.forward
    silent_rows = []

    def whole_chunk_for_silent(self, waveforms, weights=None):
        out = skipping(self, waveforms, weights)
        if weights is not None:
            for i in np.flatnonzero(~weights.any(dim=1).numpy()):
                silent_rows.append(i)
                out[i] = skipping(self, waveforms[i:i + 1])[0]
        return out

    monkeypatch.setattr(CAMPPlusEmbedding, "forward", whole_chunk_for_silent)
    old = diarize.diarize_turns(pipeline, audio)
    assert silent_rows, "the sample has (chunk, speaker) pairs with no speech: the case under test"
    assert new == old


# -- one recording: VAD scored once, chunks encoded once ------------------------------------


@pytest.mark.slow
def test_vad_scores_and_encoder_outputs_are_computed_once_per_recording(models_dir, monkeypatch):
    from corpus_tools.audio import load_audio
    from corpus_tools.samples import pyannote_sample_dir
    from corpus_tools.segment import backends as be

    audio = load_audio(pyannote_sample_dir() / "sample.wav")
    models = be.ModelSet(be.SegmentConfig(whisper_model="base", models_dir=str(models_dir), device="cpu",
                                          align_model="whisper", beam_size=1, batch_size=4))
    plain = {"vad": be.run_vad(models, audio)}  # no recording block: every stage on its own
    plain["wx-asr"] = be.run_wx_asr(models, audio)
    plain["wx-align"] = be.run_wx_align(models, audio, plain["wx-asr"])

    vad_calls, encode_calls = [], []
    vad = models.vad_pipeline()
    models._cache["vad"] = lambda file: vad_calls.append(1) or vad(file)
    fw = models.faster_whisper()
    encode = fw.encode
    monkeypatch.setattr(fw, "encode", lambda feats: encode_calls.append(feats.shape[0]) or encode(feats))

    shared = {}
    with models.recording(audio):
        shared["vad"] = be.run_vad(models, audio)
        shared["wx-asr"] = be.run_wx_asr(models, audio)
        asr_encodes = sum(encode_calls)
        shared["wx-align"] = be.run_wx_align(models, audio, shared["wx-asr"])
    assert len(vad_calls) == 1, "the vad stage and WhisperX's chunking score the audio once"
    assert asr_encodes == len(shared["wx-asr"]["segments"]) > 0
    assert sum(encode_calls) == asr_encodes, "the aligner reads the ASR's encoder outputs"
    assert shared["vad"] == plain["vad"] and shared["wx-asr"] == plain["wx-asr"]

    # the aligner now reads the encodings of the exact samples the ASR read (unrounded chunk
    # edges): the same words, their times within a few Whisper frames
    words = lambda out: [w for s in out["segments"] for w in s["words"]]  # noqa: E731
    a, b = words(plain["wx-align"]), words(shared["wx-align"])
    assert [w["word"] for w in a] == [w["word"] for w in b]
    diffs = np.array([abs(x[k] - y[k]) for x, y in zip(a, b) for k in ("start", "end")
                      if x[k] is not None and y[k] is not None])
    assert np.median(diffs) <= 0.02 and np.mean(diffs <= 0.06) >= 0.9

    # outside a recording block nothing is shared: a stage run on its own computes it all
    encode_calls.clear()
    be.run_wx_align(models, audio, shared["wx-asr"])
    assert sum(encode_calls) == len([s for s in shared["wx-asr"]["segments"] if s["text"].strip()])
