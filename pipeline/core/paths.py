"""Where every stage reads and writes: the one function that derives paths (dvc.yaml mirrors it)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

INPUTS = Path("data") / "inputs"
"""The inputs stage's output: every competition's input fingerprints, a folder each."""

EXTRACTED = "files"
"""Folder of `raw` where download extracts the archive's CSVs and nested zips (beside our own index CSVs, which
may share a name with Kaggle's: Digit Recognizer's `train.csv`)."""


@dataclass(frozen=True)
class Paths:
    """All paths of one competition, relative to the repository root `root`; per-model paths are those of model
    `model` (one of params.yaml's `models`)."""

    comp: str
    root: Path = Path(".")
    model: str = "main"

    def of(self, model: str) -> "Paths":
        """The same competition's paths for another model."""
        return replace(self, model=model)

    @property
    def raw(self) -> Path:
        """download: the archive(s) and the validated image index."""
        return self.root / "data" / self.comp / "raw"

    @property
    def demo_answers(self) -> Path:
        """The demo's secret test labels (only for `source: demo`)."""
        return self.raw / "demo_test_labels.csv"

    @property
    def inputs(self) -> Path:
        """inputs: content fingerprints of the archive and weights files that params.yaml points at (one folder
        for every competition's, the one stage's output)."""
        return self.root / INPUTS / self.comp

    @property
    def inputs_state(self) -> Path:
        """Hashes the inputs stage already computed, by file stat (outside its outputs, which DVC deletes)."""
        return self.root / "data" / self.comp / "inputs-state.json"

    @property
    def download(self) -> Path:
        """Kaggle downloads, kept outside DVC's outputs so a re-run does not fetch gigabytes again."""
        return self.root / "data" / self.comp / "kaggle"

    @property
    def cache(self) -> Path:
        """prepare: decoded, resized uint8 images."""
        return self.root / "data" / self.comp / "cache"

    @property
    def features(self) -> Path:
        """features: the model's backbone features and the backbone's weights."""
        return self.root / "data" / self.comp / "features" / self.model

    @property
    def weights_fingerprint(self) -> Path:
        """inputs: what the model's features stage will load as weights (a content hash, or the hub's name)."""
        return self.inputs / f"weights-{self.model}.json"

    @property
    def folds(self) -> Path:
        return self.root / "folds" / f"{self.comp}.csv"

    def fold_model(self, stage: str, fold: int) -> Path:
        """head/finetune: the model's weights and predictions of one fold."""
        return self.root / "models" / self.comp / self.model / stage / f"fold{fold}"

    def fold_metrics(self, stage: str, fold: int) -> Path:
        return self.root / "metrics" / self.comp / self.model / stage / f"fold{fold}.json"

    def live(self, stage: str, fold: int) -> Path:
        """dvclive's learning curves of one fold."""
        return self.root / "dvclive" / self.comp / self.model / stage / f"fold{fold}"

    @property
    def submissions(self) -> Path:
        """ensemble: the folder DVC keeps whole, so a quick run (which writes no submission) leaves none behind."""
        return self.root / "submissions" / self.comp

    @property
    def submission(self) -> Path:
        """ensemble: the file to upload, in Kaggle's exact format; a full run's only."""
        return self.submissions / "submission.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics" / f"{self.comp}.json"

    @property
    def cv(self) -> Path:
        """ensemble: per-fold and per-group (driver) cross-fitted scores, committed with the top-level metrics."""
        return self.root / "metrics" / self.comp / "cv.json"

    @property
    def plots(self) -> Path:
        """curves: learning-curve pictures (`dvc plots show` renders them, offline)."""
        return self.root / "plots" / self.comp

    @property
    def reports(self) -> Path:
        """The report stage's page and pictures, and those of hand-run commands (lr-find, compare)."""
        return self.root / "reports" / self.comp

    @property
    def oof(self) -> Path:
        """ensemble: the cross-fitted out-of-fold predictions (what the CV score scores), beside the submission as
        Kagglers keep them (outside models/, which the ensemble reads whole)."""
        return self.submissions / "oof.csv"
