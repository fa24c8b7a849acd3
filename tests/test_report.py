"""`pipeline report`: one self-contained HTML page and its PNGs, from what a tiny run's stages wrote."""

import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.stages import curves, report

from pipeline.reporting import model_figures, readings
from pipeline.core.io import read_json
from pipeline.core.paths import Paths


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.headings, self._h = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        self._h = tag in ("h1", "h2", "h3")

    def handle_data(self, data):
        if self._h:
            self.headings.append(data)
            self._h = False


@pytest.mark.parametrize("comp_name", ["dogscats", "statefarm"])
def test_report_is_one_self_contained_page_with_every_section(pipeline_run, comp_name):
    root, params, _ = pipeline_run
    curves.run(params, comp_name, root)
    page_path = report.run(params, comp_name, root)
    page = _Page()
    page.feed(page_path.read_text())
    assert all(src.startswith("data:image/png;base64,") for src in page.images), "nothing to fetch"
    figures = sorted(p.name for p in (Paths(comp_name, root).reports / "figures").glob("*.png"))
    assert figures == sorted(["confusion.png", "reliability.png", "confidently_wrong.png", "uncertain.png",
                              "confidently_right.png", "first_filters.png", "gradcam.png", "activations.png"])
    assert len(page.images) == len(figures) + 1  # and the learning curves
    for png in (Paths(comp_name, root).reports / "figures").glob("*.png"):
        with Image.open(png) as img:
            assert img.width > 100 and img.height > 100
    text = page_path.read_text()
    assert {"Scores", "Learning curves", "Errors", "The model (main, fold 0, finetuned)",
            "Members' weights"} <= set(page.headings)
    assert "Per driver, hardest first" in page.headings if comp_name == "statefarm" else "Per driver" not in text
    # one reading per model, stage and fold
    assert len(re.findall(r"still improving|over-fitting|fitting well", text)) == 2 * len(params.folds) * len(params.models)
    assert "lower is better; lower log loss is better" not in text
    choice = read_json(Paths(comp_name, root).cv)["choice"]  # the scores' table says what made them
    assert f"<td>{choice['kind']}+{choice['method']}</td>" in text and "<th>demo test logloss</th>" in text
    assert "<th>source</th>" in text and "<td>demo</td>" in text
    for member in ("main/head", "main/finetune", "cut/head", "cut/finetune"):  # every member's fold scores
        assert f"{member}_logloss" in text
    # the finetune health check: one row per model and fold, and the count of folds finetuning won
    won = [h for h in page.headings if h.startswith("Finetuning against its head: better on ")]
    assert won and won[0].endswith(f" of {len(params.folds) * len(params.models)} folds")
    assert len(re.findall(r"finetuning paid|finetuning lost|the start was lost|from scratch \(pretrained: false\)",
                          text)) == len(params.folds) * len(params.models)


def test_diagnosis_reads_curves_as_the_lesson_teaches():
    # training loss is measured with dropout and augmentation on: above validation is expected, not under-fitting
    above = [{"epoch": 0, "logloss": 2.3}, {"epoch": 1, "train_loss": 1.2, "logloss": 0.9},
             {"epoch": 2, "train_loss": 1.1, "logloss": 0.88}]
    assert readings.diagnose(above).startswith("fitting well: training 1.100 (above validation: it is measured with "
                                               "dropout and augmentation on, so that is expected)")
    falling = [{"epoch": 0, "logloss": 2.3}, {"epoch": 1, "train_loss": 1.2, "logloss": 1.4},
               {"epoch": 2, "train_loss": 1.1, "logloss": 0.9}]
    assert readings.diagnose(falling).startswith("still improving: validation fell 1.400 -> 0.900")
    # a rise within noise on a small loss is no over-fitting (it read "validation rose from its low 0.030 to 0.036")
    wobble = [{"epoch": 0, "logloss": 2.3}, {"epoch": 1, "train_loss": 0.05, "logloss": 0.030},
              {"epoch": 2, "train_loss": 0.04, "logloss": 0.033}]
    assert readings.diagnose(wobble).startswith("fitting well")
    rising = [{"epoch": 0, "logloss": 2.3}, {"epoch": 1, "train_loss": 0.5, "logloss": 0.6},
              {"epoch": 2, "train_loss": 0.3, "logloss": 0.8}]
    assert readings.diagnose(rising).startswith("over-fitting: validation rose")
    gap = [{"epoch": 0, "logloss": 2.3}, {"epoch": 1, "train_loss": 0.1, "logloss": 0.5}]
    assert readings.diagnose(gap).startswith("over-fitting: validation 0.500 is over twice")
    good = [{"epoch": 0, "logloss": 2.3}, {"epoch": 1, "train_loss": 0.4, "logloss": 0.45}]
    assert readings.diagnose(good).startswith("fitting well")
    # a near-perfect fold's wobble is no trend (it read "validation rose from its low 0.000 to 0.000")
    perfect = [{"epoch": 0, "logloss": 0.3}, {"epoch": 1, "train_loss": 0.0003, "logloss": 0.0001},
               {"epoch": 2, "train_loss": 0.0004, "logloss": 0.0002}]
    assert readings.diagnose(perfect).startswith("fitting well: training 0.000, validation 0.000")


