"""A finetuning checkpoint resumes only the run that saved it: its fingerprint covers every code file dvc.yaml lists
for the finetune stage (read from dvc.yaml, in a copy of the project), and a file it cannot read or one of another
run makes the run start over with one line saying why."""

import shutil

import pytest
import torch
import yaml

from conftest import REPO
from pipeline.data.datasets import SeededRows
from pipeline.training.checkpoint import Checkpoint, tracked_code
from pipeline.training.devices import Workers, grad_scaler
from pipeline.training.engine import one_cycle

COMP = "statefarm"
SAME_RUN = {"finetune": {"lr": 0.001}, "rows": [["a", "b"], ["c"]], "torch": torch.__version__}


@pytest.fixture
def project(tmp_path):
    """A copy of the project's code and dvc.yaml: the files a test changes are never the real ones."""
    shutil.copytree(REPO / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    return tmp_path


def _state() -> dict:
    network = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    return {"network": network, "optimizer": optimizer, "scheduler": one_cycle(optimizer, 3, 2, 0.3),
            "scaler": grad_scaler(torch.device("cpu"), False), "rows": SeededRows(5, 0, shuffle=True),
            "device": torch.device("cpu")}


def _checkpoint(root, source, same_run=SAME_RUN) -> Checkpoint:
    return Checkpoint(root / "models" / "fold0", same_run, Workers(0, 1, torch.device("cpu")),
                      tracked_code("finetune", COMP, source))


def _saved(root, source) -> Checkpoint:
    checkpoint = _checkpoint(root, source)
    checkpoint.save(_state(), 1, [{"epoch": 0}, {"epoch": 1}])
    assert checkpoint.path.is_file()
    return checkpoint


def test_the_fingerprint_covers_exactly_dvc_yamls_code_deps_of_finetune(project):
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["finetune"]["deps"]
    code = {dep.replace("${item.comp}", COMP) for dep in deps if dep.startswith("pipeline/")}
    tracked = tracked_code("finetune", COMP, project)
    assert set(tracked) == code and "pipeline/training/engine.py" in code and f"pipeline/competitions/{COMP}.yaml" in code
    assert all(path.is_file() and path.is_relative_to(project) for path in tracked.values())


@pytest.mark.parametrize("changed", ["pipeline/training/engine.py", f"pipeline/competitions/{COMP}.yaml"])
def test_a_changed_dependency_makes_the_run_start_over_and_say_which(project, tmp_path, capsys, changed):
    _saved(tmp_path, project)
    with open(project / changed, "a") as f:
        f.write("\n# changed\n")
    assert _checkpoint(tmp_path, project).resume(_state()) == []
    out = capsys.readouterr().out
    assert "starts over" in out and f"changed since: {changed}" in out and "resuming" not in out


def test_a_file_the_stage_does_not_depend_on_changes_nothing(project, tmp_path, capsys):
    _saved(tmp_path, project)
    with open(project / "pipeline" / "commands" / "compare.py", "a") as f:  # no dependency of finetune
        f.write("\n# changed\n")
    assert _checkpoint(tmp_path, project).resume(_state()) == [{"epoch": 0}, {"epoch": 1}]
    assert "resuming after epoch 1" in capsys.readouterr().out


def test_changed_params_are_named(project, tmp_path, capsys):
    _saved(tmp_path, project)
    other = {**SAME_RUN, "finetune": {"lr": 0.002}}
    assert _checkpoint(tmp_path, project, other).resume(_state()) == []
    assert "changed since: finetune)" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["cut short", "empty", "not a checkpoint", "a foreign pickle"])
def test_an_unreadable_checkpoint_makes_the_run_start_over_and_say_so(project, tmp_path, capsys, damage):
    checkpoint = _saved(tmp_path, project)
    data = checkpoint.path.read_bytes()
    checkpoint.path.write_bytes({"cut short": data[: len(data) // 2], "empty": b"",
                                 "not a checkpoint": b"id,label\n1,cat\n"}.get(damage, b""))
    if damage == "a foreign pickle":
        torch.save({"fingerprint": {}, "model": torch.nn.Linear(2, 2)}, checkpoint.path)  # a whole module: refused
    assert _checkpoint(tmp_path, project).resume(_state()) == []
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "starts over" in out and "cannot be read" in out, out


def test_a_checkpoint_of_an_older_version_starts_over(project, tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path, project)
    checkpoint.path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fingerprint": "0" * 64, "history": []}, checkpoint.path)  # the old single-digest fingerprint
    assert checkpoint.resume(_state()) == []
    assert "not a checkpoint of this version" in capsys.readouterr().out


def test_an_error_that_is_no_unreadable_file_is_not_swallowed(project, tmp_path, monkeypatch):
    checkpoint = _saved(tmp_path, project)

    def broken(*args, **kwargs):
        raise TypeError("a bug in the loading code")

    monkeypatch.setattr(torch, "load", broken)
    with pytest.raises(TypeError, match="a bug"):
        checkpoint.resume(_state())


def test_without_a_dvc_yaml_every_package_file_counts(project):
    (project / "dvc.yaml").unlink()
    tracked = tracked_code("finetune", COMP, project)
    assert "pipeline/training/engine.py" in tracked and "pipeline/commands/compare.py" in tracked
    assert "pipeline/competitions/dogscats.yaml" in tracked
