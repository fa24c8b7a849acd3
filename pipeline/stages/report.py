"""Stage `report@<comp>` (also `pipeline report <comp>`): what the stages wrote, as pictures a person can read.

Outputs: `reports/<comp>/index.html`, one self-contained file (pictures embedded) to open in any browser, offline,
and the same pictures as PNGs in `reports/<comp>/figures/` (`dvc plots show` renders them too):
- scores: per fold, of the ensemble (cross-fitted) and of each member (every model's head and finetuned network),
  and the members' weights; per group where the competition has groups (State Farm: per driver, hardest first);
- learning curves, with a one-line reading per fold: over-fitting (validation far above training, or rising beyond
  noise at the end), still improving, or fitting well (training loss is measured with dropout and augmentation, so
  it sitting above validation is expected, not under-fitting);
- finetuning against the head it starts from, per fold: did it pay, or was the head's start lost;
- the confusion matrix with the classes' descriptions, and a reliability (calibration) curve;
- the most confidently wrong, the most uncertain and the most confidently right validation images (the course's
  "look at your data"), from the cross-fitted out-of-fold predictions;
- the model (the first of `models`, fold 0, finetuned): its layers with parameter counts (the course's
  `model.summary()`), the first conv layer's filters, Grad-CAM maps on a few of its validation images, and the
  activation maps of every feature level up to the cut, shallow to deep.
"""

from __future__ import annotations

import base64
import html
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.competitions import Competition, get_competition
from pipeline.core.config import Params
from pipeline.core.io import atomic_dir, read_json, write_text
from pipeline.core.paths import Paths
from pipeline.core.stage import stage_main
from pipeline.data.cache import load_cache
from pipeline.reporting.figures import matrix_figure, pyplot, show
from pipeline.reporting.figures import save_report_png as _save
from pipeline.reporting.model_figures import (
    activations_figure,
    filters_figure,
    gradcam_figure,
    layer_table,
    model_parts,
)
from pipeline.reporting.readings import diagnose, finetune_health
from pipeline.scoring.metrics import HIGHER_IS_BETTER
from pipeline.scoring.runs import Run

GRID = 8  # images per grid


def confusion_figure(comp: Competition, oof: pd.DataFrame, out: Path) -> Path:
    from sklearn.metrics import confusion_matrix

    truth = oof["label"].to_numpy()
    pred = np.asarray(comp.classes)[decided(comp, oof)[2]]
    cm = confusion_matrix(truth, pred, labels=list(comp.classes))
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    names = [f"{c} {d}" if c != d else c for c, d in zip(comp.classes, comp.class_descriptions)]
    fig, ax = matrix_figure(share, cm, list(comp.classes), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{comp.name}: confusion matrix of the cross-fitted out-of-fold predictions (row share shaded)",
                 fontsize=9)
    return _save(fig, out)


