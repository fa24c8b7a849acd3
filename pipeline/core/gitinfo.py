"""What git says about this clone: the commit (and DVC experiment) a submission was made from, and files as a
commit holds them (`pipeline compare` reads each run's metrics and params from the commit that made them)."""

from __future__ import annotations

import subprocess
from pathlib import Path


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
    return commit, " ".join(ref.rsplit("/", 1)[-1] for ref in refs.split())
