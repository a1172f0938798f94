"""`trainer finetune` / `evaluate` / `export-hf-ctc` / `subset` on CPU with synthetic labelled speech.

The labelled set is spoken by espeak-ng: two-word utterances over six command words, with varied
speed and pitch, so a `tiny` model learns to spell them within a couple of hundred steps.
"""

from __future__ import annotations

import itertools
import json
import textwrap
from pathlib import Path

import pytest
import torch

from corpora import espeak_file, run_ddp_worker
from corpus_tools.subset import draw_subset, prepare_training_data
from trainer.finetune import FinetuneArgs, finetune

torch.set_num_threads(1)
WORDS = ["yes", "no", "up", "down", "stop", "go"]


def _rows(root: Path, pairs, prefix: str, voice: str = "en") -> list[dict]:
    rows = []
    for i, (a, b) in enumerate(pairs):
        text = f"{a.capitalize()}, {b}!"  # punctuation and case exercise the normalisation
        path = root / f"{prefix}{i:02d}.wav"
        d = espeak_file(path, text, voice, 150 + 10 * (i % 3), 40 + 5 * (i % 4))
        rows.append(dict(segment_id=f"{prefix}{i:02d}", recording_id=f"{prefix}{i:02d}", path=str(path), start=0.0,
                         end=d, duration=d, text=text, speaker="espeak", method="test", language=voice,
                         session="s"))
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Train/val shards + manifest of espeak speech, and a randomly initialised `tiny` pre-training checkpoint."""
    import polars as pl

    from corpus_tools.shards import write_shards
    from trainer.checkpoint import atomic_save
    from trainer.model import Wav2Vec2ForPreTraining, load_config

    root = tmp_path_factory.mktemp("labelled")
    pairs = list(itertools.permutations(WORDS, 2))
    rows = _rows(root, pairs, "tr")  # 30 utterances
    df = pl.DataFrame(rows)
    df.write_parquet(root / "train.parquet")
    write_shards(df, root / "train", samples_per_shard=16, progress=False)
    write_shards(df[:8], root / "dev", samples_per_shard=16, progress=False)
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(load_config("tiny"))
    atomic_save({"config": model.cfg.to_dict(), "model": model.state_dict()}, root / "tiny.pt")
    return {"root": root, "train": str(root / "train"), "val": str(root / "dev"), "manifest": str(root / "train.parquet"),
            "init": str(root / "tiny.pt"), "hours": float(df["duration"].sum()) / 3600}


def ft_args(data, out, **kw) -> FinetuneArgs:
    base = dict(train=data["train"], out=str(out), init=data["init"], batch_seconds=8.0, lr=3e-3,
                freeze_transformer_steps=20, num_workers=0, quiet=True)
    base.update(kw)
    return FinetuneArgs(**base)


def flat(output: str) -> str:
    """CLI output without rich's box drawing and line wrapping."""
    import re

    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


def read_log(run_dir, split="train") -> list[dict]:
    return [r for r in map(json.loads, (Path(run_dir) / "log.jsonl").read_text().splitlines()) if r["split"] == split]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ft") / "run"
    finetune(ft_args(data, run, val=data["val"], steps=200, log_every=20, val_every=100, ckpt_every=100))
    return run


@pytest.mark.slow
def test_finetuning_drives_ctc_loss_down_and_output_away_from_blank(trained):
    train = read_log(trained)
    assert train[0]["frozen"] and not train[-1]["frozen"]
    assert train[-1]["loss"] < 0.3 * train[0]["loss"], (train[0]["loss"], train[-1]["loss"])
    assert all(r["utterances"] > 0 for r in train)
    val = read_log(trained, "val")
    assert [v["step"] for v in val] == [100, 200]
    assert val[-1]["blank_fraction"] < 0.5, "greedy output must not be all blank"
    assert val[-1]["wer"] < 1.0 and val[-1]["cer"] < 0.6
    assert (trained / "checkpoints" / "best.pt").exists()
    best = torch.load(trained / "checkpoints" / "best.pt", weights_only=False)
    assert best["kind"] == "ctc" and best["vocab"][:3] == ["<blank>", "|", "'"]


