"""Any image-classification competition from a registry entry: new layouts, submissions and metrics run end to end
through every stage with no new code, and Digit Recognizer runs from its demo archive."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import f1_score, roc_auc_score

from conftest import _STAGE
from pipeline.stages import curves, download, prepare, report
from pipeline.stages.inprocess import run_competition
from pipeline.core.competitions import COMPETITIONS, Competition
from pipeline.core.config import parse_params, with_changes
from pipeline.core.errors import ArchiveError, ConfigError
from pipeline.core.io import read_json
from pipeline.core.paths import Paths
from pipeline.scoring.submission import read_sample, validate_submission

# A fourth layout: class folders of PNGs, one label per test image in the submission, scored by micro-F1.
SHAPES = Competition(
    name="shapes", slug="shape-sorter", title="Shape Sorter", classes=("circle", "square", "triangle"),
    class_descriptions=("a disc", "a square", "a triangle"),
    train_pattern=r"train/(?P<label>[a-z]+)/(?P<id>[^/]+\.png)", test_pattern=r"test/(?P<id>[^/]+)\.png",
    id_column="id", submission_columns=("shape",), submission="label", metric="f1_micro",
)
# A fifth: greyscale PNGs and JPEGs in nested zips, labels and groups (patients) in a CSV beside them, a binary
# probability submission scored by ROC AUC.
CELLS = Competition(
    name="cells", slug="cell-screen", title="Cell Screen", classes=("healthy", "sick"),
    class_descriptions=("healthy", "sick"), train_pattern=r"train/(?P<id>[^/]+)\.(?:png|jpg)",
    test_pattern=r"test/(?P<id>[^/]+)\.(?:png|jpg)", id_column="image", submission_columns=("sick",),
    submission="binary", metric="roc_auc", labels_file="train_labels.csv", labels_id="image",
    labels_label="diagnosis", group_column="patient", group_noun="patient", channels=1,
)


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _shape(rng, label: str) -> np.ndarray:
    """A coloured disc, square or triangle on noise, somewhere in a 40x48 frame."""
    from PIL import ImageDraw

    img = Image.fromarray(rng.integers(0, 60, (40, 48, 3), dtype=np.uint8))
    x, y, s = int(rng.integers(2, 20)), int(rng.integers(2, 12)), int(rng.integers(16, 26))
    fill = tuple(int(v) for v in rng.integers(120, 256, 3))
    draw = ImageDraw.Draw(img)
    if label == "circle":
        draw.ellipse([x, y, x + s, y + s], fill=fill)
    elif label == "square":
        draw.rectangle([x, y, x + s, y + s], fill=fill)
    else:
        draw.polygon([(x, y + s), (x + s, y + s), (x + s // 2, y)], fill=fill)
    return np.asarray(img)


def shapes_archive(path, rng, per_class=6, test=7):
    files = {}
    for label in SHAPES.classes:
        for i in range(per_class):
            files[f"train/{label}/{label[:2]}{i}.png"] = _encode(_shape(rng, label), "PNG")
    ids = [f"t{i:02d}" for i in range(test)]
    for i in ids:
        files[f"test/{i}.png"] = _encode(_shape(rng, str(rng.choice(SHAPES.classes))), "PNG")
    files["sample_submission.csv"] = pd.DataFrame({"id": ids, "shape": "circle"}).to_csv(index=False).encode()
    return _zip(path, files)


def cells_archive(path, rng, per_class=9, test=6, column="sick", value=0.5):
    train, rows = {}, []
    for n in range(2 * per_class):
        label = CELLS.classes[n % 2]
        level = 170 if label == "sick" else 70
        arr = np.clip(rng.normal(level, 25, (36, 36)), 0, 255).astype(np.uint8)
        fmt, suffix = ("PNG", "png") if n % 3 else ("JPEG", "jpg")
        train[f"train/c{n:03d}.{suffix}"] = _encode(arr, fmt)
        rows.append((f"c{n:03d}", label, f"p{n % 6}"))
    test_files = {f"test/x{i}.png": _encode(rng.integers(0, 255, (36, 36), dtype=np.uint8), "PNG")
                  for i in range(test)}
    labels = pd.DataFrame(rows, columns=["image", "diagnosis", "patient"])
    sample = pd.DataFrame({"image": [f"x{i}" for i in range(test)], column: value})
    return _zip(path, {"train.zip": _zip(None, train), "test.zip": _zip(None, test_files),
                       "train_labels.csv": labels.to_csv(index=False).encode(),
                       "sample_submission.csv": sample.to_csv(index=False).encode()})


def _zip(path, files: dict[str, bytes]):
    buf = io.BytesIO() if path is None else path
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue() if path is None else path


def tiny_section(source: str, size, **changes) -> dict:
    section = copy.deepcopy(_STAGE)
    section["data"]["source"] = source
    section["prepare"] = {"image_size": list(size)}
    section["speed"] = {**section["speed"], "prepare_workers": 1}
    section["features"]["aug_copies"] = 0
    section["models"] = {"main": {}}
    return with_changes(section, changes)


def run_all(tmp_path, name: str, section: dict) -> tuple[dict, Paths]:
    """Every stage of competition `name` with params `section`, in a fresh folder; its result and paths."""
    params = _params(name, section)
    root = tmp_path / "root"
    root.mkdir()
    return run_competition(params, name, root)["ensemble"], Paths(name, root)


def _params(name: str, section: dict):
    return parse_params({"competitions": [name], "folds": [0, 1, 2], "seed": 0, "device": "cpu", "models": ["main"],
                         name: section})


@pytest.fixture
def registered(monkeypatch):
    """Add competition records to the registry for one test, as an entry in pipeline/competitions.py would."""
    def add(comp: Competition) -> Competition:
        comp.check()
        monkeypatch.setitem(COMPETITIONS, comp.name, comp)
        return comp
    return add


def test_a_fourth_layout_runs_end_to_end_from_its_registry_entry(tmp_path, registered):
    comp = registered(SHAPES)
    archive = shapes_archive(tmp_path / "shape-sorter.zip", np.random.default_rng(0))
    result, paths = run_all(tmp_path, "shapes", tiny_section(str(archive), (32, 40)))
    sub = pd.read_csv(paths.submission, dtype=str)
    validate_submission(comp, sub, read_sample(comp, paths.raw))
    assert list(sub.columns) == ["id", "shape"] and set(sub["shape"]) <= set(comp.classes)
    cache = np.load(paths.cache / "train.npy")
    assert cache.shape == (18, 32, 40, 3), "PNGs decoded in colour"
    metrics, cv = read_json(paths.metrics), read_json(paths.cv)
    assert cv["metric"] == "f1_micro" and cv["choice"]["method"] == "none", "no calibration for F1"
    oof = pd.read_csv(paths.oof, dtype=str)
    probs = oof[list(comp.classes)].to_numpy(float)
    truth = pd.Index(comp.classes).get_indexer(oof["label"])
    assert metrics["f1_micro"] == pytest.approx(f1_score(truth, probs.argmax(1), average="micro"), abs=1e-6)
    assert set(result["folds"]["0"]) >= {"f1_micro", "logloss", "accuracy"}


def test_labels_in_a_csv_greyscale_nested_zips_and_a_binary_roc_auc_submission(tmp_path, registered):
    comp = registered(CELLS)
    archive = cells_archive(tmp_path / "cell-screen.zip", np.random.default_rng(1))
    _, paths = run_all(tmp_path, "cells", tiny_section(str(archive), (32, 32)))
    assert np.load(paths.cache / "train.npy").shape == (18, 32, 32, 1), "greyscale: one channel"
    folds_csv = pd.read_csv(paths.folds, dtype=str)
    assert folds_csv.groupby("group")["fold"].nunique().max() == 1, "a patient's images stay in one fold"
    sub = pd.read_csv(paths.submission, dtype={"image": str})
    validate_submission(comp, sub, read_sample(comp, paths.raw))
    assert list(sub.columns) == ["image", "sick"] and sub["sick"].between(0, 1).all()
    metrics = read_json(paths.metrics)
    oof = pd.read_csv(paths.oof, dtype=str)
    auc = roc_auc_score(oof["label"] == "sick", oof["sick"].astype(float))
    assert read_json(paths.cv)["metric"] == "roc_auc" and metrics["roc_auc"] == pytest.approx(auc, abs=1e-6)
    train = pd.read_csv(paths.raw / "train.csv", dtype=str).set_index("id")
    assert train.loc["c001", "label"] == "sick" and train.loc["c001", "group"] == "p1", "labels from the CSV"


def test_a_binary_label_submission_is_decided_by_each_folds_threshold(tmp_path, registered):
    comp = registered(dataclasses.replace(CELLS, name="cells_label", submission="label", metric="f1_macro",
                                          submission_columns=("diagnosis",)))
    archive = cells_archive(tmp_path / "cell-screen.zip", np.random.default_rng(2), column="diagnosis",
                            value="healthy")
    result, paths = run_all(tmp_path, "cells_label", tiny_section(str(archive), (32, 32)))
    sub = pd.read_csv(paths.submission, dtype=str)
    validate_submission(comp, sub, read_sample(comp, paths.raw))
    assert set(sub["diagnosis"]) <= {"healthy", "sick"}
    assert all(0 <= f["choice"].count("@") <= 1 for f in result["folds"].values())
    assert result["threshold"] is not None and 0 <= result["threshold"] <= 1
    # each fold's rows are decided by that fold's own threshold, and scored as decided
    oof = pd.read_csv(paths.oof, dtype=str)
    for k, fold in result["folds"].items():
        rows = oof[oof["fold"] == k]
        cut = fold["threshold"]
        decided = np.where(rows["sick"].astype(float) >= cut, "sick", "healthy")
        assert (rows["predicted"].to_numpy() == decided).all()
        assert fold["f1_macro"] == pytest.approx(f1_score(rows["label"], decided, average="macro"), abs=1e-6)


def test_digit_recognizer_runs_offline_from_its_demo_with_the_from_scratch_cnn(tmp_path):
    section = tiny_section("demo", (28, 28), **{
        "data.demo": {"train_per_class": 4, "test": 6}, "features.backbone": "vgg_lesson",
        "head.epochs": 2, "finetune.epochs": 1, "finetune.backbone_lr_ratio": 1.0})
    result, paths = run_all(tmp_path, "digits", section)
    assert np.load(paths.cache / "train.npy").shape == (40, 28, 28, 1), "the CSV's rows, given a channel"
    sub = pd.read_csv(paths.submission, dtype=str)
    assert list(sub.columns) == ["ImageId", "Label"] and list(sub["ImageId"]) == [str(i) for i in range(1, 7)]
    assert set(sub["Label"]) <= set("0123456789")
    assert result["metric"] == "accuracy" and 0 <= result["demo_test"]["accuracy"] <= 1
    assert read_json(paths.metrics)["demo_test"] == result["demo_test"]["accuracy"], "the metric's, at the top"
    assert "logloss" not in result["demo_test"], "a file of labels has no log loss"
    params = _params("digits", section)
    with contextlib.chdir(paths.root):  # the pictures too: greyscale images, labels that look like numbers
        curves.run(params, "digits", paths.root)
        page = report.run(params, "digits", paths.root)
    assert "scored by accuracy (higher is better)" in page.read_text()


def test_pixels_in_the_csv_become_the_cached_image_row_for_row(tmp_path):
    """Digit Recognizer's pixel columns are the image, row-major: pixel k is row k // 28, column k % 28."""
    params = _params("digits", tiny_section("demo", (28, 28), **{"data.demo": {"train_per_class": 2, "test": 3}}))
    root = tmp_path / "root"
    root.mkdir()
    download.run(params, "digits", root)
    prepare.run(params, "digits", root)
    paths = Paths("digits", root)
    kaggle = pd.read_csv(paths.raw / "files" / "train.csv")
    index = pd.read_csv(paths.cache / "train.csv", dtype=str)
    cache = np.load(paths.cache / "train.npy")
    for row, image_id in enumerate(index["id"]):
        line = kaggle.iloc[int(image_id) - 1]
        np.testing.assert_array_equal(cache[row, :, :, 0], line.filter(like="pixel").to_numpy().reshape(28, 28))
        assert index["label"][row] == str(line["label"])


