"""Doc examples are executed: every command in docs/ (and the README) is run or parse-checked.

Convention (documented in docs/cli.md and docs/index.md):

* ```` ```console ```` blocks (``$ cmd`` lines, ``\\`` continuations) and ```` ```python ````
  blocks of the RUNNABLE docs are executed in order, in one sandbox folder that holds the
  relative paths the examples use: ``models/`` (the offline models), ``LibriSpeech/``,
  ``mls_dutch/``, ``cv-nl/``, ``musan/`` and ``fma/`` (tiny copies in the standard layouts, built
  here from espeak-ng speech, noise and the asc-music tracks). ``archive/``, ``work/``,
  ``shards/`` and ``runs/`` are made by the examples themselves.
* Every other fenced block of every doc (``bash``, ``sh`` or unlabelled) is parse-only: each
  ``corpus`` / ``trainer`` command in it (also behind ``torchrun -m trainer.cli`` and inside
  shell loops) must name an existing command and be accepted by its parser: options, their
  values and the arguments. An example with a ``...`` placeholder is checked for option names only.

``corpus`` and ``trainer`` run in-process (Typer's CliRunner) so models load once; other
programs (``python -m ...``) run as subprocesses.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

import corpora
from corpora import speech

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Executed in this order (reproduce.md reuses what cli.md made).
RUNNABLE_DOCS = ("cli.md", "walkthrough.md", "reproduce.md")
RUNNABLE_LANGS = ("console", "python")
PARSE_ONLY_LANGS = ("", "bash", "sh", "shell")
PROGRAMS = ("corpus", "trainer")


# -- extracting examples -------------------------------------------------------------------


@dataclass
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """Fenced code blocks (``` or ~~~) with their language and position."""
    blocks, fence, lang, start, buf = [], None, "", 0, []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        s = line.strip()
        if fence is None:
            m = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", s)
            if m:
                fence, lang, start, buf = m.group(1), m.group(2).lower(), i, []
        elif s.startswith(fence) and s.strip("`~") == "":
            blocks.append(Block(path.name, start, lang, "\n".join(buf)))
            fence = None
        else:
            buf.append(line)
    return blocks


def join_continuations(lines: list[str]) -> list[str]:
    out, cur = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
        else:
            out.append((cur + line).strip())
            cur = ""
    if cur.strip():
        out.append(cur.strip())
    return [x for x in out if x]


def console_commands(text: str) -> list[str]:
    """The ``$ `` commands of a console block (continuation lines joined)."""
    cmds, cur = [], None
    for line in text.splitlines():
        if cur is not None:
            cur += " " + line.strip()
        elif line.startswith("$ "):
            cur = line[2:]
        else:
            continue  # expected output
        if cur.endswith("\\"):
            cur = cur[:-1]
        else:
            cmds.append(cur.strip())
            cur = None
    return cmds


_SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", "<", ">", ">>", "<(", "$("}
_KEYWORDS = {"do", "then", "else", "time", "nohup", "exec", "srun", "{", "}"}


def _substitute(line: str) -> str:
    """Shell expansions → harmless values for parsing (``$(...)`` → X, ``$VAR`` → 0)."""
    line = re.sub(r"\$\([^)]*\)", "X", line)
    return re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: "/tmp" if m.group(1) in ("PWD", "HOME") else "0", line)


def shell_commands(text: str) -> list[list[str]]:
    """Simple commands of a shell snippet: split at ; && | etc., loop keywords and VAR=x dropped."""
    out = []
    for line in join_continuations(text.splitlines()):
        lex = shlex.shlex(_substitute(line), posix=True, punctuation_chars=";&|()<>")
        lex.whitespace_split = True
        lex.commenters = "#"
        try:
            tokens = list(lex)
        except ValueError:  # unbalanced quotes: not a shell line (e.g. a diagram)
            continue
        cmd: list[str] = []
        for tok in tokens + [";"]:
            if tok in _SEPARATORS or set(tok) <= set(";&|()<>"):
                if cmd:
                    out.append(cmd)
                cmd = []
            elif not cmd and (tok in _KEYWORDS or re.match(r"^[A-Za-z_]\w*=", tok)):
                continue
            else:
                cmd.append(tok)
    return out


def cli_call(argv: list[str]) -> tuple[str, list[str]] | None:
    """(program, args) when ``argv`` runs ``corpus`` or ``trainer`` (directly or via torchrun/python -m)."""
    if not argv:
        return None
    if argv[0] in PROGRAMS:
        return argv[0], argv[1:]
    modules = {"trainer.cli": "trainer", "corpus_tools.cli": "corpus"}
    if argv[0] in ("torchrun", "python", "python3") and "-m" in argv:
        i = argv.index("-m")
        if i + 1 < len(argv) and argv[i + 1] in modules:
            return modules[argv[i + 1]], argv[i + 2:]
    return None


# -- the CLI apps --------------------------------------------------------------------------


def app_for(program: str) -> typer.Typer:
    if program == "corpus":
        from corpus_tools.cli import app
    else:
        from trainer.cli import app
    return app


def leaf_command(program: str, args: list[str]):
    """(click command, its full name, remaining args) for ``program args``."""
    cmd = typer.main.get_command(app_for(program))
    name = [program]
    while hasattr(cmd, "commands"):
        if not args or args[0] not in cmd.commands:
            raise AssertionError(f"`{' '.join(name)}` has no sub-command {args[:1]} "
                                 f"(known: {', '.join(cmd.commands)})")
        cmd = cmd.commands[args[0]]
        name.append(args[0])
        args = args[1:]
    return cmd, " ".join(name), args


def option_names(cmd) -> set[str]:
    return {o for p in cmd.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)}


def parse_check(program: str, args: list[str]) -> None:
    """Parse ``program args`` without running it; raises AssertionError with the parser's message."""
    cmd, name, rest = leaf_command(program, list(args))
    if any("..." in a for a in rest):  # a sketch: only the option names can be checked
        known = option_names(cmd)
        unknown = [a.split("=")[0] for a in rest if a.startswith("-") and a.split("=")[0] not in known]
        assert not unknown, f"`{name}` has no option(s) {unknown}"
        return
    try:
        cmd.make_context(name, list(rest))
    except Exception as exc:  # click's UsageError / BadParameter / NoSuchOption (Typer's vendored click)
        msg = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise AssertionError(f"`{name} {' '.join(rest)}` does not parse: {msg}") from None


def all_docs() -> list[Path]:
    return sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]