@pytest.mark.slow
def test_schedule_freezing_and_exact_resume(data, tmp_path):
    """CNN never changes; the transformer only after the freeze; a resumed run matches bit for bit."""
    from trainer.ctc import load_ctc_model, init_ctc_model

    init = init_ctc_model(data["init"]).state_dict()
    full = tmp_path / "full"
    finetune(ft_args(data, full, steps=24, freeze_transformer_steps=10, ckpt_every=5, keep_checkpoints=10,
                     log_every=1))
    at5 = torch.load(full / "checkpoints" / "step_000000005.pt", weights_only=False)
    final = load_ctc_model(full).state_dict()
    for key, value in init.items():
        if key.startswith("lm_head."):
            assert not torch.equal(at5["model"][key], value), f"the head trains from step 0: {key}"
        elif key.startswith("wav2vec2.feature_encoder."):
            assert torch.equal(final[key], value), f"the CNN is frozen: {key}"
        else:
            assert torch.equal(at5["model"][key], value), f"frozen before step 10: {key}"
    assert not torch.equal(final["wav2vec2.context.layers.0.ffn.fc1.weight"],
                           init["wav2vec2.context.layers.0.ffn.fc1.weight"])
    # Tri-stage: peak/100 at step 0, peak over 40 %, decay to peak/20.
    lrs = [r["lr"] for r in read_log(full)]
    assert lrs[0] == pytest.approx(3e-5) and max(lrs) == pytest.approx(3e-3)
    assert at5["schedule"]["name"] == "tri_stage"
    assert at5["optimizer"]["param_groups"][0]["weight_decay"] == 0.0

    part = tmp_path / "part"
    finetune(ft_args(data, part, steps=24, freeze_transformer_steps=10, ckpt_every=5, log_every=1, stop_after=7))
    finetune(ft_args(data, part, steps=24, freeze_transformer_steps=10, ckpt_every=5, log_every=1, resume=True))
    resumed = load_ctc_model(part).state_dict()
    for key in final:
        assert torch.equal(final[key], resumed[key]), key
    assert [r["loss"] for r in read_log(part)][7:] == [r["loss"] for r in read_log(full)][7:]


