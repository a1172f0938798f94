"""The model-running parts of segmentation, behind small interfaces.

Each backend turns mono audio at ``SAMPLE_RATE`` (numpy) into JSON-able stage output. They are loaded
once per process (``ModelSet`` caches them) and reused for every recording. Tests and other
backends can substitute any object with the same method.

Stage outputs (cached per recording by the runner):

``vad``       {"regions": [[start, end], ...]}                  pyannote speech activity
``whisper``   {"segments": [{"start","end","text","words"}]}   sequential Whisper (w-*)
``wx-asr``    {"segments": [...], "language"}                  WhisperX VAD chunks + batched ASR
``wx-align``  {"segments": [{"start","end","text","words"}]}   word alignment of the wx-asr chunks
``wx-diar``   {"segments": [... + "speaker"], "turns": [...]}  WhisperX speaker assignment

Words are ``{"word", "start", "end", "score"}`` (``score``: the aligner's confidence, or
Whisper's word probability). The wx-align stage keeps each word inside its chunk and in order
(``postprocess.tidy_words``); which words lie in speech is decided when methods are assembled
(``postprocess.keep_words_in_speech``), from the ``vad`` stage.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from corpus_tools.audio import SAMPLE_RATE
from corpus_tools.logs import library_prints
from corpus_tools.models import (default_model, identify, is_whisper_aligner, load_align_model,
                                 load_diarization_pipeline, load_openai_whisper, locate, prepare_runtime)
from corpus_tools.segment import diarize
from corpus_tools.segment import postprocess as pp
from corpus_tools.segment import whisper_align as wa
from corpus_tools.segment.reuse import EncoderOutputs, RecordingWork


@dataclass
class SegmentConfig:
    """Everything that decides what the models output. A stage's cache key holds these
    settings with the model options replaced by the models they resolve to (``stage_key``)."""

    whisper_model: str = "large-v2"
    asr_backend: str = "faster-whisper"  # or openai-whisper
    language: str = "nl"
    align_model: str | None = None  # None: the language's default (models.yaml), else "whisper"
    diarize_model: str | None = None
    vad_model: str | None = None
    device: str = "auto"
    compute_type: str = "default"
    batch_size: int = 16
    beam_size: int = 5
    # w-*: segment start/end from Whisper's word alignment (cross-attention DTW) instead of
    # its timestamp tokens, which often open a segment at the start of a window of music.
    word_timestamps: bool = True
    models_dir: str | None = None

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_compute_type(self) -> str:
        if self.compute_type != "default":
            return self.compute_type
        return "float16" if self.resolved_device() == "cuda" else "int8"

    def whisper_kind(self) -> str:
        """The model kind of the w-* stage's Whisper (wx-* always use CTranslate2)."""
        kinds = {"faster-whisper": "whisper-ct2", "openai-whisper": "whisper-openai"}
        if self.asr_backend not in kinds:
            raise ValueError(f"unknown --asr-backend {self.asr_backend!r}: use faster-whisper or openai-whisper")
        return kinds[self.asr_backend]

    def requested_model(self, kind: str) -> str | None:
        """The option given for a model kind (None: the default for the language)."""
        return {"whisper-ct2": self.whisper_model, "whisper-openai": self.whisper_model,
                "vad": self.vad_model, "align": self.align_model, "diarization": self.diarize_model}[kind]

    def model_kinds(self, stage: str) -> tuple[str, ...]:
        """The models a stage's output depends on: those of the stage it builds on, then its own."""
        own = {"vad": ("vad",), "whisper": (self.whisper_kind(),), "wx-asr": ("whisper-ct2", "vad"),
               "wx-align": ("align",), "wx-diar": ("diarization",)}
        if stage not in own:
            raise KeyError(stage)
        base = BUILDS_ON.get(stage)
        return (*(self.model_kinds(base) if base else ()), *own[stage])

    def stage_key(self, stage: str, models: dict[str, dict]) -> dict[str, Any]:
        """The settings and models a stage's output depends on (its cache is invalid if they
        change). ``models`` maps model kinds to ``corpus_tools.models.identify`` records;
        the key holds those of :meth:`model_kinds`, so it contains the key of the stage it
        builds on."""
        if stage == "error":  # decode failures do not depend on model settings
            return {}
        base = {"language": self.language}
        if stage == "vad":
            settings: dict[str, Any] = {}
        elif stage == "whisper":
            settings = {**base, "backend": self.asr_backend, "beam_size": self.beam_size,
                        # only when on: caches made before the option existed are word_timestamps=False;
                        # "words": caches made before the stage stored its words have none to check
                        **({"word_timestamps": True, "words": True} if self.word_timestamps else {})}
        elif stage == "wx-asr":
            settings = {**base, "beam_size": self.beam_size}
        elif stage in BUILDS_ON:
            settings = {k: v for k, v in self.stage_key(BUILDS_ON[stage], models).items() if k != "models"}
            if stage == "wx-align":  # also tells a Whisper aligner from a CTC model in the same files
                settings["aligner"] = aligner_of(models["align"])
            if stage == "wx-diar":  # turns made before CAM++ embedded 3 s crops are recomputed
                settings["speaker_crop_s"] = SPEAKER_CROP_S
        else:
            raise KeyError(stage)
        return {**settings, "models": {kind: models[kind] for kind in self.model_kinds(stage)}}


