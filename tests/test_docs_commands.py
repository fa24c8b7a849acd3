"""Every command in the README and docs/ runs as written. Running them all would take hours (a `dvc repro` is
minutes), so each is checked the cheap way that would catch it going stale: `pipeline ...` lines are parsed by the
console script's own parser, `python -m` modules and `python <file>` scripts must exist (scripts answer --help),
`dvc exp run -S` changes must give a valid params.yaml, `dvc repro`/`dvc commit` targets must be stages of
dvc.yaml, and params and competition-record snippets must validate. A command of another kind fails the test
until a check for it is added here."""

from __future__ import annotations

import copy
import fnmatch
import importlib.util
import re
import shlex
import subprocess
import sys
import textwrap

import pytest
import yaml
from dvc.repo import Repo

from conftest import REPO
from pipeline import cli
from pipeline.core.competitions import load_record
from pipeline.core.config import parse_params, with_changes

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
EXTERNAL = {"git", "pytest", "cd", "wait", "kaggle", "pip", ".", "source"}  # not ours: left to their own documentation
DVC_READ_ONLY = {"status", "push", "pull", "remote", "plots", "metrics"}  # take no stage names or params


def blocks(lang: str) -> list[tuple[str, str]]:
    return [(page.name, textwrap.dedent(m.group(1))) for page in PAGES
            for m in re.finditer(rf"```{lang}\n(.*?)```", page.read_text(), re.S)]


def commands() -> list[tuple[str, list[str]]]:
    """Each shell command of every bash block (comments dropped, `a && b`, `a; b`, `a & b` and loops split), and
    every `dvc exp run ...` written inline in the prose."""
    found = []
    for page, block in blocks("bash"):
        for line in block.splitlines():
            line = re.sub(r"\$[a-z]\b", "0", re.sub(r"(^|\s+)#.*$", "", line))  # a loop's $k, $s: 0
            for part in re.split(r"&&|;|(?<![&>])&(?!&)", line):
                words = shlex.split(part.strip().removeprefix("do ").removeprefix("for k in 0 1 2 3"))
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before the command
                    words = words[1:]
                if words and words[0] not in ("done", "for"):
                    found.append((page, words))
    for page in PAGES:
        text = re.sub(r"\s*\n\s*", " ", page.read_text())
        found += [(page.name, shlex.split(m.group(1))) for m in re.finditer(r"`(dvc exp run [^`]+)`", text)
                  if "..." not in m.group(1) and "<" not in m.group(1)]  # placeholders: `-S seed=...`
    return found


def _shipped() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for key, value in patch.items():
        out[key] = _merge(base[key], value) if isinstance(base.get(key), dict) and isinstance(value, dict) else value
    return out


def _set(raw: dict, change: str) -> None:
    """DVC's `-S key=value` (`+key=value` adds a key), the value read as YAML."""
    key, _, value = change.lstrip("+").partition("=")
    with_changes(raw, {key: yaml.safe_load(value)})


@pytest.fixture(scope="module")
def stage_names() -> list[str]:
    with Repo(str(REPO)) as repo:
        return [stage.name for stage in repo.index.stages]


EXP_RUN_VALUED = {"-S", "--set-param", "-n", "--name", "-j", "--jobs", "-m", "--message"}  # flags taking a value


def check(words: list[str], stage_names: list[str], named: set[str] = frozenset()) -> None:
    """`named`: the experiments an earlier `dvc exp run -n NAME` on the same page made."""
    program, args = words[0], words[1:]
    if program in EXTERNAL:
        return
    if program in ("python", "python3"):
        if args[:2] == ["-m", "venv"]:
            return
        if args[0] == "-m":
            assert importlib.util.find_spec(args[1]), f"no module {args[1]}"
            return
        script = REPO / args[0]
        assert script.is_file(), f"no script {args[0]}"
        out = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return
    if program == "pipeline":
        cli._parser().parse_args(args)  # exits (failing the test) on a command it does not take
        return
    assert program == "dvc", f"no check for {program!r}: add one"
    if args[:2] == ["exp", "run"]:
        raw, targets, rest = _shipped(), [], iter(args[2:])
        for word in rest:
            if word in EXP_RUN_VALUED:
                value = next(rest, None)  # None: prose naming the flag, as in "`dvc exp run -S` changes ..."
                if word in ("-S", "--set-param") and value is not None:
                    _set(raw, value)
            elif not word.startswith("-"):
                targets.append(word)
        parse_params(raw)
        assert all(t in stage_names for t in targets), f"no stage {targets}"
    elif args[:2] == ["exp", "apply"]:
        assert args[2] in named, f"no `dvc exp run -n {args[2]}` before it on the page"
    elif args[0] in ("repro", "commit"):
        targets = [a for a in args[1:] if not a.startswith("-")]
        for target in targets:
            assert fnmatch.filter(stage_names, target) or target in stage_names, f"no stage {target}"
    else:
        assert args[0] in DVC_READ_ONLY, f"no check for `dvc {args[0]}`: add one"


def test_every_documented_command_is_checked_and_runs_as_written(stage_names):
    found = commands()
    assert len(found) > 20 and any(w[:3] == ["dvc", "exp", "run"] for _, w in found)
    failed, named = [], {}
    for page, words in found:
        if words[:3] == ["dvc", "exp", "run"] and "-n" in words:
            named.setdefault(page, set()).add(words[words.index("-n") + 1])
        try:
            check(words, stage_names, named.get(page, set()))
        except (SystemExit, Exception) as e:
            failed.append(f"{page}: `{shlex.join(words)}`: {e!r}")
    assert not failed, "\n".join(failed)


def test_every_params_snippet_validates_on_the_shipped_params():
    snippets = [(page, yaml.safe_load(block)) for page, block in blocks("yaml")]
    params = [(page, s) for page, s in snippets if isinstance(s, dict) and "slug" not in s]
    assert len(params) >= 2
    for page, snippet in params:
        parse_params(_merge(copy.deepcopy(_shipped()), snippet), f"{page}'s snippet")


def test_every_competition_record_snippet_loads(tmp_path):
    records = [block for page, block in blocks("yaml") if "slug:" in block]
    assert records
    for i, block in enumerate(records):
        path = tmp_path / f"example{i}.yaml"
        path.write_text(block)
        load_record(path)