@pytest.mark.slow
def test_evaluate_matches_jiwer_and_lm_decoding_runs(data, trained, tmp_path):
    import jiwer
    from typer.testing import CliRunner

    from trainer.cli import app
    from trainer.decode import evaluate

    out = tmp_path / "eval"
    rows = evaluate(trained, [data["val"], f"again={data['val']}"], out_dir=out, progress=False)
    assert [r["set"] for r in rows] == ["dev", "again"] and rows[0]["utterances"] == 8
    hyps = [json.loads(line) for line in (out / "hypotheses.jsonl").read_text().splitlines()]
    dev = [h for h in hyps if h["set"] == "dev"]
    assert len(dev) == 8 and all(h["reference"] == h["reference_raw"].lower().replace(",", "").replace("!", "")
                                 for h in dev)
    refs, greedy = [h["reference"] for h in dev], [h["greedy"] for h in dev]
    assert rows[0]["greedy_wer"] == pytest.approx(jiwer.wer(refs, greedy), abs=1e-12)
    assert rows[0]["greedy_cer"] == pytest.approx(jiwer.cer(refs, greedy), abs=1e-12)
    assert rows[0]["greedy_wer"] == rows[1]["greedy_wer"]

    # A hand-written bigram ARPA over the six words; the lexicon comes from its unigrams.
    arpa = tmp_path / "words.arpa"
    bigrams = [f"-0.8\t{a} {b}" for a, b in itertools.permutations(WORDS, 2)]
    bigrams += [f"-0.8\t<s> {w}" for w in WORDS] + [f"-0.8\t{w} </s>" for w in WORDS]
    arpa.write_text("\\data\\\nngram 1=9\nngram 2=%d\n\n\\1-grams:\n-1.0\t<unk>\t0\n-99\t<s>\t-0.3\n-0.8\t</s>\t0\n"
                    % len(bigrams) + "".join(f"-0.8\t{w}\t-0.3\n" for w in WORDS) + "\n\\2-grams:\n"
                    + "\n".join(bigrams) + "\n\n\\end\\\n")
    lm_out = tmp_path / "lm"
    result = CliRunner().invoke(app, ["evaluate", "--ckpt", str(trained / "checkpoints" / "best.pt"), "--shards",
                                      data["val"], "--lm", str(arpa), "--out", str(lm_out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "LM WER %" in result.output and "| dev |" in result.output
    summary = json.loads((lm_out / "summary.json").read_text())[0]
    hyps = [json.loads(line) for line in (lm_out / "hypotheses.jsonl").read_text().splitlines()]
    assert all(set(h["lm"].split()) <= set(WORDS) for h in hyps)
    assert summary["lm_wer"] == pytest.approx(jiwer.wer([h["reference"] for h in hyps], [h["lm"] for h in hyps]))
    assert summary["lm_wer"] < 1.0 and summary["lm_cer"] < 1.0
    assert (lm_out / "lexicon.txt").read_text().splitlines()[0] == "yes\ty e s |"


def test_lm_beam_search_on_known_emissions(tmp_path):
    """Emissions spelling 'yez|no|mayb' decode to the lexicon words 'yes no maybe'."""
    from trainer.decode import BeamSearchDecoder, greedy_decode
    from trainer.text import TOKEN_TO_ID, VOCAB

    arpa = tmp_path / "lm.arpa"
    arpa.write_text("\\data\\\nngram 1=6\nngram 2=4\n\n\\1-grams:\n-1.0\t<unk>\t0\n-99\t<s>\t-0.3\n-0.7\t</s>\t0\n"
                    "-0.5\tyes\t-0.3\n-0.5\tno\t-0.3\n-0.8\tmaybe\t-0.3\n\n\\2-grams:\n-0.2\t<s> yes\n-0.2\tyes no\n"
                    "-0.2\tno maybe\n-0.2\tmaybe </s>\n\n\\end\\\n")
    frames = [i for ch in "yez|no|mayb" for i in (TOKEN_TO_ID[ch], TOKEN_TO_ID[ch], 0)]
    logits = torch.full((1, len(frames) + 4, len(VOCAB)), -8.0)
    logits[0, torch.arange(len(frames)), torch.tensor(frames)] = 0.0
    logits[0, len(frames):, 0] = 0.0  # padding frames past the length
    lengths = torch.tensor([len(frames)])
    assert greedy_decode(logits, lengths) == ["yez no mayb"]
    decoder = BeamSearchDecoder(arpa, beam_size=50, lm_weight=2.0, word_score=0.0, workdir=tmp_path)
    assert decoder(logits, lengths) == ["yes no maybe"]


@pytest.mark.slow
def test_export_to_hugging_face_ctc_gives_the_same_logits(data, tmp_path):
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    from trainer.ctc import export_hf_ctc, init_ctc_model
    from trainer.checkpoint import atomic_save

    # The HF-exact variant (unpadded CNN, exact GELU), with a perturbed head so the logits are not trivial.
    model = init_ctc_model(None, config="tiny", overrides={"conv_padding": "none", "activation": "gelu"}).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        model.lm_head.weight.add_(0.5 * torch.randn_like(model.lm_head.weight))
    ckpt = tmp_path / "ctc.pt"
    atomic_save(model.checkpoint_dict(), ckpt)
    hf_dir = export_hf_ctc(ckpt, tmp_path / "hf")
    hf = Wav2Vec2ForCTC.from_pretrained(hf_dir).eval()
    processor = Wav2Vec2Processor.from_pretrained(hf_dir)
    audio = torch.randn(2, 24000)
    with torch.no_grad():
        ours = model(audio)["logits"]
        inputs = processor([a.numpy() for a in audio], sampling_rate=16000, return_tensors="pt")
        theirs = hf(inputs.input_values).logits
    assert ours.shape == theirs.shape
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    assert hf.config.vocab_size == 29 and hf.config.pad_token_id == 0 and len(processor.tokenizer) == 29
    from trainer.decode import greedy_decode

    assert processor.batch_decode(theirs.argmax(-1)) == greedy_decode(ours)
    assert processor.tokenizer("zo'n boek").input_ids == [28, 17, 2, 16, 1, 4, 17, 7, 13]


@pytest.mark.slow
def test_init_from_hugging_face_folder_and_ctc_checkpoint(data, tmp_path):
    from trainer.checkpoint import load_model
    from trainer.ctc import init_ctc_model
    from trainer.hf import export_hf

    pre = load_model(data["init"])
    hf_dir = export_hf(data["init"], tmp_path / "hf-pre", pretraining=False)
    model = init_ctc_model(hf_dir, overrides={"mask_prob": 0.05, "dropout": 0.1})
    assert model.cfg.mask_prob == 0.05 and model.cfg.dropout == 0.1
    ours = pre.wav2vec2.state_dict()
    for key, value in model.wav2vec2.state_dict().items():
        torch.testing.assert_close(value, ours[key], msg=key)
    ours_init = init_ctc_model(data["init"])
    assert ours_init.cfg.conv_padding == pre.cfg.conv_padding
    with pytest.raises(FileNotFoundError):
        init_ctc_model(tmp_path / "missing.pt")


def test_label_subsets(data, tmp_path):
    from typer.testing import CliRunner

    from corpus_tools.data.tar_index import list_shards, read_shard_records
    from trainer.cli import app

    durations = [1.0] * 100
    a, b = draw_subset(durations, 10 / 3600, seed=1), draw_subset(durations, 10 / 3600, seed=1)
    assert a == b and len(a) == 10 and draw_subset(durations, 10 / 3600, seed=2) != a
    assert set(a) <= set(draw_subset(durations, 20 / 3600, seed=1)), "same seed: nested budgets"

    hours = data["hours"] / 3
    folder, info = prepare_training_data(data["train"], hours, 0, tmp_path, log=lambda m: None)
    recs = [r for p in list_shards(folder) for r in read_shard_records(p)]
    got = sum(r.num_frames for r in recs) / 16000 / 3600
    assert hours <= got < hours + 3 / 3600 and info["utterances"] == len(recs) < 30
    assert all(r.meta["transcript"] for r in recs)
    # From a manifest: the subset is written to shards in the run directory.
    folder, info = prepare_training_data(data["manifest"], hours, 0, tmp_path / "m", log=lambda m: None)
    assert Path(folder) == tmp_path / "m" / "data" / "train" and 0 < info["utterances"] < 30
    # The CLI helper on a manifest and on shards.
    r = CliRunner().invoke(app, ["subset", data["manifest"], "--hours", str(hours), "-o", str(tmp_path / "s.parquet")])
    assert r.exit_code == 0, r.output
    import polars as pl

    assert 0 < pl.read_parquet(tmp_path / "s.parquet").height < 30
    r = CliRunner().invoke(app, ["subset", data["train"], "--hours", str(hours), "-o", str(tmp_path / "sub")])
    assert r.exit_code == 0 and "utterances" in r.output, r.output


def test_a_split_within_five_percent_of_the_budget_is_used_whole(data, tmp_path):
    """train-clean-100 holds 100.6 h: the 100 h preset must train on all of it, not a random 99.4 %."""
    from corpus_tools.data.tar_index import list_shards, read_shard_records

    for src in (data["train"], data["manifest"]):
        said = []
        budget = data["hours"] / 1.04  # the data hold 4 % more than the budget
        folder, info = prepare_training_data(src, budget, 0, tmp_path / Path(src).name, log=said.append)
        recs = [r for p in list_shards(folder) for r in read_shard_records(p)]
        assert len(recs) == info["utterances"] == 30, (src, said)
        assert any("within 5 %" in m and "using them all" in m for m in said), said
        # More than 5 % over the budget: a subset is drawn.
        folder, info = prepare_training_data(src, data["hours"] / 1.2, 0, tmp_path / f"{Path(src).name}-cut",
                                             log=lambda m: None)
        assert info["utterances"] < 30


def test_cli_help_and_bad_input(data, tmp_path):
    from typer.testing import CliRunner

    from trainer.cli import app

    runner = CliRunner()
    for cmd in ("finetune", "evaluate", "export-hf-ctc", "subset"):
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output, cmd
    assert "10m" in runner.invoke(app, ["finetune", "--help"]).output
    r = runner.invoke(app, ["finetune", "--train", str(tmp_path / "nothing"), "--init", data["init"], "--out",
                            str(tmp_path / "o")])
    assert r.exit_code == 2 and "no *.tar shards" in flat(r.output)
    r = runner.invoke(app, ["finetune", "--train", data["train"], "--init", data["init"], "--out", str(tmp_path / "o"),
                            "--preset", "5m"])
    assert r.exit_code == 2 and "unknown preset" in flat(r.output)
    r = runner.invoke(app, ["evaluate", "--ckpt", str(tmp_path / "none.pt"), "--shards", data["val"]])
    assert r.exit_code == 2 and "does not exist" in flat(r.output)
    r = runner.invoke(app, ["evaluate", "--ckpt", data["init"], "--shards", data["val"]])
    assert r.exit_code == 2 and "not a CTC fine-tuning checkpoint" in flat(r.output)
    # Unlabelled shards fail before training, with a message.
    import polars as pl

    from corpus_tools.shards import write_shards

    rows = pl.read_parquet(data["manifest"]).with_columns(pl.lit("").alias("text"))
    write_shards(rows[:4], tmp_path / "unlabelled", progress=False)
    r = runner.invoke(app, ["finetune", "--train", str(tmp_path / "unlabelled"), "--init", data["init"], "--out",
                            str(tmp_path / "o"), "--steps", "2", "--quiet"])
    assert r.exit_code == 2 and "no transcript" in flat(r.output)


def test_preset_settings():
    from trainer.finetune import resolve_settings
    from trainer.presets import load_preset

    steps = {p: load_preset(p)["train"]["steps"] for p in ("10m", "1h", "10h", "100h", "960h")}
    assert steps == {"10m": 12000, "1h": 13000, "10h": 20000, "100h": 80000, "960h": 320000}
    train, model = resolve_settings(FinetuneArgs(train="x", out="y", preset="10m", steps=7))
    assert train["steps"] == 7 and train["batch_seconds"] == 200 and train["lr"] == 5e-5
    assert train["freeze_transformer_steps"] == 5000 and abs(train["label_hours"] - 1 / 6) < 1e-6
    assert model == {"dropout": 0.1, "attention_dropout": 0.1, "mask_prob": 0.05, "mask_length": 10}
    assert load_preset("960h")["train"]["label_hours"] is None


DDP_WORKER = textwrap.dedent("""
    import os, sys, torch
    torch.set_num_threads(1)
    from trainer.finetune import FinetuneArgs, finetune
    train, init, out = sys.argv[1:4]
    result = finetune(FinetuneArgs(train=train, out=out, init=init, batch_seconds=3.0, lr=3e-3, steps=4,
                                   freeze_transformer_steps=2, log_every=1, ckpt_every=4, num_workers=0,
                                   quiet=False))
    torch.save(result["model"].state_dict(), os.path.join(out, f"rank{os.environ['RANK']}.pt"))
""")


@pytest.mark.slow
def test_torchrun_two_processes_unfrozen_transformer_stays_synchronised(data, tmp_path):
    """Each rank sees different batches; after the unfreeze the transformer must still be all-reduced."""
    from trainer.ctc import init_ctc_model

    proc, out, a, b = run_ddp_worker(DDP_WORKER, tmp_path, data["train"], data["init"], timeout=180)
    assert "step 2: transformer unfrozen" in proc.stdout
    init = init_ctc_model(data["init"]).state_dict()
    key = "wav2vec2.context.layers.1.attention.qkv.weight"
    assert not torch.equal(a[key], init[key]), "the transformer trained after the unfreeze"
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_labels_come_from_training_rows_only(data, tmp_path):
    """A --train manifest that also holds dev rows: the label budget is drawn from the train rows,
    and a manifest with no train rows is refused with one clear line."""
    import polars as pl

    from corpus_tools.data.tar_index import list_shards, read_shard_records

    df = pl.read_parquet(data["manifest"])
    mixed = df.with_columns(pl.when(pl.int_range(pl.len()) < 10).then(pl.lit("dev")).otherwise(pl.lit("train"))
                            .alias("split"))
    mixed.write_parquet(tmp_path / "mixed.parquet")
    train_hours = float(mixed.filter(pl.col("split") == "train")["duration"].sum()) / 3600
    said = []
    folder, info = prepare_training_data(str(tmp_path / "mixed.parquet"), train_hours, 0, tmp_path / "run",
                                         log=said.append)
    ids = {r.meta["id"] for p in list_shards(folder) for r in read_shard_records(p)}
    dev_ids = set(mixed.filter(pl.col("split") == "dev")["segment_id"].to_list())
    assert len(ids) == 20 and not ids & dev_ids, (len(ids), ids & dev_ids)
    assert any("left out 10 dev" in m for m in said), said
    mixed.with_columns(pl.lit("dev").alias("split")).write_parquet(tmp_path / "dev.parquet")
    with pytest.raises(ValueError, match="no training rows"):
        prepare_training_data(str(tmp_path / "dev.parquet"), None, 0, tmp_path / "run2", log=said.append)
