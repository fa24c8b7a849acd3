"""Stage `inputs`: params.yaml checked, and the files outside the repository it points at fingerprinted.

Runs on every `dvc repro` (`always_changed`) and costs well under a second, so a typo anywhere in params.yaml
fails the run even when no other stage would run. One stage for every competition (one interpreter start and one
dvc.lock update per run, not one per competition). Outputs in `data/inputs/<comp>/`:
- `source.json`: the content hash of a local archive (`data.source: <path>.zip`);
- `weights-<model>.json`, per model in `models`: the content hash of its backbone's weights file, or of the
  installed weights package's file.
`download` and `features` depend on these small files, so replacing an archive or a weights file at the same
path re-runs what reads it, and rewriting an identical fingerprint re-runs nothing. Hashes are remembered by
(size, mtime, inode) in `data/<comp>/inputs-state.json`, so a multi-GB archive is read once, not per run.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from pathlib import Path

from pipeline.core.competitions import get_competition
from pipeline.core.config import Params
from pipeline.core.errors import ConfigError
from pipeline.core.io import atomic_dir, read_json, write_json
from pipeline.core.paths import INPUTS, Paths
from pipeline.core.stage import stage_main
from pipeline.training.weights import PACKAGES, package_file


class Hasher:
    """md5 of files, remembered by their stat so an unchanged file is not read again."""

    def __init__(self, state: Path):
        self.state = state
        self.known = read_json(state) if state.is_file() else {}

    def __call__(self, path: Path) -> dict:
        path = Path(path).resolve()
        st = path.stat()
        key = f"{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
        if key not in self.known:
            digest = hashlib.md5()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
            self.known[key] = digest.hexdigest()
        return {"md5": self.known[key], "size": st.st_size}

    def save(self) -> None:
        write_json(self.state, self.known)


def source_fingerprint(params: Params, comp_name: str, md5: Hasher) -> dict:
    """What the download stage will read: the demo's params, or the archive's content."""
    comp = get_competition(comp_name)
    source = params.comp(comp_name).data.source
    if source == "demo":
        return {"source": "demo"}  # made from params alone, which DVC already tracks
    if source == "kaggle":
        # Kaggle's archive is fixed, and the kept copy is made by `download` itself: hashing it here would make
        # the run after every download re-run download. To fetch again: delete data/<comp>/kaggle/, then
        # `dvc repro -f download@<comp>`.
        return {"source": "kaggle", "slug": comp.slug}
    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"{comp_name}.data.source points to {str(path)!r}, which does not exist. Download it with "
            f"`kaggle competitions download -c {comp.slug}` and set the path, or set source: kaggle or demo."
        )
    return {"source": "file", **md5(path)}


def weights_fingerprint(params: Params, comp_name: str, model: str, md5: Hasher) -> dict:
    """What a model's features stage will load: random init, the hub's named weights, or a file's content."""
    fp = params.model(comp_name, model).features
    key = params.model_key(comp_name, model, "features")
    if not fp.pretrained:
        return {"pretrained": False}
    if fp.weights == "hub":
        return {"weights": "hub", "backbone": fp.backbone}  # the hub's files cannot be checked offline
    if fp.weights == "file":
        path = Path(fp.weights_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"{key}.weights_file: {str(path)!r} does not exist; give the path to "
                              f"a .safetensors or .pth file of weights for {fp.backbone!r}.")
        return {"weights": "file", **md5(path)}
    pkg = PACKAGES[fp.backbone.split(".")[0]]
    path = package_file(fp.backbone, key)
    return {"weights": "package", "package": pkg.pip_name, "version": importlib.metadata.version(pkg.pip_name),
            **md5(Path(os.fspath(path)))}


def run(params: Params, comp_name: str, root: Path = Path(".")) -> Path:
    paths = Paths(comp_name, root)
    md5 = Hasher(paths.inputs_state)
    source = source_fingerprint(params, comp_name, md5)
    weights = {model: weights_fingerprint(params, comp_name, model, md5) for model in params.models}
    with atomic_dir(paths.inputs) as out:
        write_json(out / "source.json", source)
        for model, fingerprint in weights.items():
            write_json(out / paths.of(model).weights_fingerprint.name, fingerprint)
    md5.save()
    return paths.inputs


def run_all(params: Params, root: Path = Path(".")) -> list[Path]:
    return [run(params, comp_name, root) for comp_name in params.competitions]


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run_all, per_comp=False, argv=argv, wrote=lambda *_: [INPUTS],
               summary=lambda outs: "params.yaml checked; input fingerprints written")


if __name__ == "__main__":
    main()
