"""Atomic writes: a stage's outputs appear whole or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
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


def file_md5(path: str | Path) -> str:
    """A file's md5: cv.json's `inputs_md5` records each fold's oof.csv by it, and the summary compares."""
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


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


class NpyRows:
    """A new `.npy` file of `shape` written a block of rows at a time with plain writes (by any process: each
    opens it by path). Not a memory map: a map's written pages count towards the writing process's memory until
    the kernel writes them back, so memory would grow with the number of rows."""

    def __init__(self, path: Path, dtype, shape: tuple[int, ...], row_shape: tuple[int, ...] | None = None):
        self.path, self.dtype, self.shape = Path(path), np.dtype(dtype), tuple(shape)
        arr = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=self.shape)  # zeros, sparse
        self.offset = arr.offset
        del arr
        # a row: shape[1:], or `row_shape` to write a (copies, N, ...) file as copies x N rows
        self.row_bytes = int(np.prod(row_shape or self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def write(self, start: int, block: np.ndarray) -> None:
        """Rows `start`, `start + 1`, ... become `block`."""
        data = memoryview(np.ascontiguousarray(block, dtype=self.dtype)).cast("B")
        at = self.offset + start * self.row_bytes
        fd = os.open(self.path, os.O_WRONLY)
        try:
            while data:
                written = os.pwrite(fd, data, at)
                data, at = data[written:], at + written
        finally:
            os.close(fd)


class NpyReader:
    """Rows of an `.npy` file read with plain reads, one row per index: what DataLoader workers use on the image
    cache. A memory map would do, but every page it touches counts towards the reading process's memory while
    mapped, so a worker's memory would grow to the size of the cache it has read."""

    def __init__(self, path: Path):
        self.path = Path(path)
        arr = np.load(self.path, mmap_mode="r")
        self.dtype, self.shape, self.offset = arr.dtype, arr.shape, arr.offset
        del arr
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, row: int) -> np.ndarray:
        if self._pid != os.getpid():  # a forked worker opens its own
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        out = np.empty(self.shape[1:], self.dtype)
        if os.preadv(self._fd, [out], self.offset + int(row) * self.row_bytes) != self.row_bytes:
            raise OSError(f"{self.path}: row {row} is cut short; re-run the stage that wrote it")
        return out

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError, TypeError):  # TypeError: at interpreter exit, `os` may be gone
                os.close(self._fd)