def parse_only_blocks() -> list[Block]:
    return [b for d in all_docs() for b in fenced_blocks(d)
            if b.lang in PARSE_ONLY_LANGS or (b.lang == "console" and b.doc not in RUNNABLE_DOCS)]


# -- unit tests of the extraction ----------------------------------------------------------


def test_extraction_handles_continuations_loops_and_torchrun():
    text = ("for m in a b; do\n  corpus shard work/ --method \"$m\" -o \"shards/$m/\" --workers 16  # comment\n"
            "done\ntorchrun --nproc-per-node 8 -m trainer.cli pretrain --shards s/ \\\n    --config base --out r\n"
            "X=1 trainer plot runs/x && echo done")
    cmds = [cli_call(c) for c in shell_commands(text)]
    cmds = [c for c in cmds if c]
    assert cmds == [("corpus", ["shard", "work/", "--method", "0", "-o", "shards/0/", "--workers", "16"]),
                    ("trainer", ["pretrain", "--shards", "s/", "--config", "base", "--out", "r"]),
                    ("trainer", ["plot", "runs/x"])]
    assert console_commands("$ corpus stats w/ \\\n  --plot p.png\noutput line\n$ trainer plot r") == [
        "corpus stats w/  --plot p.png", "trainer plot r"]


def test_parse_check_rejects_unknown_options_and_commands():
    parse_check("corpus", ["stats", "work/", "--plot", "x.png"])
    with pytest.raises(AssertionError, match="no such option|No such option"):
        parse_check("corpus", ["stats", "work/", "--no-such-option"])
    with pytest.raises(AssertionError, match="no sub-command"):
        parse_check("trainer", ["pretrian", "--shards", "x"])
    with pytest.raises(AssertionError, match="does not parse"):
        parse_check("trainer", ["pretrain", "--shards", "x", "--out", "r", "--steps", "many"])


# -- parse-only: every command in every doc ------------------------------------------------


@pytest.mark.parametrize("doc", [p.name for p in all_docs()])
def test_every_documented_command_parses(doc):
    """Each `corpus`/`trainer` command in a non-runnable block exists and accepts its options."""
    checked, errors = 0, []
    for block in parse_only_blocks():
        if block.doc != doc:
            continue
        for argv in shell_commands(block.text if block.lang != "console" else
                                   "\n".join(console_commands(block.text))):
            call = cli_call(argv)
            if call is None:
                continue
            checked += 1
            try:
                parse_check(*call)
            except AssertionError as exc:
                errors.append(f"{block.where}: {exc}")
    assert not errors, "\n".join(errors)
    if doc in ("walkthrough.md", "reproduce.md", "cli.md"):
        assert checked > 0, f"{doc} has no cluster-size examples"