# Pixels in a CSV with ids of their own: Kannada MNIST's test.csv starts with an `id` column, from 0.
KANNADA = Competition(
    name="kannada", slug="Kannada-MNIST", title="Kannada MNIST", classes=tuple("0123456789"),
    class_descriptions=tuple("0123456789"), train_pattern="train.csv", test_pattern="test.csv", id_column="id",
    submission_columns=("label",), submission="label", metric="accuracy", hflip_keeps_label=False, channels=1,
    pixels=(28, 28), pixels_id="id",
)


def test_pixel_csvs_whose_test_rows_carry_their_own_ids(tmp_path, registered):
    comp = registered(KANNADA)
    rng = np.random.default_rng(4)
    pixels = [f"pixel{k}" for k in range(784)]
    train = pd.DataFrame(rng.integers(0, 256, (30, 784)), columns=pixels)
    train.insert(0, "label", np.arange(30) % 10)
    test = pd.DataFrame(rng.integers(0, 256, (5, 784)), columns=pixels)
    test.insert(0, "id", [3, 0, 4, 1, 2])  # not in the sample's order
    sample = pd.DataFrame({"id": range(5), "label": 0})
    archive = _zip(tmp_path / "Kannada-MNIST.zip", {name: frame.to_csv(index=False).encode() for name, frame in
                                                    (("train.csv", train), ("test.csv", test),
                                                     ("sample_submission.csv", sample))})
    result, paths = run_all(tmp_path, "kannada", tiny_section(str(archive), (28, 28)))
    sub = pd.read_csv(paths.submission, dtype=str)
    validate_submission(comp, sub, read_sample(comp, paths.raw))
    cache, index = np.load(paths.cache / "test.npy"), pd.read_csv(paths.cache / "test.csv", dtype=str)
    assert list(index["id"]) == ["0", "1", "2", "3", "4"], "in the sample's order"
    for row, image_id in enumerate(index["id"]):
        line = test[test["id"] == int(image_id)][pixels].to_numpy().reshape(28, 28)
        np.testing.assert_array_equal(cache[row, :, :, 0], line)
    assert result["metric"] == "accuracy"