def reliability_figure(comp: Competition, oof: pd.DataFrame, out: Path) -> Path:
    """Confidence of the predicted class against how often it is right: on the diagonal is calibrated."""
    from sklearn.calibration import calibration_curve

    plt = pyplot()
    probs = oof[list(comp.classes)].to_numpy()
    correct = (np.asarray(comp.classes)[probs.argmax(axis=1)] == oof["label"].to_numpy()).astype(int)
    confidence = probs.max(axis=1)
    bins = min(10, max(2, len(oof) // 20))
    frac, mean = calibration_curve(correct, confidence, n_bins=bins, strategy="quantile")
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="calibrated")
    ax.plot(mean, frac, "o-", label="out-of-fold")
    ax.set_xlabel("confidence in the predicted class")
    ax.set_ylabel("share right")
    ax.set_title(f"{comp.name}: reliability ({bins} equal-count bins)", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, out)


CAPTION = 34  # characters a caption line holds under a 3-inch image at 7 points: longer ones run into the next


def image_grid(images: np.ndarray, rows: np.ndarray, titles: list[str], title: str, out: Path) -> Path:
    return _save(grid_figure(images, rows, titles, title), out)


def grid_figure(images: np.ndarray, rows: np.ndarray, titles: list[str], title: str):
    """Images four to a row, each under its caption."""
    plt = pyplot()
    cols = min(len(rows), 4) or 1
    lines = max(1, -(-len(rows) // cols))
    titles = ["\n".join(textwrap.fill(line, CAPTION) for line in t.split("\n")) for t in titles]
    extra = max([t.count("\n") - 2 for t in titles] + [0])  # long class names wrapped: more room above each row
    fig, axes = plt.subplots(lines, cols, figsize=(3 * cols, (2.6 + 0.14 * extra) * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, r, t in zip(axes.flat, rows, titles):
        show(ax, images[r])
        ax.set_title(t, fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def decided(comp: Competition, oof: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The out-of-fold probabilities, true classes and predicted classes: as the ensemble decided them (its
    `predicted` column: a fitted threshold, where the metric has one), else the most probable."""
    probs = oof[list(comp.classes)].to_numpy()
    truth = pd.Index(comp.classes).get_indexer(oof["label"])
    pred = pd.Index(comp.classes).get_indexer(oof["predicted"]) if "predicted" in oof else probs.argmax(axis=1)
    return probs, truth, pred


def extremes(comp: Competition, oof: pd.DataFrame) -> dict[str, np.ndarray]:
    """Row positions in `oof` of the most confidently wrong, the most uncertain (nearest the decision boundary:
    the smallest gap between the two most probable classes) and the most confidently right predictions, most
    extreme first."""
    probs, truth, pred = decided(comp, oof)
    p_pred, p_true = probs[np.arange(len(probs)), pred], probs[np.arange(len(probs)), truth]
    top_two = np.sort(probs, axis=1)[:, -2:]
    wrong, right = np.flatnonzero(pred != truth), np.flatnonzero(pred == truth)
    return {
        "confidently_wrong": wrong[np.argsort(-p_pred[wrong], kind="stable")][:GRID],
        "uncertain": np.argsort(top_two[:, 1] - top_two[:, 0], kind="stable")[:GRID],
        "confidently_right": right[np.argsort(-p_true[right], kind="stable")][:GRID],
    }


def _described(name: str, described: dict) -> str:
    return f" ({described[name]})" if described[name] != name else ""


def grids(comp: Competition, oof: pd.DataFrame, images: np.ndarray, row_of: dict, figs: Path) -> list[tuple]:
    """Grids of the images `extremes` picks, with label and prediction."""
    probs, truth, pred = decided(comp, oof)
    p_pred, p_true = probs[np.arange(len(probs)), pred], probs[np.arange(len(probs)), truth]
    chosen = extremes(comp, oof)
    described = dict(zip(comp.classes, comp.class_descriptions))
    shown = []
    for name, idx in chosen.items():
        if not len(idx):
            continue  # e.g. no wrong prediction: no empty picture
        titles = [f"{oof['id'].iloc[i]}\ntrue {truth_name}{_described(truth_name, described)}\npredicted "
                  f"{comp.classes[pred[i]]} {p_pred[i]:.2f}, true {p_true[i]:.2f}"
                  for i in idx for truth_name in [comp.classes[truth[i]]]]
        label = name.replace("_", " ")
        path = image_grid(images, np.array([row_of[oof["id"].iloc[i]] for i in idx], dtype=int), titles,
                          f"{comp.name}: {label} ({len(idx)})", figs / f"{name}.png")
        shown.append((label, path))
    return shown


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0, classes="t")


def run(params: Params, comp_name: str, root: Path = Path(".")) -> Path:
    comp = get_competition(comp_name)
    paths = Paths(comp_name, root, params.models[0])
    metrics, cv = read_json(paths.metrics), read_json(paths.cv)
    oof = pd.read_csv(paths.oof, dtype={"id": str, "label": str, "predicted": str, "group": str},
                      keep_default_na=False)
    images, index = load_cache(paths.cache, "train")
    row_of = dict(zip(index["id"], range(len(index))))
    out_dir = paths.reports
    with atomic_dir(out_dir / "figures") as figs:
        parts = [f"<h1>{html.escape(comp.title)}</h1>"]
        recorded = Run(comp_name, None, cv, metrics)
        summary = {**{k: v for k, v in metrics.items() if k != "demo_test"},
                   **{f"demo test {k}": v for k, v in cv.get("demo_test", {}).items()},
                   "chosen": recorded.chosen, "source": recorded.recorded("source")}
        higher = HIGHER_IS_BETTER[comp.metric]
        parts.append("<h2>Scores</h2><p>Cross-validated: each fold's rows get the member, calibration and threshold "
                     f"chosen on the other folds. {comp.title} is scored by {comp.metric} ("
                     f"{'higher' if higher else 'lower'} is better)"
                     f"{'' if comp.metric == 'logloss' else '; the log loss beside it, lower is better'}.</p>"
                     + _table(pd.DataFrame([summary])))
        folds = pd.DataFrame([{"fold": k, **{c: v for c, v in f.items() if c not in ("rows_md5", "weights")}}
                              for k, f in cv["folds"].items()]).dropna(axis=1, how="all")  # no threshold: no column
        weights = pd.DataFrame([{"fitted on": "every fold (the submission)", **cv.get("weights", {})}]
                               + [{"fitted on": f"all but fold {k}", **f.get("weights", {})}
                                  for k, f in cv["folds"].items()])
        smoothing = (" The members' columns are each fold's own model before any test-neighbour smoothing; the "
                     "ensemble's include it." if params.comp(comp_name).ensemble.neighbours else "")
        parts.append(f"<h3>Per fold: the ensemble and each member</h3><p>{smoothing}</p>" + _table(folds))
        parts.append("<h3>Members' weights</h3><p>Each member is a model's head or finetuned network (its folds "
                     "averaged); weights combine them in log space.</p>" + _table(weights))
        if cv.get("groups"):
            groups = pd.DataFrame([{comp.group_noun: g, **v} for g, v in cv["groups"].items()])
            parts.append(f"<h3>Per {comp.group_noun}, hardest first</h3>"
                         + _table(groups.sort_values(comp.metric, ascending=higher)))

        parts.append("<h2>Learning curves</h2>")
        curves_png = paths.plots / "learning_curves.png"
        if curves_png.is_file():
            parts.append(_img(curves_png))
        readings, health = [], []
        for model in params.models:
            history = {(stage, k): read_json(paths.of(model).fold_model(stage, k) / "params.json")["history"]
                       for stage in ("head", "finetune") for k in params.folds}
            readings += [{"model": model, "stage": stage, "fold": k, "reading": diagnose(h)}
                         for (stage, k), h in history.items()]
            pretrained = params.model(comp_name, model).features.pretrained
            health += [{"model": model, "fold": k, **finetune_health(
                history["head", k], history["finetune", k], pretrained,
                read_json(paths.of(model).fold_metrics("finetune", k))["logloss"])} for k in params.folds]
        parts.append(_table(pd.DataFrame(readings)))
        health = pd.DataFrame(health)
        wins = (health["finetune_logloss"] < health["head_logloss"]).sum()
        parts.append(f"<h3>Finetuning against its head: better on {wins} of {len(health)} folds</h3><p>Validation "
                     "log loss of the head (finetuning's epoch 0) and of the finetuned network, and the head's last "
                     "training loss against finetuning's first: far above it, the head's start was lost.</p>"
                     + _table(health))

        parts.append("<h2>Errors</h2>")
        parts.append(_img(confusion_figure(comp, oof, figs / "confusion.png")))
        parts.append(_img(reliability_figure(comp, oof, figs / "reliability.png")))
        for label, path in grids(comp, oof, images, row_of, figs):
            parts.append(f"<h3>{label}</h3>" + _img(path))

        parts.append(f"<h2>The model ({paths.model}, fold {params.folds[0]}, finetuned)</h2>")
        model, fold = model_parts(params, comp_name, paths)
        parts.append(_table(layer_table(model)))
        filters = filters_figure(model, figs / "first_filters.png")
        parts.append(_img(filters) if filters else "<p>No convolution in this backbone: no filters to show.</p>")
        meta = read_json(paths.features / "meta.json")
        val = oof[oof["fold"] == fold]
        picks = np.array([row_of[i] for i in val["id"].iloc[: min(4, len(val))]], dtype=int)
        cam = gradcam_figure(model, images, picks, comp, meta, figs / "gradcam.png")
        parts.append(_img(cam) if cam else "<p>Grad-CAM needs a spatial feature map; this backbone gives none.</p>")
        maps = activations_figure(model, images, picks[:3], meta, figs / "activations.png")
        parts.append(_img(maps) if maps else "<p>This backbone does not expose its feature levels.</p>")
    style = ("body{font-family:sans-serif;max-width:1300px;margin:2em auto;color:#222}img{max-width:100%;display:block;"
             "margin:1em 0}table.t{border-collapse:collapse;font-size:13px}table.t td,table.t th{padding:2px 8px;"
             "border-bottom:1px solid #ddd;text-align:right}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(comp.title)}: report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    write_text(out_dir / "index.html", page)
    return out_dir / "index.html"


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv, summary=lambda out: f"open {out} in a browser",
               wrote=lambda comp, model, fold: [Paths(comp).reports / "index.html", Paths(comp).reports / "figures"])


if __name__ == "__main__":
    main()
