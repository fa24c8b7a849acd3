"""Kaggle scores recorded by `pipeline submit` (and local ones by `pipeline score`) in `submissions/scores.csv`,
read for `pipeline compare`, and CV drawn against the public leaderboard: does CV predict it?"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.core.competitions import get_competition
from pipeline.reporting.figures import pyplot, save_png


def submissions(root: Path, comp_name: str) -> pd.DataFrame:
    path = root / "submissions" / "scores.csv"
    if not path.is_file():
        return pd.DataFrame(columns=["commit", "experiment", "cv_logloss", "cv", "public_score", "private_score",
                                     "local_score"])
    scores = pd.read_csv(path, dtype=str)
    scores = scores[scores["competition"] == comp_name].copy()
    for c in ("cv_logloss", "cv_score", "public_score", "private_score", "local_score"):
        scores[c] = pd.to_numeric(scores[c], errors="coerce") if c in scores else float("nan")
    # `cv`: the CV score in the leaderboard's metric (rows recorded before `cv_score` existed: their log loss)
    logloss = get_competition(comp_name).metric == "logloss"
    scores["cv"] = scores["cv_score"].fillna(scores["cv_logloss"]) if logloss else scores["cv_score"]
    return scores


def plot_cv_vs_leaderboard(scores: pd.DataFrame, comp_name: str, out: Path) -> Path | None:
    """CV score against the public leaderboard, one point per scored submission: does CV predict it?"""
    scored = scores.dropna(subset=["cv", "public_score"])
    if scored.empty:
        return None
    fig, ax = pyplot().subplots(figsize=(5.5, 5))
    ax.scatter(scored["cv"], scored["public_score"])
    for _, r in scored.iterrows():
        label = r.get("experiment") if isinstance(r.get("experiment"), str) and r.get("experiment") else str(r["commit"])[:7]
        ax.annotate(label[:16], (r["cv"], r["public_score"]),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    lo = min(scored["cv"].min(), scored["public_score"].min())
    hi = max(scored["cv"].max(), scored["public_score"].max())
    ax.plot([lo, hi], [lo, hi], ":", color="grey", label="CV = leaderboard")
    name = get_competition(comp_name).metric
    ax.set_xlabel(f"CV {name} (metrics/<comp>.json)")
    ax.set_ylabel(f"public leaderboard {name}")
    ax.set_title(f"{comp_name}: does CV predict the leaderboard? ({len(scored)} submissions)", fontsize=10)
    ax.legend(fontsize=8)
    return save_png(fig, out)
