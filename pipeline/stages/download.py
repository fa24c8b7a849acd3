"""Stage `download@<comp>`: the competition's archive -> `data/<comp>/raw/`.

Inputs: `<comp>.data` in params.yaml (`source`: the built-in demo, `kaggle`, or a path to Kaggle's zip).
With `kaggle`, the official client downloads into `data/<comp>/kaggle/` (kept between runs: an up-to-date copy
is not fetched again; delete it to force a fresh download).
Outputs in `data/<comp>/raw/`: the zip(s) holding the images, the extracted CSVs, and the checked index
`train.csv` (id, label, group, container, member) and `test.csv` (id, container, member, in
sample_submission.csv's order); for the demo also its secret test labels, `demo_test_labels.csv`. Nothing is
written unless the whole archive passes the checks.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.core.competitions import get_competition
from pipeline.core.config import Params
from pipeline.core.io import atomic_dir, read_json, write_csv, write_json
from pipeline.core.paths import Paths
from pipeline.core.stage import stage_main
from pipeline.data import archive, demo, kaggle_api, layout


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link when possible: a real archive is several GB."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def fetch_archive(params: Params, comp_name: str, dst: Path, paths: Paths) -> None:
    """Put the competition's archive at `dst`, from the demo generator, Kaggle, or a local file."""
    comp = get_competition(comp_name)
    data = params.comp(comp_name).data
    if data.source == "demo":
        demo.write_demo_archive(comp, data.demo, params.seed, dst, answers=dst.parent / paths.demo_answers.name)
        return
    if data.source == "kaggle":
        _link_or_copy(kaggle_api.download_competition(comp.slug, paths.download), dst)
        return
    src = Path(data.source).expanduser()
    if not src.is_file():
        raise FileNotFoundError(
            f"{comp_name}.data.source points to {str(src)!r}, which does not exist. Download it with "
            f"`kaggle competitions download -c {comp.slug}` (after accepting the rules on "
            f"https://www.kaggle.com/c/{comp.slug}/rules) and set the path, or set source: kaggle to let the "
            "pipeline download it, or source: demo."
        )
    _link_or_copy(src, dst)


def run(params: Params, comp_name: str, root: Path = Path(".")) -> Path:
    """Fetch, check and index the archive; return the output folder."""
    comp = get_competition(comp_name)
    data = params.comp(comp_name).data
    paths = Paths(comp_name, root)
    with atomic_dir(paths.raw) as out:
        outer = out / f"{comp.slug}.zip"
        fetch_archive(params, comp_name, outer, paths)
        shown = {"demo": f"demo {outer.name}", "kaggle": f"Kaggle's {outer.name}"}.get(data.source, data.source)
        try:
            listing = archive.list_archive(outer, out, int(data.max_extract_gib * 2**30))
            train, test = layout.build_index(comp, listing, shown)
        except archive.ArchiveError as e:
            if data.source != "kaggle":
                raise
            # a broken download must not be reused by the next run
            (paths.download / outer.name).unlink(missing_ok=True)
            raise archive.ArchiveError(f"{e} (The broken download was deleted; the next run fetches it again.)") from None
        if outer.name not in set(train["container"]) | set(test["container"]):
            outer.unlink()  # its nested zips were extracted; no need to keep the images twice
        write_csv(out / "train.csv", train)
        write_csv(out / "test.csv", test)
        write_json(
            out / "summary.json",
            {
                "source": data.source,
                "train_images": len(train),
                "test_images": len(test),
                "classes": train["label"].value_counts().sort_index().to_dict(),
                "groups": int(train["group"].nunique()),
            },
        )
    return paths.raw


def summary(out: Path) -> str:
    s = read_json(out / "summary.json")
    return (f"{s['train_images']} train images in {len(s['classes'])} classes ({s['groups']} groups), "
            f"{s['test_images']} test images, from {s['source']}")


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv, summary=summary, wrote=lambda comp, model, fold: [Paths(comp).raw])


if __name__ == "__main__":
    main()