#: Seconds of one speaker in one chunk that the diarization's CAM++ embeds
#: (``CAMPPlusEmbedding.CROP_FRAMES`` / 100; kept here so a stage key needs no torch import)
SPEAKER_CROP_S = 3.0

#: the stage whose output a stage starts from (its cache key contains that stage's key)
BUILDS_ON = {"wx-align": "wx-asr", "wx-diar": "wx-align"}


def aligner_of(identity: dict) -> str:
    """``whisper`` when an align identity is a Whisper model's (see :func:`resolve_model`), else ``ctc``."""
    return "whisper" if identity.get("kind") == "whisper-ct2" else "ctc"


def resolve_model(cfg: SegmentConfig, kind: str):
    """What the loaders load for a model kind: the option, else the language's default, found
    by ``corpus_tools.models`` (a ``Resolved``; nothing is loaded). The Whisper aligner
    (``--align-model whisper``, also the default where the language has no CTC aligner here)
    resolves to the CTranslate2 Whisper of wx-asr: its identity is that model's, so another
    ``--whisper-model`` recomputes the alignment."""
    name = cfg.requested_model(kind) or default_model(kind, cfg.language, cfg.models_dir)
    if kind == "align" and is_whisper_aligner(name):
        return resolve_model(cfg, "whisper-ct2")
    return locate(kind, name, cfg.models_dir)


def resolve_stage_keys(cfg: SegmentConfig, stages, resolve=None) -> dict[str, dict]:
    """The cache key of each stage and of the stages it builds on: its settings plus the
    identity of every model it depends on, resolved as the loaders resolve them (``resolve``:
    kind -> ``Resolved``, default :func:`resolve_model`; ``ModelSet.resolved`` makes them the
    very models that process loads)."""
    resolve = resolve or (lambda kind: resolve_model(cfg, kind))
    identities: dict[str, dict] = {}
    keys: dict[str, dict] = {}
    for stage in stages:
        chain = [stage]
        while chain[-1] in BUILDS_ON:
            chain.append(BUILDS_ON[chain[-1]])
        for s in reversed(chain):
            for kind in cfg.model_kinds(s):
                if kind not in identities:
                    identities[kind] = identify(resolve(kind))
            keys[s] = cfg.stage_key(s, identities)
    return keys


_SAMPLING_AWARE_WHISPER = None


def _sampling_aware_whisper_class():
    """WhisperX's WhisperModel that notes when a window fell back to sampling (also windows
    whose sampled text is then dropped as silence or empty, which no returned segment shows):
    ``generate_with_fallback`` returns the last temperature it tried. It also hands each
    encoder output to ``keep_encoder_output`` when set (``reuse.EncoderOutputs``)."""
    global _SAMPLING_AWARE_WHISPER
    if _SAMPLING_AWARE_WHISPER is None:
        from whisperx.asr import WhisperModel

        class SamplingAwareWhisperModel(WhisperModel):
            sampled = False
            keep_encoder_output = None  # a callable while wx-asr keeps them for the aligner

            def encode(self, features):
                out = super().encode(features)
                if self.keep_encoder_output is not None:
                    self.keep_encoder_output(out)
                return out

            def generate_with_fallback(self, *args, **kwargs):
                result = super().generate_with_fallback(*args, **kwargs)
                if result[2] > 0:
                    self.sampled = True
                return result

        _SAMPLING_AWARE_WHISPER = SamplingAwareWhisperModel
    return _SAMPLING_AWARE_WHISPER


_SHARED_SCORES_VAD = None


