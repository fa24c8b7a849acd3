"""What git says about this clone: the commit (and DVC experiment) a submission was made from, and files as a
commit holds them (`pipeline compare` reads each run's metrics and params from the commit that made them)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from pipeline.core.errors import OutputError


def git(root: Path, *args: str) -> str | None:
    """git's output, stripped; None when git fails, is missing or hangs (30 s)."""
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(root: Path) -> tuple[str, str]:
    """The git commit (marked '-dirty' when params or the lock file differ from it) and DVC experiment names."""
    commit = git(root, "rev-parse", "HEAD") or ""
    if commit and git(root, "status", "--porcelain", "--", "params.yaml", "dvc.lock", "dvc.yaml", "pipeline"):
        commit += "-dirty"
    refs = git(root, "for-each-ref", "--points-at", "HEAD", "--format=%(refname)", "refs/exps") or ""
    # an experiment is refs/exps/<2 hex>/<38 hex>/<name>; DVC's own refs (refs/exps/exec/ORIG_HEAD, EXEC_HEAD,
    # refs/exps/celery/...) point at HEAD too while it runs one, and are no experiment's name
    names = [parts[-1] for ref in refs.split() for parts in [ref.split("/")] if len(parts) == 5 and len(parts[2]) == 2]
    return commit, " ".join(names)


def read_json_at(root: Path, commit: str | None, path: Path, rev: str) -> dict:
    """A JSON file (a run's metrics) as commit `commit` holds it, or as the workspace does when `commit` is None;
    `rev` is the name the user gave it, for the error."""
    rel = path.relative_to(root).as_posix()
    if commit is None:
        if not path.is_file():
            raise OutputError(f"{rel} does not exist in the workspace; run `dvc repro` first.")
        return json.loads(path.read_text())
    shown = git(root, "show", f"{commit}:{rel}")
    if shown is None:
        raise OutputError(f"{rel} is not in {rev!r} ({commit[:12]}): that run's metrics were not committed, or it "
                          "predates per-fold metrics. Commit a run's dvc.lock and metrics/ (DVC experiments do this "
                          "themselves), or compare against another revision.")
    return json.loads(shown)


def _flat(node, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def params_at(root: Path, commit: str | None) -> dict[str, object]:
    """params.yaml as commit `commit` holds it (the workspace's when None), as dotted keys; {} where it has none."""
    if commit is None:
        path = root / "params.yaml"
        text = path.read_text() if path.is_file() else None
    else:
        text = git(root, "show", f"{commit}:params.yaml")
    return _flat(yaml.safe_load(text) or {}) if text is not None else {}


def changed_params(before: dict, after: dict) -> list[str]:
    """`key: old -> new` for every dotted key whose value differs (added or removed keys included)."""
    missing = "(none)"
    return [f"{key}: {before.get(key, missing)} -> {after.get(key, missing)}"
            for key in sorted(set(before) | set(after)) if before.get(key, missing) != after.get(key, missing)]
