"""Random-weight stand-ins for models that no package ships (wav2vec2 CTC aligner, Demucs).

They exist so that the *real* loading and inference code of whisperx and demucs runs offline in
tests and demos. Their outputs are meaningless: the alignment times are arbitrary and the
"separated" stems are noise-shaped copies of the input. Every stand-in is named ``random-...``
and carries a README / marker saying so.

Both are deterministic: the weights come from ``torch.manual_seed(seed)``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from corpus_tools.atomic import write_text
from corpus_tools.audio import SAMPLE_RATE

STANDIN_NOTE = ("RANDOM WEIGHTS - a stand-in built by `corpus models prepare-offline` so that the real "
                "loading code runs offline. Its outputs are meaningless; use a trained model for real work.")

#: Dutch orthography: a-z, the accented letters of Dutch text, the apostrophe ('s, zo'n).
DUTCH_LETTERS = list("abcdefghijklmnopqrstuvwxyz") + list("àáâäçèéêëíîïñóôöúûü") + ["'"]


def build_random_wav2vec2_ctc(dest: str | Path, *, letters: list[str] | None = None, seed: int = 0) -> Path:
    """Save a tiny random ``transformers.Wav2Vec2ForCTC`` + ``Wav2Vec2Processor`` at ``dest``.

    The convolutional feature encoder keeps wav2vec 2.0's strides (320 samples = 20 ms per frame)
    so that frame-to-time conversions in aligners behave as with a real model; everything else is
    tiny (~40 k parameters). Loadable with ``whisperx.load_align_model(language_code="nl",
    device="cpu", model_name=str(dest))``.
    """
    import torch
    from transformers import (Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor,
                              Wav2Vec2ForCTC, Wav2Vec2Processor)

    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    letters = letters or DUTCH_LETTERS
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4}
    for ch in letters:
        vocab.setdefault(ch, len(vocab))
    (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1))
    tokenizer = Wav2Vec2CTCTokenizer(str(tmp / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|", do_lower_case=True)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=False)
    config = Wav2Vec2Config(
        vocab_size=len(vocab), pad_token_id=0, bos_token_id=1, eos_token_id=2,
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="group",
        do_stable_layer_norm=False, ctc_loss_reduction="mean",
        corpus_tools_stand_in=STANDIN_NOTE,       # kept in config.json so the origin is visible
    )
    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(config).eval()
    model.save_pretrained(tmp)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(tmp)
    (tmp / "README.md").write_text(f"# {dest.name}\n\n{STANDIN_NOTE}\n\nTiny Wav2Vec2ForCTC, letters: "
                                   f"{''.join(letters)}\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


#: Small enough to run 1 s of audio in well under a second on CPU (depth 4 keeps the
#: transformer sequence short; depth 2 makes it huge).
TINY_HTDEMUCS_KWARGS = dict(channels=16, depth=4, t_layers=1, t_heads=2, nfft=4096, segment=4)
DEMUCS_SOURCES = ["drums", "bass", "other", "vocals"]


def build_random_htdemucs(repo: str | Path, name: str = "random-tiny-htdemucs", *, seed: int = 0) -> Path:
    """Write a tiny random ``demucs.htdemucs.HTDemucs`` into a Demucs *local repo* folder.

    Layout, as ``demucs.repo`` expects: ``{sig}-{sha256[:8]}.th`` (a ``demucs.states`` model
    package, written with ``save_with_checksum``) plus ``{name}.yaml`` (a bag of one model, like
    the published ``htdemucs.yaml``). Load with
    ``demucs.pretrained.get_model(name, repo=Path(repo))``. Returns the yaml path.
    """
    import torch
    from demucs.htdemucs import HTDemucs
    from demucs.states import save_with_checksum, serialize_model
    from omegaconf import OmegaConf

    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    sig = name.replace("-", "_")           # '-' separates the checksum in demucs file names
    torch.manual_seed(seed)
    model = HTDemucs(sources=DEMUCS_SOURCES, audio_channels=2, samplerate=44100, **TINY_HTDEMUCS_KWARGS).eval()
    package = serialize_model(model, OmegaConf.create({"note": STANDIN_NOTE}), half=True)
    for old in repo.glob(f"{sig}-*.th"):
        old.unlink()
    save_with_checksum(package, repo / f"{sig}.th")
    yaml_path = repo / f"{name}.yaml"
    write_text(yaml_path, f"# {STANDIN_NOTE}\nmodels: ['{sig}']\n")
    return yaml_path


def write_punkt_tab_stub(nltk_data: str | Path, languages: tuple[str, ...] = ("english", "dutch")) -> Path:
    """Write an empty NLTK ``punkt_tab`` model for ``languages`` under ``nltk_data``.

    whisperx.align splits sentences with NLTK punkt and would otherwise ``nltk.download`` it.
    Empty parameter files are a valid punkt model without learned abbreviations or
    collocations: sentences still split at ``.``/``?``/``!`` followed by a capital. A real
    ``punkt_tab`` (``python -m nltk.downloader punkt_tab``) replaces it when NLTK_DATA points there.
    """
    root = Path(nltk_data) / "tokenizers" / "punkt_tab"
    for lang in languages:
        d = root / lang
        d.mkdir(parents=True, exist_ok=True)
        for fname in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
            (d / fname).touch()
    (root / "README").write_text(f"Empty punkt_tab stub ({', '.join(languages)}). {STANDIN_NOTE}\n")
    return Path(nltk_data)
