"""What a code competition's notebook needs, as two folders Kaggle takes: a dataset (the trained networks the
ensemble uses, its choice, the record and params that prediction reads, and this project as a wheel) and a
kernel (its metadata and a short script). `Bundle` reads the dataset's `bundle/` back, on Kaggle.

Layout of the dataset folder: `dataset-metadata.json`, `wheels/*.whl`, `bundle/manifest.json`,
`bundle/<comp>.yaml` (the record), and per model used `bundle/<model>/backbone.safetensors`, `meta.json`,
`head/fold<k>.safetensors`, `finetune/fold<k>.safetensors` (only the kinds the ensemble weighs).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.competitions import RECORDS, Competition, load_record
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.io import atomic_dir, read_json, write_json, write_text
from pipeline.core.sections import ModelParams, PrepareParams, SpeedParams

DATASET_LIMIT_BYTES = 100 * 2**30
"""Kaggle's largest dataset (100 GB, its documented limit per dataset)."""
MANIFEST = "manifest.json"


def slugs(comp: Competition) -> tuple[str, str]:
    """The dataset's and the kernel's slug: Kaggle derives a slug from its title, so each title is its slug."""
    return f"{comp.name}-pipeline-models", f"{comp.name}-pipeline-submission"


@dataclass(frozen=True)
class Bundle:
    """A dataset's `bundle/` folder as the notebook reads it."""

    folder: Path
    manifest: dict

    @classmethod
    def read(cls, folder: Path) -> "Bundle":
        return cls(Path(folder), read_json(Path(folder) / MANIFEST))

    @property
    def comp(self) -> Competition:
        return load_record(self.folder / f"{self.manifest['competition']}.yaml")

    @property
    def prepare(self) -> PrepareParams:
        return PrepareParams.model_validate(self.manifest["prepare"])

    @property
    def speed(self) -> SpeedParams:
        return SpeedParams.model_validate(self.manifest["speed"])

    def model(self, name: str) -> ModelParams:
        return ModelParams.model_validate(self.manifest["models"][name])

    def meta(self, name: str) -> dict:
        return read_json(self.folder / name / "meta.json")

    def weights(self, model: str, stage: str, fold: int | None = None) -> Path:
        return self.folder / model / ("backbone.safetensors" if stage == "backbone" else f"{stage}/fold{fold}.safetensors")