def _curve(head_train, vals, first_train):
    head = [{"epoch": 0, "logloss": 2.3}, {"epoch": 1, "train_loss": head_train, "logloss": vals[0]}]
    tune = [{"epoch": 0, "logloss": vals[0]}] + [{"epoch": i + 1, "train_loss": first_train if i == 0 else 0.2,
                                                  "logloss": v} for i, v in enumerate(vals[1:])]
    return head, tune


def test_finetune_health_reads_the_switch_from_head_to_network():
    """Issue 17's failure (the first epoch's training loss 1.48 against the head's 0.14), a kept start that did
    not pay, and one that did."""
    lost = readings.finetune_health(*_curve(0.14, [0.54, 0.88, 0.85], 1.48))
    assert lost["reading"].startswith("the start was lost") and "batch norm" in lost["reading"]
    assert (lost["head_logloss"], lost["finetune_logloss"], lost["first_train_loss"]) == (0.54, 0.85, 1.48)
    kept = readings.finetune_health(*_curve(0.14, [0.54, 0.50, 0.56], 0.31))
    assert kept["reading"].startswith("finetuning lost to its head: 0.560 at its last epoch against the head's 0.540")
    assert "For this run: the ensemble weighs the head and the finetuned network" in kept["reading"]
    # the stage's own score (over its test-time views) and the last epoch's are named apart, not two bare figures
    views = readings.finetune_health(*_curve(0.14, [0.4074, 0.45, 0.504], 0.31), kept=0.43)
    assert "0.504 at its last epoch (0.430 kept, over its test-time views) against the head's 0.407" in views["reading"]
    # from scratch, the head learnt on a random network's features: losing that start is the recipe, not a fault
    scratch = readings.finetune_health(*_curve(0.027, [0.9, 0.2, 0.1], 2.266), pretrained=False)
    assert scratch["reading"].startswith("from scratch (pretrained: false)") and "is expected" in scratch["reading"]
    assert "suspect" not in scratch["reading"]
    paid = readings.finetune_health(*_curve(0.14, [0.54, 0.45, 0.42], 0.31))
    assert paid["reading"] == "finetuning paid: 0.540 (the head) -> 0.420"