def test_every_command_has_an_example_in_cli_md():
    """docs/cli.md shows every leaf command of both programs at least once."""
    shown = set()
    for block in fenced_blocks(DOCS / "cli.md"):
        text = "\n".join(console_commands(block.text)) if block.lang == "console" else block.text
        for argv in shell_commands(text):
            call = cli_call(argv)
            if call:
                shown.add(leaf_command(*call)[1])

    def leaves(cmd, name):
        if hasattr(cmd, "commands"):
            for sub_name, sub in cmd.commands.items():
                yield from leaves(sub, f"{name} {sub_name}")
        else:
            yield name

    every = {n for p in PROGRAMS for n in leaves(typer.main.get_command(app_for(p)), p)}
    missing = sorted(every - shown)
    assert not missing, f"commands without an example in docs/cli.md: {missing}"


# -- runnable: the console/python examples on tiny fixtures --------------------------------

SR = 16000
EN_SENTENCES = ["the quick brown fox jumps over the lazy dog", "she sells sea shells by the sea shore",
                "a journey of a thousand miles begins with one step", "all that glitters is not gold",
                "the early bird catches the worm", "better late than never"]
NL_SENTENCES = ["de kat zit op de mat", "het regent vandaag in amsterdam", "wij gaan morgen naar het strand",
                "dit is een korte nederlandse zin", "de trein vertrekt om acht uur", "ik lees graag een boek"]


def _speech(text: str, voice: str) -> np.ndarray:
    return speech(text, voice, gain=0.7)


def build_librispeech(root: Path) -> None:
    """LibriSpeech/train-clean-100: 2 speakers × 2 chapters × 3 utterances of espeak English."""
    chapters, k = {}, 0
    for spk, voice in (("103", "en-us"), ("1034", "en+m3")):
        for chap in (f"{spk}1", f"{spk}2"):
            texts = [EN_SENTENCES[(k + u) % len(EN_SENTENCES)] for u in range(3)]
            chapters[(spk, chap)] = [(text.upper(), _speech(text, voice)) for text in texts]
            k += 3
    corpora.librispeech(root / "LibriSpeech", {"train-clean-100": chapters})


def build_mls(root: Path) -> None:
    """mls_dutch/{train,dev,test}/audio/SPK/BOOK/SPK_BOOK_UTT.flac + transcripts.txt."""
    splits, k = {}, 0
    for split, n in (("train", 4), ("dev", 2), ("test", 2)):
        splits[split] = []
        for u in range(n):
            spk, book, voice = (("1001", "77", "nl"), ("2002", "88", "nl+f2"))[u % 2]
            text = NL_SENTENCES[k % len(NL_SENTENCES)]
            splits[split].append((spk, book, k, text, _speech(text, voice)))
            k += 1
    corpora.mls(root / "mls_dutch", splits)


def build_commonvoice(root: Path) -> None:
    """cv-nl/{train,dev,test}.tsv + clips/*.mp3 (Common Voice v18 layout)."""
    clips, lists, k = {}, {}, 0
    for split, n in (("train", 3), ("dev", 1), ("test", 1)):
        lists[split] = []
        for _ in range(n):
            clip = f"common_voice_nl_{k}.mp3"
            text = NL_SENTENCES[(k + 2) % len(NL_SENTENCES)]
            clips[clip] = _speech(text, "nl+m3")
            lists[split].append(corpora.cv_row(f"client{k % 2}", clip, text.capitalize() + ".", sentence_id=f"s{k}"))
            k += 1
    corpora.commonvoice(root / "cv-nl", clips, lists)


def build_musan(root: Path) -> None:
    """musan/noise/free-sound/*.wav: white and brown noise."""
    rng = np.random.default_rng(0)
    white = (0.05 * rng.standard_normal(4 * SR)).astype(np.float32)
    brown = np.cumsum(rng.standard_normal(3 * SR)) * 2e-3
    corpora.musan(root / "musan", {("noise", "free-sound"): {
        "noise-free-sound-0000": white, "noise-free-sound-0001": (brown - brown.mean()).astype(np.float32)}},
        files={("noise", "free-sound"): {"ANNOTATIONS": "", "LICENSE": "CC BY 3.0\n"}})