def _wheel(out: Path) -> Path:
    """This project as a wheel, built from its checkout with the venv's setuptools (no index, no network)."""
    project = Path(__file__).resolve().parents[2]
    if not (project / "pyproject.toml").is_file():
        raise PipelineError(f"pipeline notebook builds this project's wheel from its checkout, but {project} holds no "
                            "pyproject.toml; run it from a clone installed with `pip install -e .`.")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--quiet", "-w", str(out), str(project)], capture_output=True, text=True)
    wheels = sorted(out.glob("pipeline-*.whl"))
    if built.returncode or not wheels:
        last = (built.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(f"building this project's wheel failed ({last}); `pip install setuptools wheel` in this "
                            "environment, then run pipeline notebook again.")
    return wheels[0]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def check_size(folder: Path, limit: int = DATASET_LIMIT_BYTES) -> int:
    """The dataset folder's size; a one-line error when Kaggle would refuse it."""
    size = folder_bytes(folder)
    if size > limit:
        raise PipelineError(f"the dataset folder {folder} holds {size / 2**30:.2f} GiB, over Kaggle's {limit / 2**30:.3g} "
                            "GiB per dataset; ship fewer or smaller models (ensemble.members, a smaller backbone), "
                            "then run pipeline notebook again.")
    return size


def write_dataset(out: Path, comp: Competition, manifest: dict, files: dict[str, Path], owner: str,
                  wheels: list[Path], limit: int = DATASET_LIMIT_BYTES) -> int:
    """The dataset folder `out`: metadata, wheels (this project's, then `wheels`), `bundle/` with the manifest,
    the record and `files` (bundle-relative name -> source). Written whole or not at all; returns its size."""
    dataset_slug, _ = slugs(comp)
    with atomic_dir(out) as tmp:
        write_json(tmp / "dataset-metadata.json", {"title": dataset_slug, "id": f"{owner}/{dataset_slug}",
                                                   "licenses": [{"name": "CC0-1.0"}]})
        (tmp / "wheels").mkdir()
        _wheel(tmp / "wheels")
        for wheel in wheels:
            shutil.copyfile(wheel, tmp / "wheels" / wheel.name)
        bundle = tmp / "bundle"
        for name, source in files.items():
            (bundle / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, bundle / name)
        shutil.copyfile(RECORDS / f"{comp.name}.yaml", bundle / f"{comp.name}.yaml")
        write_json(bundle / MANIFEST, manifest)
        size = check_size(tmp, limit)
    return size


KERNEL = '''"""{title}: `pipeline`'s submission to {comp_title}, written by `pipeline notebook {comp}` at commit {commit}
(CV {metric} {cv}). Kaggle runs it offline on the hidden test set: it installs the project's wheel from the dataset
{dataset} and runs the same decode -> TTA -> fold ensemble -> calibration -> submission code as `dvc repro`
(pipeline/kernel/predict.py), writing /kaggle/working/submission.csv."""

import glob
import subprocess
import sys

DATASET, COMPETITION = "{dataset_slug}", "{comp_slug}"


def attached(slug):
    """Where Kaggle mounted an input: /kaggle/input/<slug>, or below another folder of /kaggle/input."""
    found = [p for pattern in ("", "*/", "*/*/") for p in sorted(glob.glob(f"/kaggle/input/{{pattern}}{{slug}}"))]
    if not found:
        sys.exit(f"/kaggle/input holds no {{slug}}: attach it to this notebook (kernel-metadata.json lists it).")
    return found[0]


data = attached(DATASET)
# wherever Kaggle unpacked the uploaded wheels.zip and bundle.zip below the dataset's folder
wheels = sorted(glob.glob(f"{{data}}/**/*.whl", recursive=True))
bundle = sorted(glob.glob(f"{{data}}/**/manifest.json", recursive=True), key=len)
if not wheels or not bundle:
    sys.exit(f"{{data}} lacks the wheels or bundle/manifest.json that `pipeline notebook` wrote: attach its dataset.")
subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--ignore-installed",
                *wheels], check=True)

from pipeline.kernel.predict import main  # noqa: E402  (installed just above)

main(bundle[0].rsplit("/", 1)[0], attached(COMPETITION), "/kaggle/working/submission.csv")
'''


def write_kernel(out: Path, comp: Competition, owner: str, commit: str, cv: dict) -> Path:
    """The kernel folder `out`: `kernel-metadata.json` (internet off, the competition and dataset attached) and the
    script. Returns the script's path."""
    dataset_slug, kernel_slug = slugs(comp)
    code = f"{kernel_slug}.py"
    with atomic_dir(out) as tmp:
        write_text(tmp / code, KERNEL.format(title=kernel_slug, comp_title=comp.title, comp=comp.name,
                                             commit=commit[:12] or "unknown", metric=comp.metric,
                                             cv=cv.get(comp.metric), dataset=f"{owner}/{dataset_slug}",
                                             dataset_slug=dataset_slug, comp_slug=comp.slug))
        write_json(tmp / "kernel-metadata.json", {
            "id": f"{owner}/{kernel_slug}", "title": kernel_slug, "code_file": code, "language": "python",
            "kernel_type": "script", "is_private": True, "enable_gpu": comp.notebook_accelerator == "gpu",
            "enable_tpu": False, "enable_internet": False, "dataset_sources": [f"{owner}/{dataset_slug}"],
            "competition_sources": [comp.slug], "kernel_sources": [], "model_sources": []})
    return out / code


def owner_name(given: str | None) -> str:
    """The Kaggle user who will own the dataset and kernel: `--owner`, else the configured credentials' username
    (KAGGLE_USERNAME, or kaggle.json in KAGGLE_CONFIG_DIR or ~/.kaggle), read without contacting Kaggle."""
    import json
    import os

    if given:
        return given
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    config = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle") / "kaggle.json"
    try:
        return json.loads(config.read_text())["username"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError("pipeline notebook needs the Kaggle user who will own the dataset and notebook: pass "
                          "--owner <username>, or set KAGGLE_USERNAME, or save kaggle.json in ~/.kaggle.") from None
