"""How a killed finetuning run resumes: the state after each epoch, kept beside the fold's folder (where a fold's
finetuning starts, `load_start`, is `pipeline.training.inference`'s)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import torch
import yaml

from pipeline.data.datasets import SeededRows, ShardedRows
from pipeline.training.devices import Workers


_STATEFUL = ("network", "optimizer", "scheduler", "scaler", "ema")  # the state_dicts a checkpoint holds (ema: if on)

SOURCE = Path(__file__).resolve().parents[2]
"""The folder holding the running `pipeline` package: in a checkout, the project with its dvc.yaml."""


def tracked_code(stage: str, comp_name: str, source: Path = SOURCE) -> dict[str, Path]:
    """The code files DVC tracks for `stage` of `comp_name`, read from dvc.yaml's deps of the stage at run time so
    the two cannot differ: its `pipeline/...` entries (`${item.comp}` resolved: the competition's record), as
    files of `source`, the checkout the running code comes from; by their dvc.yaml name. Without a dvc.yaml there
    (the package installed as a wheel) every file of the package: more than the stage needs, never less."""
    dvc_yaml = source / "dvc.yaml"
    if not dvc_yaml.is_file():
        package = source / "pipeline"
        return {p.relative_to(source).as_posix(): p for p in sorted(package.rglob("*"))
                if p.suffix in (".py", ".yaml")}
    deps = yaml.safe_load(dvc_yaml.read_text())["stages"][stage]["deps"]
    names = [dep.replace("${item.comp}", comp_name) for dep in deps if dep.startswith("pipeline/")]
    # a competition registered in code (`competitions.register`) has no record file: its facts are in the params
    return {name: source / name for name in names if (source / name).is_file()}


# What torch.load raises for a file cut short (OSError, EOFError, RuntimeError from its zip reader) or one that is
# not a checkpoint or is damaged (UnpicklingError from the weights-only unpickler; ValueError, LookupError from a
# garbled pickle stream). Anything else is a bug, and shows.
_UNREADABLE = (OSError, EOFError, RuntimeError, pickle.UnpicklingError, ValueError, LookupError)


class Checkpoint:
    """The state after each finetuning epoch, in `.fold<k>.checkpoint.pt` beside the fold's folder, so a killed run
    resumes from its last finished epoch: the network, optimizer, schedule, weights' EMA, the sampler's epoch and every
    process's random state, which make the resumed run's result that of an uninterrupted one. It is used only
    when its fingerprint matches: every entry of `same_run` (params, device type, number of processes, torch,
    the fold's rows) and the content of every file of `inputs` (name -> path: the start weights and the code DVC
    tracks for the stage, `tracked_code`); otherwise the run starts over and says what differs. It is removed once
    the fold's outputs are written. Rank 0 writes it; every process reads it, and all resume only if each found
    it."""

    def __init__(self, out: Path, same_run: dict, workers: Workers, inputs: dict[str, Path]):
        self.path = out.with_name(f".{out.name}.checkpoint.pt")
        self.workers = workers
        self.fingerprint = {key: hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
                            for key, value in same_run.items()}
        for name, path in inputs.items():
            digest = hashlib.sha256()
            with open(path, "rb") as f:  # in pieces: a large backbone's weights need not be in memory whole
                while piece := f.read(1 << 24):
                    digest.update(piece)
            self.fingerprint[name] = digest.hexdigest()

    def save(self, state: dict, epoch: int, history: list[dict]) -> None:
        if epoch == 0:
            return
        rng = _everyone((torch.get_rng_state(), torch.cuda.get_rng_state() if state["device"].type == "cuda"
                         else None), self.workers)  # every process's, by rank
        if not self.workers.main:
            return
        saved = {"fingerprint": self.fingerprint, "history": history, "rows_epoch": _rows(state["rows"]).epoch,
                 "rng": rng, **{k: state[k].state_dict() for k in _STATEFUL if state.get(k) is not None}}
        tmp = self.path.with_name(self.path.name + ".part")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        torch.save(saved, tmp)
        os.replace(tmp, self.path)

    def resume(self, state: dict) -> list[dict]:
        """Load the checkpoint into `state` when it belongs to this run, as every process finds it (a node whose
        copy is missing or stale makes all start again); the epochs it holds (or none)."""
        saved = self._load()
        if not all(_everyone(saved is not None, self.workers)):
            return []
        for k in _STATEFUL:
            if state.get(k) is not None:
                state[k].load_state_dict(saved[k])
        _rows(state["rows"]).epoch = saved["rows_epoch"]
        cpu_rng, cuda_rng = saved["rng"][self.workers.rank]
        torch.set_rng_state(cpu_rng.cpu())
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng.cpu(), state["device"])
        if self.workers.main:
            print(f"resuming after epoch {saved['history'][-1]['epoch']} from {self.path}")
        return saved["history"]

    def _load(self) -> dict | None:
        """The saved state when it belongs to this run; otherwise None, and one line (rank 0's) says why."""
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)  # tensors, numbers, lists
        except _UNREADABLE as e:
            why = str(e).strip().split("\n", 1)[0][:200]
            return self._start_over(f"{self.path} cannot be read ({type(e).__name__}: {why}): it was cut short "
                                    "or is not a checkpoint")
        found = saved.get("fingerprint") if isinstance(saved, dict) else None
        if not isinstance(found, dict):
            return self._start_over(f"{self.path} is not a checkpoint of this version of the pipeline")
        changed = sorted(k for k in self.fingerprint.keys() | found.keys() if found.get(k) != self.fingerprint.get(k))
        if changed:
            return self._start_over(f"{self.path} was saved by another run (changed since: {', '.join(changed)})")
        return saved

    def _start_over(self, why: str) -> None:
        if self.workers.main:
            print(f"finetuning starts over from epoch 0: {why}")
        return None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _everyone(value, workers: Workers) -> list:
    """`value` of every process, by rank (collective: every process calls it)."""
    if workers.world == 1:
        return [value]
    import torch.distributed as td

    values = [None] * workers.world
    td.all_gather_object(values, value)
    return values


def _rows(sampler) -> SeededRows:
    return sampler.rows if isinstance(sampler, ShardedRows) else sampler
