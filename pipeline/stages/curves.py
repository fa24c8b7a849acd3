"""Stage `curves@<comp>`: every fold's learning curves -> one picture per competition, readable offline.

Inputs: the dvclive curves of every model's head and finetune stages (`dvclive/<comp>/<model>/<stage>/fold<k>/`).
Output: `plots/<comp>/learning_curves.png`: one panel per model and stage with all folds overlaid (validation log loss solid,
training loss dashed, one colour per fold) and the epoch each fold kept marked. The x axis is the epoch as the
stages print and record it; epoch 0 is the starting point (finetuning's is the trained head). `dvc plots show`
embeds the picture, so the page needs no network.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.core.config import Params
from pipeline.core.errors import OutputError
from pipeline.core.paths import Paths
from pipeline.core.stage import stage_main
from pipeline.reporting.figures import pyplot, save_png

STAGES = ("head", "finetune")


def read_curve(live_dir: Path, name: str) -> pd.DataFrame:
    """One dvclive metric of one fold: columns step (the epoch) and the value."""
    path = live_dir / "plots" / "metrics" / f"{name}.tsv"
    try:
        curve = pd.read_csv(path, sep="\t")
    except (OSError, pd.errors.ParserError) as e:
        stage, comp, model = live_dir.parent.name, live_dir.parents[2].name, live_dir.parents[1].name
        fold = f"-{live_dir.name.removeprefix('fold')}" if stage == "finetune" else ""  # one head stage per model
        raise OutputError(f"cannot read the learning curve {path} ({e}); re-run the stage that writes it, "
                          f"e.g. `dvc repro {stage}@{comp}-{model}{fold}`.") from None
    return curve.rename(columns={curve.columns[-1]: "value"})[["step", "value"]]


def curves(paths: Paths, models, folds) -> dict[str, dict[int, dict[str, pd.DataFrame]]]:
    """{"<model> <stage>": {fold: {"val": ..., "train": ...}}} for every model, stage and fold."""
    return {f"{model} {stage}": {k: {"val": read_curve(paths.of(model).live(stage, k), "val/logloss"),
                                     "train": read_curve(paths.of(model).live(stage, k), "train/loss")}
                                 for k in folds}
            for model in models for stage in STAGES}


def figure(data: dict, title: str):
    """The learning curves' figure: one panel per model and stage, each fold a colour, the kept epochs marked."""
    plt = pyplot()
    cols = len(STAGES)
    rows = -(-len(data) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (stage, folds) in zip(axes.flat, data.items()):
        kept = set()
        for i, (k, c) in enumerate(folds.items()):
            colour = colours(i % 10)
            ax.plot(c["val"]["step"], c["val"]["value"], "o-", color=colour, label=f"fold {k} validation")
            ax.plot(c["train"]["step"], c["train"]["value"], "--", color=colour, alpha=0.7, label=f"fold {k} train")
            kept.add(int(c["val"]["step"].max()))
        for epoch in sorted(kept):
            ax.axvline(epoch, color="grey", linestyle=":", linewidth=1)
            ax.annotate(f"kept: epoch {epoch}", (epoch, 1), xycoords=("data", "axes fraction"), ha="right",
                        va="top", fontsize=8, color="grey")
        ax.set_title(f"{stage}: log loss per epoch (solid: validation, dashed: train)", fontsize=10)
        ax.set_xlabel("epoch (0 = starting point)")
        ax.set_ylabel("log loss")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        # below the panel: inside, "best" may sit on the kept epoch's mark at the top right
        ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def draw(data: dict, title: str, out: Path) -> Path:
    return save_png(figure(data, title), out)


def run(params: Params, comp_name: str, root: Path = Path(".")) -> Path:
    paths = Paths(comp_name, root)
    return draw(curves(paths, params.models, params.folds), f"{comp_name}: learning curves, {len(params.folds)} folds",
                paths.plots / "learning_curves.png")


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv, summary=lambda out: "all folds' learning curves in one picture",
               wrote=lambda comp, model, fold: [Paths(comp).plots / "learning_curves.png"])


if __name__ == "__main__":
    main()