def _shared_scores_vad_class():
    """WhisperX's pyannote VAD, answering with ``ModelSet.vad_scores`` (one model, and one
    scoring per recording, for the ``vad`` stage and WhisperX's chunking)."""
    global _SHARED_SCORES_VAD
    if _SHARED_SCORES_VAD is None:
        from whisperx.vads.pyannote import Pyannote
        from whisperx.vads.vad import Vad

        class SharedScoresVad(Pyannote):
            def __init__(self, models: "ModelSet", vad_onset: float):
                Vad.__init__(self, vad_onset)  # Pyannote.__init__ would load a second model
                self.models = models

            def __call__(self, audio: dict, **kwargs):
                return self.models.vad_scores(audio["waveform"])

        _SHARED_SCORES_VAD = SharedScoresVad
    return _SHARED_SCORES_VAD


class ModelSet:
    """Loads each model on first use and keeps it for the life of the process."""

    def __init__(self, cfg: SegmentConfig):
        self.cfg = cfg
        self._cache: dict[str, Any] = {}
        self._resolved: dict[str, Any] = {}
        self._fw_threads: int | None = None
        self.work: RecordingWork | None = None  # see recording()
        prepare_runtime(cfg.models_dir)  # NLTK data, pyannote telemetry off

    @contextmanager
    def recording(self, audio: np.ndarray):
        """Run a recording's stages inside this block: what one stage computes on ``audio``
        that another needs (VAD scores, Whisper encoder outputs) is computed once
        (``corpus_tools.segment.reuse``)."""
        self.work = RecordingWork(audio)
        try:
            yield self.work
        finally:
            self.work = None

    def _get(self, key: str, loader):
        if key not in self._cache:
            self._cache[key] = loader()
        return self._cache[key]

    def resolved(self, kind: str):
        """What this process loads for a model kind, resolved once: the stage keys and the
        loaders both use it, so a cache key always names the model that was loaded."""
        if kind not in self._resolved:
            self._resolved[kind] = resolve_model(self.cfg, kind)
        return self._resolved[kind]

    def stage_keys(self, stages) -> dict[str, dict]:
        return resolve_stage_keys(self.cfg, stages, self.resolved)

    def _target(self, kind: str) -> str:
        return str(self.resolved(kind).target)

    # -- models --------------------------------------------------------------------
    def whisper_ct2_path(self) -> str:
        return self._target("whisper-ct2")

    def faster_whisper(self):
        """One CTranslate2 Whisper for both passes: WhisperX's subclass of faster-whisper's
        model adds batched generation and keeps sequential ``transcribe`` for w-*."""
        return self._get("fw", self._load_faster_whisper)

    def _load_faster_whisper(self):
        import torch

        c = self.cfg
        if self._fw_threads is None:  # a renewal must not pick up a thread count changed since
            self._fw_threads = max(1, torch.get_num_threads())
        return _sampling_aware_whisper_class()(
            self.whisper_ct2_path(), device=c.resolved_device(), compute_type=c.resolved_compute_type(),
            cpu_threads=self._fw_threads)

    def renew_whisper_sampler_if_used(self) -> None:
        """Give the CTranslate2 Whisper fresh worker threads if it sampled, so its sampler
        starts again from the seed. CTranslate2 keeps one random generator per thread, seeded
        on first use and never reset by ``set_random_seed``; after a recording whose windows
        fell back to sampling, the next recording would otherwise depend on this one.
        Reloading costs a model load, paid only after such recordings."""
        fw = self._cache.get("fw")
        if fw is None or not fw.sampled:
            return
        seed_decoding()
        fw.model = None  # free the old weights (and its threads) before loading new ones
        fw.model = self._load_faster_whisper().model
        fw.sampled = False

    def openai_whisper(self):
        c = self.cfg
        return self._get("ow", lambda: load_openai_whisper(
            self._target("whisper-openai"), c.resolved_device(), c.models_dir))

    def vad_path(self) -> str:
        return self._target("vad")

    def work_for(self, audio) -> RecordingWork | None:
        """The open :meth:`recording` block's shared work if ``audio`` is its recording."""
        return self.work if self.work is not None and self.work.holds(audio) else None

    def vad_pipeline(self):
        """pyannote's VAD pipeline (WhisperX's): waveform -> frame speech scores."""
        def load():
            import torch
            from whisperx.vads.pyannote import load_vad_model

            return load_vad_model(torch.device(self.cfg.resolved_device()), model_fp=self.vad_path())

        return self._get("vad", load)

    def vad_scores(self, waveform):
        """The VAD scores of ``waveform`` (numpy or a torch ``[1, T]`` view), computed once per
        recording inside :meth:`recording`: the ``vad`` stage and WhisperX's chunking read
        the same scores."""
        import torch

        work = self.work_for(waveform)
        if work is not None and work.vad_scores is not None:
            return work.vad_scores
        if not torch.is_tensor(waveform):
            waveform = torch.from_numpy(np.ascontiguousarray(waveform))
        scores = self.vad_pipeline()({"waveform": waveform.reshape(1, -1), "sample_rate": SAMPLE_RATE})
        if work is not None:
            work.vad_scores = scores
        return scores

    def whisperx_pipeline(self):
        def load():
            import whisperx

            c = self.cfg
            opts = {"chunk_size": 30, "vad_onset": 0.500, "vad_offset": 0.363}
            vad = _shared_scores_vad_class()(self, opts["vad_onset"])
            with library_prints("whisperx"):  # "vad_method is ignored": we pass the VAD model
                return whisperx.load_model(
                    "unused-model-given", c.resolved_device(), compute_type=c.resolved_compute_type(),
                    language=c.language, vad_model=vad, vad_options=opts, model=self.faster_whisper(),
                    asr_options={"beam_size": c.beam_size, "best_of": c.beam_size})

        return self._get("wx", load)

    def aligns_with_whisper(self) -> bool:
        return self.resolved("align").kind == "whisper-ct2"

    def align_model(self):
        c = self.cfg
        return self._get("align", lambda: load_align_model(
            self._target("align"), c.language, c.resolved_device(), c.models_dir))

    def diarizer(self):
        c = self.cfg
        return self._get("diar", lambda: load_diarization_pipeline(
            self._target("diarization"), c.resolved_device(), models_dir=c.models_dir))


