"""Tiny, real fixtures: demo archives in the exact Kaggle layouts, tiny timm models, 32 px images."""

from __future__ import annotations

import copy
import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

# pytest-xdist runs a worker per core: each worker's torch (and every stage it starts, through the environment)
# takes its share of the cores. OpenMP threads beyond the cores spin-wait on each other: with two workers of two
# threads each on 2 cores, test_lr_find took 31 s instead of 1.4 s. Set before torch is imported.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.core.config import parse_params, with_changes
from pipeline.stages.inprocess import run_competition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # photos.py: real-photo archives, shared with the benchmarks

_STAGE = {
    "data": {"source": "demo", "demo": {"train_per_class": 6, "test": 5, "drivers": 3}},
    "prepare": {},
    "features": {"backbone": "test_resnet", "pretrained": False, "aug_copies": 2},
    "head": {"hidden": 16, "epochs": 3, "batch_size": 8, "lr": 0.01},
    "finetune": {"epochs": 2, "batch_size": 8, "lr": 0.01},
    "speed": {"features_batch_size": 16, "features_workers": 0},
}

# A second model: the backbone cut at feature level 2 (a conv block then trains on its maps), its own seed.
_CUT = {"features": {"cut": 2, "aug_copies": 0}, "head": {"conv_channels": 8}, "finetune": {"epochs": 1}, "seed": 1}

TINY = {
    "competitions": ["dogscats", "statefarm"],
    "folds": [0, 1, 2],
    "seed": 0,
    "device": "cpu",
    "models": ["main", "cut"],
    "dogscats": {**copy.deepcopy(_STAGE), "prepare": {"image_size": [32, 32]},
                 "features": {**_STAGE["features"], "augment": {"hflip": 0.5}},
                 "speed": {**_STAGE["speed"], "features_workers": 2},
                 "finetune": {**_STAGE["finetune"], "augment": {"hflip": 0.5}, "tta": ["identity", "hflip"]},
                 "models": {"main": {}, "cut": copy.deepcopy(_CUT)}},
    "statefarm": {**copy.deepcopy(_STAGE), "prepare": {"image_size": [24, 32]},
                  "finetune": {**_STAGE["finetune"], "tta": ["identity", "zoom"]},
                  "models": {"main": {}, "cut": copy.deepcopy(_CUT)}},
}


def tiny_raw(**changes) -> dict:
    """The tiny params as a plain mapping; `changes` maps dotted keys to new values."""
    return with_changes(copy.deepcopy(TINY), changes)


def tiny_params(**changes):
    return parse_params(tiny_raw(**changes), "tiny params")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder (dvclive looks for a DVC repo in the working directory)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory):
    """Every stage's run(), both competitions, all folds, once per test session on tiny data."""
    root = tmp_path_factory.mktemp("pipeline")
    params = tiny_params()
    results = {}
    for comp in params.competitions:
        done = run_competition(params, comp, root)
        results.update({(comp, model, stage, k): v for key, v in done.items()
                        if isinstance(key, tuple) and len(key) == 3 for stage, model, k in [key]})
        results[comp, "ensemble"] = done["ensemble"]
    return root, params, results


def jpeg_bytes(size=(40, 30), colour=(120, 60, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), colour, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def read_zip(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def make_project(root: Path, params) -> dict[str, str]:
    """A git-committed copy of this repository's pipeline in `root` with `params`; returns the environment
    (this interpreter's bin first on PATH) that `dvc repro` and the console script need."""
    for name in ("pipeline", ".dvc"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               DVC_NO_ANALYTICS="1", PYTHONPATH=str(root))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "tiny project"]):
        subprocess.run(git + args, cwd=root, env=env, check=True, capture_output=True)
    return env


def sh(args, cwd, env, ok=True) -> subprocess.CompletedProcess:
    """Run a command; with `ok`, fail the test with its output unless it succeeds."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if ok:
        assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result
