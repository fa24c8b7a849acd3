"""Atomic writes: a stage's outputs appear whole or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import psutil


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def remove_stale_tmp(path: Path) -> list[Path]:
    """Remove what killed runs left beside `path`: `.<name>.tmp<pid>` files or folders whose process is gone (a
    killed features or prepare run leaves one the size of its output). Returns what was removed."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp(\d+)")
    removed = []
    for other in path.parent.glob(f".{path.name}.tmp*"):
        found = pattern.fullmatch(other.name)
        if found and not psutil.pid_exists(int(found.group(1))):
            shutil.rmtree(other, ignore_errors=True) if other.is_dir() else other.unlink(missing_ok=True)
            removed.append(other)
    return removed


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def write_csv(path: str | Path, df, **kwargs) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    df.to_csv(tmp, index=False, **kwargs)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary sibling folder; on success it replaces `path`, on error it is removed. Temporary folders
    that killed runs left beside `path` are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    tmp = _tmp(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