# -- stages -----------------------------------------------------------------------------


def run_vad(models: ModelSet, audio: np.ndarray) -> dict:
    """Speech regions from pyannote VAD (the `sad` baseline), binarised without a length cap."""
    from whisperx.vads.pyannote import Binarize

    scores = models.vad_scores(audio)
    ann = Binarize(onset=0.5, offset=0.363, min_duration_on=0.1, min_duration_off=0.1)(scores)
    return {"regions": [[round(s.start, 3), round(s.end, 3)] for s in ann.get_timeline()]}


DECODING_SEED = 0


def seed_decoding() -> None:
    """Reset the samplers Whisper's temperature fallback draws from.

    When a window fails the compression-ratio / log-prob checks, Whisper re-decodes it by
    sampling at a higher temperature. Without a reset the result depends on what the process
    decoded before, so a resumed or parallel run would differ from a plain one. Seeding per
    recording makes each recording's transcript a function of its audio alone.
    """
    import torch

    torch.manual_seed(DECODING_SEED)
    try:
        import ctranslate2

        ctranslate2.set_random_seed(DECODING_SEED)
    except (ImportError, AttributeError):
        pass


def run_whisper(models: ModelSet, audio: np.ndarray) -> dict:
    """Sequential long-form Whisper with timestamps: the `w-raw` segments, with their words
    when ``word_timestamps`` is on."""
    c = models.cfg
    segs = []
    seed_decoding()
    if c.asr_backend == "faster-whisper":
        model = models.faster_whisper()
        it, _info = model.transcribe(audio, language=c.language, beam_size=c.beam_size, vad_filter=False,
                                     word_timestamps=c.word_timestamps)
        for s in it:
            words = [{"word": w.word.strip(), "start": _f(w.start), "end": _f(w.end), "score": _f(w.probability)}
                     for w in (s.words or [])]
            segs.append(_whisper_segment(s.start, s.end, s.text, words, c.word_timestamps))
        models.renew_whisper_sampler_if_used()
    elif c.asr_backend == "openai-whisper":
        model = models.openai_whisper()
        res = model.transcribe(audio, language=c.language, beam_size=c.beam_size if c.beam_size > 1 else None,
                               fp16=c.resolved_device() == "cuda", verbose=None,
                               word_timestamps=c.word_timestamps)
        for s in res["segments"]:
            words = [{"word": w["word"].strip(), "start": _f(w["start"]), "end": _f(w["end"]),
                      "score": _f(w.get("probability"))} for w in s.get("words", [])]
            segs.append(_whisper_segment(s["start"], s["end"], s["text"], words, c.word_timestamps))
    else:
        raise ValueError(f"unknown --asr-backend {c.asr_backend!r}: use faster-whisper or openai-whisper")
    return {"segments": segs}


