"""Reading a Kaggle archive safely (layout.py turns what it lists into the image index).

Images stay inside their zips (100k loose files make DVC slow); only nested zips and CSVs are extracted. Every
member name is checked before anything is written: no `..`, no absolute paths, no links, and a cap on the total
uncompressed size against zip bombs.
"""

from __future__ import annotations

import posixpath
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.errors import ArchiveError
from pipeline.core.paths import EXTRACTED

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")



@dataclass
class Listing:
    """What was found in an archive: images by their normalised path, and the CSVs that were extracted."""

    images: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Normalised path (e.g. `train/c0/img_1.jpg`) -> (zip file relative to the output folder, member name)."""
    csvs: dict[str, Path] = field(default_factory=dict)
    """CSV file name -> extracted path."""
    total_bytes: int = 0


_READABLE = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


def _check_member(info: zipfile.ZipInfo, archive: str) -> None:
    name = info.filename
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise ArchiveError(
            f"{archive} holds an unsafe entry {name!r} (an absolute path or '..') that would be written outside "
            "the data folder; refusing to extract it. Download the archive again from Kaggle."
        )
    if info.flag_bits & 0x1:
        raise ArchiveError(
            f"{archive} holds an encrypted (password-protected) entry {name!r}; Kaggle's archives are not. Use the "
            "archive as Kaggle serves it, or extract it with its password and zip it again without one."
        )
    if info.compress_type not in _READABLE:
        raise ArchiveError(
            f"{archive} holds {name!r} compressed with zip method {info.compress_type}"
            f"{' (Deflate64)' if info.compress_type == 9 else ''}, which Python's zipfile cannot read (Windows' "
            "compressed folders write Deflate64 for large files). Use the archive as Kaggle serves it, or zip it "
            "again with `zip -r` or 7-Zip's Deflate."
        )
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ArchiveError(
            f"{archive} holds a symbolic link {name!r}; Kaggle archives hold none, and a link can point outside "
            "the data folder. Refusing to extract it; download the archive again from Kaggle."
        )


def _normalise(name: str) -> str:
    """Strip the optional `imgs/` folder of State Farm's newer archives."""
    return name[len("imgs/") :] if name.startswith("imgs/") else name


def _open_zip(path: Path, shown: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchiveError(
            f"{shown} is not a readable zip archive ({e}); it may be truncated. Delete it and download it again."
        ) from None


def list_archive(archive: Path, out: Path, max_bytes: int) -> Listing:
    """Check every member of `archive` (and of zips nested in it), extract nested zips and CSVs into `out`."""
    listing = Listing()
    _walk(archive, archive.name, out, listing, max_bytes)
    return listing


def _walk(path: Path, shown: str, out: Path, listing: Listing, max_bytes: int) -> None:
    with _open_zip(path, shown) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_member(info, shown)
            listing.total_bytes += info.file_size
        if listing.total_bytes > max_bytes:
            raise ArchiveError(
                f"{shown} would unpack to more than {max_bytes / 2**30:.3g} GiB (data.max_extract_gib); "
                "it may be a zip bomb. If the archive is genuine, raise data.max_extract_gib in params.yaml."
            )
        rel = path.relative_to(out).as_posix() if path.is_relative_to(out) else None
        nested = []
        for info in infos:
            name = info.filename
            if info.is_dir() or name.startswith("__MACOSX/"):
                continue
            lower = name.lower()
            if lower.endswith(".zip") or lower.endswith(".csv"):
                target = out / EXTRACTED / posixpath.basename(name)
                target.parent.mkdir(exist_ok=True)
                if target.exists():
                    raise ArchiveError(f"{shown} holds {posixpath.basename(name)!r} twice; expected it once.")
                _extract(zf, info, target, shown)
                if lower.endswith(".zip"):
                    nested.append((target, f"{shown}/{name}"))
                else:
                    listing.csvs[target.name] = target
            elif lower.endswith(IMAGE_SUFFIXES):
                if rel is None:
                    raise ArchiveError(f"internal: image container {path} is outside {out}")
                norm = _normalise(name)
                if norm in listing.images:
                    raise ArchiveError(f"{shown} holds the image {norm!r} twice (also in "
                                       f"{listing.images[norm][0]}); each image's path must be unique. Download the "
                                       "archive again.")
                listing.images[norm] = (rel, name)
    for target, nested_shown in nested:
        _walk(target, nested_shown, out, listing, max_bytes)


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, shown: str) -> None:
    tmp = target.with_name(target.name + ".part")
    try:
        with zf.open(info) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        tmp.unlink(missing_ok=True)
        raise ArchiveError(
            f"{shown}: entry {info.filename!r} cannot be read ({e}); the archive is damaged. Download it again."
        ) from None
    tmp.rename(target)
