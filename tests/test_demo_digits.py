"""The Digit Recognizer demo: Kaggle's exact CSV layout, MNIST-like images, a signal that is neither noise nor trivial."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pandas as pd

from pipeline.core.competitions import get_competition
from pipeline.core.sections import DemoParams
from pipeline.data.demo import write_demo_archive

PIXELS = [f"pixel{i}" for i in range(784)]


def digits_comp():
    return get_competition("digits")


def build(tmp_path, seed=0, per_class=5, test=7, answers=None):
    path = tmp_path / f"digits-{seed}-{per_class}-{test}.zip"
    return write_demo_archive(digits_comp(), DemoParams(train_per_class=per_class, test=test), seed, path,
                              answers=answers)


def members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def frames(path) -> dict[str, pd.DataFrame]:
    return {n: pd.read_csv(io.BytesIO(b)) for n, b in members(path).items()}


def test_archive_has_kaggles_exact_layout(tmp_path):
    archive = build(tmp_path, per_class=5, test=7, answers=tmp_path / "answers.csv")
    raw = members(archive)
    assert sorted(raw) == ["sample_submission.csv", "test.csv", "train.csv"]
    assert raw["train.csv"].decode().splitlines()[0] == ",".join(["label", *PIXELS])
    assert raw["test.csv"].decode().splitlines()[0] == ",".join(PIXELS)
    assert raw["sample_submission.csv"].decode().splitlines()[0] == "ImageId,Label"

    f = frames(archive)
    train, test, sample = f["train.csv"], f["test.csv"], f["sample_submission.csv"]
    assert train.shape == (50, 785) and test.shape == (7, 784)
    for frame in (train, test):
        assert all(pd.api.types.is_integer_dtype(t) for t in frame.dtypes)
        values = frame[PIXELS].to_numpy()
        assert values.min() >= 0 and values.max() <= 255
    assert train["label"].value_counts().sort_index().to_dict() == {d: 5 for d in range(10)}
    assert (train["label"].to_numpy() != np.sort(train["label"].to_numpy())).any()  # rows shuffled, labels mixed
    assert sample["ImageId"].tolist() == list(range(1, 8)) and (sample["Label"] == 0).all()
    assert sample.columns.tolist() == ["ImageId", "Label"]

    answers = pd.read_csv(tmp_path / "answers.csv", dtype=str)
    assert answers["id"].tolist() == [str(i) for i in range(1, 8)]
    assert set(answers["label"]) <= set("0123456789")


def test_archive_is_deterministic_in_the_seed(tmp_path):
    a = build(tmp_path / "a", seed=3).read_bytes()
    assert build(tmp_path / "b", seed=3).read_bytes() == a
    other = members(build(tmp_path / "c", seed=4))
    assert other["train.csv"] != members(tmp_path / "a" / "digits-3-5-7.zip")["train.csv"]
    assert other["test.csv"] != members(tmp_path / "a" / "digits-3-5-7.zip")["test.csv"]


def test_images_are_mnist_like_strokes(tmp_path):
    train = frames(build(tmp_path, per_class=20, test=1))["train.csv"]
    images = train[PIXELS].to_numpy().reshape(-1, 28, 28).astype(np.float64)
    ink = images.sum(axis=(1, 2))
    assert (ink > 0).all()
    # White strokes on black: the border and most of the frame are 0, every digit reaches near-white, and
    # anti-aliased edges leave grey values between.
    assert (images.max(axis=(1, 2)) >= 200).all()
    assert (np.median(images.reshape(len(images), -1), axis=1) == 0).all()
    assert ((images > 0) & (images < 255)).sum() > 0.2 * (images > 0).sum()
    on = (images > 127).mean(axis=(1, 2))
    assert (on > 0.02).all() and (on < 0.4).all()  # neither a dot nor a filled square
    # MNIST's layout: the digit is fitted to a 20x20 box and centred by centre of mass in the 28x28 frame.
    inside = images[:, 4:24, 4:24].sum(axis=(1, 2)) / ink
    assert inside.mean() > 0.95 and inside.min() > 0.8
    ys, xs = np.indices((28, 28))
    cy = (images * ys).sum(axis=(1, 2)) / ink
    cx = (images * xs).sum(axis=(1, 2)) / ink
    assert np.abs(cy - 13.5).max() < 2.5 and np.abs(cx - 13.5).max() < 2.5


def test_classes_are_learnable_but_not_trivial(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    def labelled(seed):
        train = frames(build(tmp_path, seed=seed, per_class=60, test=1))["train.csv"]
        return train[PIXELS].to_numpy() / 255.0, train["label"].to_numpy()

    x_fit, y_fit = labelled(1)
    x_eval, y_eval = labelled(2)  # another archive: new writers of the same digits, not the same images
    linear = LogisticRegression(max_iter=200).fit(x_fit, y_fit).score(x_eval, y_eval)
    nearest = KNeighborsClassifier(1).fit(x_fit, y_fit).score(x_eval, y_eval)
    # Measured this way (60 per class, fit on one seed's archive, scored on the next seed's) over 10 seed pairs:
    # logistic regression 0.84-0.90, 1-NN 0.81-0.87 (0.84 and 0.82 for this pair). Chance is 0.1, so the floor
    # of 0.7 says the classes carry a real signal; the ceiling of 0.93 catches a demo that became too clean: a
    # less varied draft (no warp) scored 0.93-0.95 here and 0.99+ with 600 per class, where a small CNN would be
    # perfect; the current demo's CNN (5 epochs, 400 per class) reaches about 0.98, high but not perfect.
    assert 0.7 <= linear <= 0.93, linear
    assert 0.7 <= nearest <= 0.93, nearest
