"""One run's recorded scores as `pipeline compare` and the summary read them: `metrics/<comp>.json` (the numbers)
and `metrics/<comp>/cv.json` (what was chosen, the source, every fold's and group's score). Light to import: the
summary stage reads it after every `dvc repro`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.core.io import read_json
from pipeline.core.paths import Paths


@dataclass(frozen=True)
class Run:
    """One run's scores: its name, the git commit it was read from (None for the workspace) and cv.json."""

    name: str
    commit: str | None
    cv: dict
    metrics: dict

    @classmethod
    def on_disk(cls, comp_name: str, root: Path) -> Run:
        """The workspace's run of a competition (empty parts where the ensemble has not written them)."""
        paths = Paths(comp_name, root)
        return cls(comp_name, None, read_json(paths.cv) if paths.cv.is_file() else {},
                   read_json(paths.metrics) if paths.metrics.is_file() else {})

    def recorded(self, key: str):
        """cv.json's `metric`, `source`, `quick` or `test_rows` (a run older than that kept them in its metrics)."""
        return self.cv.get(key, self.metrics.get(key))

    @property
    def chosen(self) -> str:
        """The ensemble's member kind and calibration, `finetune+none`."""
        c = self.cv.get("choice") or {"kind": self.metrics.get("member"), "method": self.metrics.get("calibration")}
        return f"{c['kind']}+{c['method']}"

    def demo_test(self, score: str) -> float | None:
        """The submission's `score` on the demo's secret test labels (None off the demo)."""
        return self.cv.get("demo_test", {}).get(score, self.metrics.get(f"demo_test_{score}"))