def build_fma(root: Path) -> None:
    """fma/fma_large/000/*.mp3 (6 s excerpts of the Debian asc-music tracks) + fma_metadata/."""
    from corpus_tools.samples import music_files

    def excerpt(src: Path):
        return lambda path: subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", "20", "-t", "6",
                                            "-i", str(src), "-ac", "1", "-ar", "22050", "-c:a", "libmp3lame",
                                            str(path)], check=True)

    corpora.fma(root / "fma", {tid: excerpt(src) for tid, src in zip((2, 5), music_files())},
                ["2,Demo,ASC,training,large,Soundtrack,[1],[1],One",
                 "5,Demo,ASC,training,large,Soundtrack,[1],[1],Two"], ["1,2,0,Soundtrack,1"])


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, models_dir):
    """The folder the runnable examples run in (see the module docstring)."""
    root = tmp_path_factory.mktemp("docs-sandbox")
    (root / "models").symlink_to(models_dir, target_is_directory=True)
    for build in (build_librispeech, build_mls, build_commonvoice, build_musan, build_fma):
        build(root)
    return root


def _expand(line: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: env.get(m.group(1), ""), line)


def run_example(cmd: str, root: Path, env: dict[str, str], mp: pytest.MonkeyPatch) -> str:
    """Run one console command in ``root``; returns its output, raises AssertionError on failure."""
    argv = shlex.split(_expand(cmd, env), comments=True)
    if not argv:
        return ""
    if argv[0] == "export":
        for item in argv[1:]:
            name, _, value = item.partition("=")
            env[name] = value
            mp.setenv(name, value)
        return ""
    call = cli_call(argv)
    if call is not None and argv[0] in PROGRAMS:
        res = CliRunner().invoke(app_for(call[0]), call[1], catch_exceptions=True)
        output = res.output
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            import traceback

            output += "".join(traceback.format_exception(res.exception))
        assert res.exit_code == 0, f"exit {res.exit_code}\n{output[-4000:]}"
        return output
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    else:  # a shell expands globs (`cat work/cache/wx-align-*/settings.json`); python -c code keeps them
        import glob

        argv = [argv[0]] + [a for arg in argv[1:]
                            for a in (sorted(glob.glob(arg, root_dir=root)) if re.search(r"[*?[]", arg) else [])
                            or [arg]]
    res = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"exit {res.returncode}\n{(res.stdout + res.stderr)[-4000:]}"
    return res.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_runnable_examples(sandbox):
    """Every console/python example of cli.md, walkthrough.md and reproduce.md runs, in order."""
    env = dict(os.environ, PWD=str(sandbox), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    ran = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(sandbox)
        mp.setenv("HF_HUB_OFFLINE", "1")
        for doc in RUNNABLE_DOCS:
            for block in fenced_blocks(DOCS / doc):
                if block.lang == "console":
                    for cmd in console_commands(block.text):
                        t0 = time.perf_counter()
                        try:
                            run_example(cmd, sandbox, env, mp)
                        except AssertionError as exc:
                            pytest.fail(f"{block.where}: `{cmd}` failed: {exc}")
                        ran.append((time.perf_counter() - t0, cmd))
                elif block.lang == "python":
                    t0 = time.perf_counter()
                    res = subprocess.run([sys.executable, "-c", block.text], cwd=sandbox, env=env,
                                         capture_output=True, text=True)
                    assert res.returncode == 0, f"{block.where}: python example failed\n{res.stderr[-4000:]}"
                    ran.append((time.perf_counter() - t0, f"python block at {block.where}"))
    assert len(ran) > 30
    print("slowest doc examples:", *(f"{s:6.1f} s  {c[:100]}" for s, c in sorted(ran, reverse=True)[:8]), sep="\n")
    # the examples' artefacts exist where the docs say
    for rel in ("work/recordings.parquet", "work/segments/wx-diar-3s.parquet", "work/lengths.png",
                "shards/w-pp-3s/shards.parquet", "runs/pretrain/log.jsonl", "runs/pretrain/plots",
                "runs/finetune/eval/best/summary.json", "report.html", "report.md", "report_files/lengths.png",
                "hf/pretrain/config.json", "hf/finetune/vocab.json", "sim/mix-noise-33/shards.parquet",
                "stems/stems.parquet", "ls-train.parquet", "table14.csv"):
        assert (sandbox / rel).exists(), f"{rel} missing after the examples ran"
