"""Code competitions: `pipeline notebook` writes a dataset and a kernel, and the kernel, run as Kaggle runs it (a
clean Python without this project, no network, only /kaggle/input), reproduces the pipeline's own submission, on
the visible test folder and on a larger hidden one swapped in, as Kaggle does at scoring.

Both sides are computed independently: the expected files come from the pipeline's stages run in-process (for the
swap, a second run whose archive holds the hidden test images: training is deterministic on a CPU), the notebook's
from the installed wheel and the dataset's files alone.
"""

from __future__ import annotations

import copy
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import _STAGE, _CUT
from kaggle_sandbox import available, kaggle_python, run_notebook
from pipeline.commands import notebook
from pipeline.core.competitions import get_competition
from pipeline.core.config import parse_params
from pipeline.core.errors import ImageError, PipelineError
from pipeline.core.paths import Paths
from pipeline.data.demo import write_demo_archive
from pipeline.data.demo_code import hidden_test
from pipeline.stages.inprocess import run_competition

CODE = ("cassava", "cactus")
HIDDEN = 24


def code_raw(source: dict | None = None) -> dict:
    """Tiny params for the two code competitions. Cactus weighs every member of two models (heads on pooled and
    on cut features, finetuned networks with a flip view): every path of the notebook."""
    stage = copy.deepcopy(_STAGE)
    raw = {"competitions": list(CODE), "folds": [0, 1, 2], "seed": 0, "device": "cpu", "models": ["main", "cut"],
           "cassava": {**copy.deepcopy(stage), "prepare": {"image_size": [24, 32]},
                       "data": {"source": "demo", "demo": {"train_per_class": 6, "test": 1}},
                       "models": {"main": {}, "cut": copy.deepcopy(_CUT)}},
           "cactus": {**copy.deepcopy(stage), "prepare": {"image_size": [32, 32]},
                      "data": {"source": "demo", "demo": {"train_per_class": 9, "test": 6}},
                      "finetune": {**stage["finetune"], "tta": ["identity", "hflip"]},
                      "ensemble": {"members": "both"},
                      "models": {"main": {}, "cut": copy.deepcopy(_CUT)}}}
    for comp, path in (source or {}).items():
        raw[comp]["data"]["source"] = str(path)
    return raw


def train(root: Path, raw: dict):
    params = parse_params(raw, "code params")
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
    for comp in CODE:
        run_competition(params, comp, root)
    return params


def demo_archive(params, comp_name: str, path: Path) -> dict[str, bytes]:
    """The demo archive the download stage made (the same bytes), as {member: bytes}."""
    comp = get_competition(comp_name)
    write_demo_archive(comp, params.comp(comp_name).data.demo, params.seed, path)
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def swapped(comp_name: str, files: dict[str, bytes], hidden: Path) -> dict[str, bytes]:
    """The competition's files with its test images and sample_submission.csv replaced by `hidden`'s."""
    comp = get_competition(comp_name)
    test_dir = comp.test_pattern.split("/")[0]
    kept = {n: d for n, d in files.items() if not n.startswith(f"{test_dir}/") and n not in (
        "test.zip", "sample_submission.csv")}
    return {**kept, **{p.relative_to(hidden).as_posix(): p.read_bytes() for p in hidden.rglob("*") if p.is_file()}}


def mount(kaggle: Path, comp_name: str, files: dict[str, bytes], dataset: Path) -> None:
    """/kaggle/input as Kaggle lays it out: the competition's files under its slug, the dataset under its slug."""
    comp = get_competition(comp_name)
    for name, data in files.items():
        (kaggle / "input" / comp.slug / name).parent.mkdir(parents=True, exist_ok=True)
        (kaggle / "input" / comp.slug / name).write_bytes(data)
    import shutil

    shutil.copytree(dataset, kaggle / "input" / json.loads((dataset / "dataset-metadata.json").read_text())["id"]
                    .split("/")[1])