def test_grids_pick_the_right_extremes(pipeline_run):
    """The confidently wrong images are wrong and the most confident of the wrong; the most uncertain have the
    lowest top probability; the confidently right are right, most confident first."""
    import pandas as pd

    from pipeline.core.competitions import get_competition

    root, _, _ = pipeline_run
    comp = get_competition("statefarm")
    oof = pd.read_csv(Paths("statefarm", root).oof, dtype={"id": str})
    cv = read_json(Paths("statefarm", root).cv)
    assert oof.groupby("fold").size().to_dict() == {int(k): v["rows"] for k, v in cv["folds"].items()}
    probs = oof[list(comp.classes)].to_numpy()
    truth = pd.Index(comp.classes).get_indexer(oof["label"])
    pred, top = probs.argmax(axis=1), probs.max(axis=1)
    assert (pred != truth).mean() == pytest.approx(1 - read_json(Paths("statefarm", root).metrics)["accuracy"])
    picked = report.extremes(comp, oof)
    wrong, right = picked["confidently_wrong"], picked["confidently_right"]
    assert (pred[wrong] != truth[wrong]).all() and (pred[right] == truth[right]).all()
    assert np.all(np.diff(top[wrong]) <= 0) and top[wrong][0] == top[pred != truth].max()
    ranked = np.sort(probs, axis=1)
    gap = ranked[:, -1] - ranked[:, -2]  # to the runner-up: the smallest is nearest the decision boundary
    assert gap[picked["uncertain"]].max() <= np.sort(gap)[len(picked["uncertain"]) - 1]
    assert np.all(np.diff(probs[right, truth[right]]) <= 0)


def test_model_section_copes_with_a_transformer_backbone(tmp_path):
    """A ViT gives tokens, not a spatial map: Grad-CAM is skipped rather than wrong, and parameters held outside
    any child module (position embeddings) still count in the total."""
    from pipeline.core.competitions import get_competition
    from pipeline.core.sections import FeaturesParams
    from pipeline.training.models import Classifier, Trunk, create_backbone, create_head

    backbone = Trunk(create_backbone(FeaturesParams(backbone="test_vit", pretrained=False)), -1)
    model = Classifier(backbone, create_head(backbone.num_features, 2, 8, 0.5)).eval()
    table = model_figures.layer_table(model)
    assert table["parameters"].iloc[-1] == sum(p.numel() for p in model.parameters())
    images = np.random.default_rng(0).integers(0, 255, (2, 160, 160, 3), dtype=np.uint8)
    meta = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    comp = get_competition("dogscats")
    assert model_figures.gradcam_figure(model, images, np.array([0, 1]), comp, meta, tmp_path / "cam.png") is None
    assert model_figures.filters_figure(model, tmp_path / "filters.png").is_file()  # its patch embedding is a conv


@pytest.mark.parametrize("cut", [-1, 2])
def test_activation_maps_show_every_feature_level_up_to_the_cut(pipeline_run, tmp_path, cut):
    """One column per feature level (shallow to deep, shrinking maps), for a whole backbone and a cut one."""
    from pipeline.core.sections import FeaturesParams
    from pipeline.training.models import Classifier, create_head, create_trunk

    trunk = create_trunk(FeaturesParams(backbone="test_resnet", pretrained=False, cut=cut))
    model = Classifier(trunk, create_head(trunk.num_features, 2, 8, 0.5, conv_channels=8 if cut >= 0 else None))
    images = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    import torch

    levels = trunk.levels(torch.zeros(1, 3, 64, 64))
    assert len(levels) == (cut + 1 if cut >= 0 else len(trunk.model.feature_info))
    assert [a.shape[-1] for a in levels] == sorted((a.shape[-1] for a in levels), reverse=True)
    meta = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    out = model_figures.activations_figure(model, images, np.array([0, 1, 2]), meta, tmp_path / "maps.png")
    with Image.open(out) as img:
        assert img.width > 100 * (len(levels) + 1) / 2


def test_the_uncertain_grid_is_the_rows_nearest_the_decision_boundary():
    """Not the least confident: a row split 0.46/0.46 between two classes is more uncertain than one at 0.30
    whose runner-up has 0.08."""
    from pipeline.core.competitions import get_competition
    from pipeline.stages.report import extremes

    comp = get_competition("statefarm")
    probs = np.full((3, 10), 0.0)
    probs[0, :3] = [0.46, 0.46, 0.08]
    probs[1] = [0.30] + [0.0778] * 9
    probs[2, :2] = [0.9, 0.1]
    oof = pd.DataFrame(probs, columns=list(comp.classes)).assign(label=comp.classes[0])
    assert list(extremes(comp, oof)["uncertain"]) == [0, 1, 2]