def _whisper_segment(start, end, text: str, words: list[dict], with_words: bool) -> dict:
    seg = {"start": round(float(start), 3), "end": round(float(end), 3), "text": text.strip()}
    if with_words:
        seg["words"] = [{**w, "start": _round(w["start"]), "end": _round(w["end"])} for w in words if w["word"]]
    return seg


def run_wx_asr(models: ModelSet, audio: np.ndarray) -> dict:
    """WhisperX stage 1: VAD cut & merge toward 30 s, chunks transcribed in batches."""
    c = models.cfg
    pipeline = models.whisperx_pipeline()
    work = models.work_for(audio)
    # the Whisper aligner of wx-align reads the same chunks' encoder outputs
    keep = EncoderOutputs() if work is not None and models.aligns_with_whisper() else None
    pipeline.model.keep_encoder_output = keep.add if keep else None
    try:
        res = pipeline.transcribe(audio, batch_size=c.batch_size, language=c.language)
    finally:
        pipeline.model.keep_encoder_output = None
    segs = [{"start": float(s["start"]), "end": float(s["end"]), "text": s["text"].strip()} for s in res["segments"]]
    # rows are the chunks in order (a prefix of them once the budget is spent)
    if keep is not None and (len(keep.rows) == len(segs) or (keep.full and len(keep.rows) < len(segs))):
        work.encodings = {(s["start"], s["end"]): row for s, row in zip(segs, keep.rows)}
    return {"segments": segs, "language": res.get("language", c.language)}


def run_wx_align(models: ModelSet, audio: np.ndarray, asr: dict) -> dict:
    """WhisperX stage 2: time the words of each wx-asr chunk, with the Whisper model that
    transcribed it (``--align-model whisper``) or a wav2vec2 CTC model (WhisperX forced
    alignment); sentences become segments. Word times are kept inside their chunk and in order."""
    chunks = [c for c in asr["segments"] if c["end"] > c["start"]]
    per_chunk = (_align_with_whisper(models, audio, chunks, asr.get("language") or models.cfg.language)
                 if models.aligns_with_whisper() else _align_with_ctc(models, audio, chunks))
    segs = []
    for chunk, sentences in zip(chunks, per_chunk):
        lo, hi = float(chunk["start"]), float(chunk["end"])
        # a chunk the aligner could not time stays, untimed, for the assembly to drop and count
        for s in sentences or ([{"text": chunk["text"], "words": []}] if chunk["text"].strip() else []):
            words = pp.tidy_words(s["words"], lo, hi)
            timed = [w for w in words if w["start"] is not None]
            start, end = (timed[0]["start"], max(w["end"] for w in timed)) if timed else (lo, hi)
            segs.append({"start": start, "end": end, "text": s["text"].strip(), "words": words})
    return {"segments": segs}


def _align_with_whisper(models: ModelSet, audio: np.ndarray, chunks: list[dict], language: str) -> list[list[dict]]:
    c = models.cfg
    work = models.work_for(audio)
    kept = work.encodings if work is not None else {}
    words = wa.align_chunks(models.faster_whisper(), audio, chunks, language, batch_size=c.batch_size,
                            encoded=kept)
    splitter = wa.sentence_splitter(language)
    return [wa.split_sentences(chunk["text"].strip(), w, splitter) for chunk, w in zip(chunks, words)]


def _align_with_ctc(models: ModelSet, audio: np.ndarray, chunks: list[dict]) -> list[list[dict]]:
    """``whisperx.align`` chunk by chunk (it aligns each chunk on its own anyway), so every
    sentence is known to come from its chunk."""
    import whisperx

    model, meta = models.align_model()
    out = []
    for chunk in chunks:
        res = whisperx.align([chunk], model, meta, audio, models.cfg.resolved_device(), return_char_alignments=False)
        out.append([{"text": s.get("text", ""), "words": [
            {"word": w.get("word", ""), "start": _f(w.get("start")), "end": _f(w.get("end")), "score": _f(w.get("score"))}
            for w in s.get("words", [])]} for s in res["segments"]])
    return out


def run_wx_diar(models: ModelSet, audio: np.ndarray, aligned: dict) -> dict:
    """WhisperX stage 3: diarize, then label each aligned segment with its speaker."""
    return diarize.label_speakers(models.diarizer(), audio, aligned)


def _f(x):
    return None if x is None or not np.isfinite(float(x)) else float(x)


def _round(x):
    return None if x is None else round(x, 3)