def same_submission(comp_name: str, ours: Path, theirs: Path) -> None:
    comp = get_competition(comp_name)
    a, b = (pd.read_csv(p, dtype={comp.id_column: str}, keep_default_na=False) for p in (ours, theirs))
    assert list(a.columns) == list(b.columns) and list(a[comp.id_column]) == list(b[comp.id_column])
    column = comp.submission_columns[0]
    if comp.submission == "label":
        assert list(a[column].astype(str)) == list(b[column].astype(str))
    else:
        np.testing.assert_allclose(a[list(comp.submission_columns)].to_numpy(float),
                                   b[list(comp.submission_columns)].to_numpy(float), rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The pipeline on each code competition's demo archive, then again on an archive whose test set is a larger
    hidden one; each run's notebook folders."""
    base = tmp_path_factory.mktemp("notebook")
    params = train(base / "visible", code_raw())
    archives, sources = {}, {}
    for comp in CODE:
        archives[comp] = demo_archive(params, comp, base / f"{comp}-demo.zip")
        hidden_test(get_competition(comp), HIDDEN, 5, base / f"{comp}-hidden")
        files = swapped(comp, archives[comp], base / f"{comp}-hidden")
        sources[comp] = base / f"{comp}-swapped.zip"
        with zipfile.ZipFile(sources[comp], "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
    train(base / "hidden", code_raw(sources))
    made = {comp: notebook.run(comp, base / "nb" / comp, owner="testuser", root=base / "visible") for comp in CODE}
    return base, archives, made


@pytest.mark.parametrize("comp_name", CODE)
def test_notebook_reproduces_the_submission_offline_on_visible_and_hidden_tests(runs, comp_name, tmp_path):
    why = available()
    if why:
        pytest.skip(why)
    base, archives, made = runs
    python = kaggle_python(tmp_path / "kaggle-python")
    cases = {"visible": archives[comp_name], "hidden": swapped(comp_name, archives[comp_name], base / f"{comp_name}-hidden")}
    for case, files in cases.items():
        kaggle = tmp_path / case
        mount(kaggle, comp_name, files, made[comp_name]["dataset"])
        result = run_notebook(python, made[comp_name]["script"], kaggle)
        assert result.returncode == 0, f"{case}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert result.sockets == "", f"the notebook tried the network: {result.sockets}"
        same_submission(comp_name, Paths(comp_name, base / case).submission, kaggle / "working" / "submission.csv")
        rows = len(pd.read_csv(kaggle / "working" / "submission.csv"))
        assert rows == (HIDDEN if case == "hidden" else len(pd.read_csv(Paths(comp_name, base / "visible").submission)))
        assert "images/s" in result.stdout and "hidden test images would take" in result.stdout


def test_the_sandbox_has_neither_the_project_nor_the_network(tmp_path):
    why = available()
    if why:
        pytest.skip(why)
    python = kaggle_python(tmp_path / "py")
    probe = tmp_path / "probe.py"
    probe.write_text("import importlib.util, socket\nprint(importlib.util.find_spec('pipeline') is None)\n"
                     "try:\n    socket.create_connection(('1.1.1.1', 80), timeout=2)\nexcept OSError as e:\n"
                     "    print('refused', e)\n")
    result = run_notebook(python, probe, tmp_path / "kaggle")
    assert result.stdout.splitlines()[0] == "True", result.stdout + result.stderr
    assert "refused" in result.stdout and "'1.1.1.1', 80" in result.sockets  # caught even though swallowed


def test_dataset_and_kernel_metadata(runs):
    _, _, made = runs
    kernel = json.loads((made["cactus"]["kernel"] / "kernel-metadata.json").read_text())
    dataset = json.loads((made["cactus"]["dataset"] / "dataset-metadata.json").read_text())
    assert kernel["enable_internet"] is False and kernel["competition_sources"] == ["aerial-cactus-identification"]
    assert kernel["dataset_sources"] == [dataset["id"]] and kernel["id"].startswith("testuser/")
    assert kernel["title"] == kernel["id"].split("/")[1] and dataset["title"] == dataset["id"].split("/")[1]
    wheels = [p.name for p in (made["cactus"]["dataset"] / "wheels").glob("*.whl")]
    assert any(w.startswith("pipeline-") for w in wheels)
    bundle = made["cactus"]["dataset"] / "bundle"
    # members: both, two models: every head and finetuned network of every fold, and the backbones for the heads
    assert sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*.safetensors")) == sorted(
        [f"{m}/backbone.safetensors" for m in ("main", "cut")]
        + [f"{m}/{s}/fold{k}.safetensors" for m in ("main", "cut") for s in ("head", "finetune") for k in range(3)])


def test_refusals_are_one_line(runs, tmp_path):
    base, _, made = runs
    with pytest.raises(PipelineError, match="takes a CSV upload") as e:
        notebook.run("dogscats", tmp_path / "nb", owner="x", root=base / "visible")
    assert "\n" not in str(e.value)
    with pytest.raises(PipelineError, match="over Kaggle's") as e:
        notebook.run("cactus", tmp_path / "nb", owner="x", root=base / "visible", limit=1000)
    assert "\n" not in str(e.value) and not (tmp_path / "nb" / "dataset").exists()  # nothing half-written


def test_an_unreadable_test_image_stops_the_notebook_with_its_name(runs, tmp_path):
    from pipeline.kernel import predict

    base, archives, made = runs
    files = dict(archives["cassava"])
    name = next(n for n in files if n.startswith("test_images/"))
    files[name] = b"not a jpeg"
    mount(tmp_path / "k", "cassava", files, made["cassava"]["dataset"])
    with pytest.raises(ImageError, match=r"test_images/.*is not a readable image.*skip_unreadable") as e:
        predict.main(tmp_path / "k" / "input" / "cassava-pipeline-models" / "bundle",
                     tmp_path / "k" / "input" / "cassava-leaf-disease-classification", tmp_path / "s.csv")
    assert "\n" not in str(e.value)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    import tempfile

    from kaggle_fake import FakeKaggle, point_client_at

    with FakeKaggle() as server:
        server.archives[get_competition("cactus").slug] = b""  # a known competition; its files are not used here
        point_client_at(server, monkeypatch, tmp_path / "home")
        (tmp_path / "tmp").mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # the client's resumable-upload state
        yield server


def test_submit_publishes_pushes_waits_submits_and_records(runs, fake, capsys):
    from pipeline.commands import submit

    base, _, _ = runs
    root = base / "visible"
    for version in (1, 2):  # the second submission versions the dataset and pushes version 2
        row = submit.run("cactus", f"try {version}", wait=True, root=root, poll_seconds=0.01, force=True)
        assert row["notebook"] == f"testuser/cactus-pipeline-submission/{version}" and row["status"] == "COMPLETE"
    dataset = fake.datasets["testuser/cactus-pipeline-models"]
    assert len(dataset["versions"]) == 2 and "dataset-metadata.json" not in dataset["versions"][0]["files"]
    pushed = fake.kernels["testuser/cactus-pipeline-submission"]["versions"]
    assert [v["enableInternet"] for v in pushed] == [False, False]
    assert "pipeline.kernel.predict" in pushed[0]["text"]
    assert [(s["kernel"], s["version"], s["file_name"]) for s in fake.code_submissions] == [
        ("testuser/cactus-pipeline-submission", v, "submission.csv") for v in (1, 2)]
    scores = pd.read_csv(root / "submissions" / "scores.csv", dtype=str)
    assert list(scores["notebook"]) == [f"testuser/cactus-pipeline-submission/{v}" for v in (1, 2)]
    assert list(scores["public_score"]) == ["0.12345"] * 2 and list(scores["metric"]) == ["roc_auc"] * 2
    assert "testkey" not in capsys.readouterr().out  # credentials are never printed


def test_a_failed_notebook_run_shows_its_log_and_submits_nothing(runs, fake):
    from pipeline.commands import submit
    from pipeline.core.errors import KaggleError

    base, _, _ = runs
    fake.kernel_failure = "CUDA out of memory"
    with pytest.raises(KaggleError, match="ended ERROR; its log ends: .*Read the whole log") as e:
        submit.run("cactus", "try", root=base / "visible", poll_seconds=0.01, force=True)
    assert "\n" not in str(e.value) and fake.code_submissions == []