def test_the_legend_hides_nothing_in_the_panel():
    """Ten legend entries inside a panel cover curves or the kept epoch's mark (at the top right, where falling
    curves leave room); below the panel they cover neither."""
    steps = pd.Series(range(4))
    fold = {"val": pd.DataFrame({"step": steps, "value": [2.0, 1.0, 0.5, 0.4]}),
            "train": pd.DataFrame({"step": steps, "value": [2.2, 1.1, 0.6, 0.3]})}
    fig = curves.figure({f"main {stage}": {k: fold for k in range(5)} for stage in curves.STAGES}, "legend check")
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        assert [t for t in ax.texts if t.get_text().startswith("kept: epoch")], ax.get_title()
        assert not legend.overlaps(ax.get_window_extent(renderer)), ax.get_title()


_SPECIES = ["Black-grass", "Charlock", "Cleavers", "Common Chickweed", "Common wheat", "Fat Hen", "Loose Silky-bent",
            "Maize", "Scentless Mayweed", "Shepherds Purse", "Small-flowered Cranesbill", "Sugar beet"]


def _labelled(name):
    """A shipped record, or one whose classes are long names (Plant Seedlings' species) or whose descriptions are
    longer than any shipped one."""
    import dataclasses

    from pipeline.core.competitions import get_competition

    if name in ("cassava", "statefarm"):
        return get_competition(name)
    base = get_competition("statefarm")
    if name == "seedlings":
        return dataclasses.replace(base, name=name, classes=tuple(_SPECIES), class_descriptions=tuple(_SPECIES),
                                   submission_columns=tuple(_SPECIES))
    return dataclasses.replace(base, name=name, class_descriptions=tuple(
        f"{d}, with both hands off the wheel and eyes off the road for a while" for d in base.class_descriptions))


@pytest.mark.parametrize("name", ["cassava", "statefarm", "seedlings", "wordy"])
def test_the_confusion_matrix_class_names_never_overlap(monkeypatch, tmp_path, name):
    """Each axis's class names, as drawn, share no pixel with a neighbour's (Plant Seedlings' species overlapped
    on the predicted axis), however long the names or descriptions are."""
    comp = _labelled(name)
    rng = np.random.default_rng(0)
    oof = pd.DataFrame(rng.dirichlet(np.ones(comp.num_classes), size=40), columns=list(comp.classes))
    oof["label"] = np.asarray(comp.classes)[rng.integers(0, comp.num_classes, 40)]
    drawn = []
    monkeypatch.setattr(report, "_save", lambda fig, out: drawn.append(fig) or out)
    report.confusion_figure(comp, oof, tmp_path / "confusion.png")
    fig = drawn[0]
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    ax = fig.axes[0]
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        boxes = [t.get_window_extent(renderer) for t in labels if t.get_text()]
        assert len(boxes) == comp.num_classes
        for a, b in zip(boxes, boxes[1:]):
            assert not a.overlaps(b), [t.get_text() for t in labels]
    report.pyplot().close(fig)


def test_captions_of_long_class_names_stay_in_their_own_cell():
    """Cassava's classes are diseases (`Cassava Brown Streak Disease (CBSD)`): in a grid of two rows of four, each
    caption stays over its own image, clear of its neighbours' and of the image above it."""
    from pipeline.core.competitions import get_competition
    from pipeline.reporting.figures import pyplot

    longest = max(get_competition("cassava").class_descriptions, key=len)
    titles = [f"1967198537.jpg\ntrue 1 ({longest})\npredicted 4 0.89, true 0.10"] * 8
    fig = report.grid_figure(np.zeros((8, 48, 64, 3), np.uint8), np.arange(8), titles, "cassava: confidently wrong")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = fig.axes[:8]
    for ax in axes:  # no wider than its image (wider ones touched, and at the report's 90 dpi ran together)
        caption, image = ax.title.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert image.x0 <= caption.x0 and caption.x1 <= image.x1, ax.title.get_text()
    for upper, lower in zip(axes[:4], axes[4:]):
        assert lower.title.get_window_extent(renderer).y1 < upper.get_window_extent(renderer).y0, "under the image"
    pyplot().close(fig)