def test_a_registry_entry_with_inconsistent_facts_is_refused(registered):
    with pytest.raises(ConfigError, match="a 'label' submission has 1 column"):
        registered(Competition(name="bad", slug="bad", title="Bad", classes=("a", "b"), class_descriptions=("a", "b"),
                               train_pattern=r"train/(?P<label>\w)/(?P<id>.+)", test_pattern=r"test/(?P<id>.+)",
                               id_column="id", submission_columns=("a", "b"), submission="label",
                               metric="accuracy"))
    with pytest.raises(ConfigError, match="needs a \\(\\?P<label>"):
        registered(Competition(name="bad", slug="bad", title="Bad", classes=("a", "b"), class_descriptions=("a", "b"),
                               train_pattern=r"train/(?P<id>.+)", test_pattern=r"test/(?P<id>.+)", id_column="id",
                               submission_columns=("b",), submission="binary"))


def test_an_archive_whose_labels_are_not_the_competitions_classes_is_refused(tmp_path, registered):
    registered(SHAPES)
    files = {"train/hexagon/h1.png": _encode(np.zeros((8, 8, 3), np.uint8), "PNG"),
             "test/t1.png": _encode(np.zeros((8, 8, 3), np.uint8), "PNG"),
             "sample_submission.csv": b"id,shape\nt1,circle\n"}
    params = _params("shapes", tiny_section(str(_zip(tmp_path / "s.zip", files)), (32, 32)))
    with pytest.raises(ArchiveError, match="hexagon"):
        download.run(params, "shapes", tmp_path)
