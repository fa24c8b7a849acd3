"""The download stage: exact Kaggle layouts in, a checked index out; every broken archive a clear error."""

import zipfile

import pandas as pd
import pytest

from conftest import jpeg_bytes, read_zip, tiny_params, write_zip
from pipeline.stages import download
from pipeline.core.errors import ArchiveError
from pipeline.core.competitions import get_competition
from pipeline.data.demo import write_demo_archive
from pipeline.core.paths import Paths


def demo_zip(tmp_path, comp_name, seed=0):
    params = tiny_params()
    comp = get_competition(comp_name)
    return write_demo_archive(comp, params.comp(comp_name).data.demo, seed, tmp_path / f"{comp.slug}.zip")


def run_on(tmp_path, comp_name, archive_path, **changes):
    params = tiny_params(**{f"{comp_name}.data.source": str(archive_path), **changes})
    return download.run(params, comp_name, tmp_path / "root")


def test_demo_archives_have_kaggles_exact_layout(tmp_path):
    dc = read_zip(demo_zip(tmp_path, "dogscats"))
    assert sorted(dc) == ["sample_submission.csv", "test.zip", "train.zip"]
    (tmp_path / "train.zip").write_bytes(dc["train.zip"])
    train_names = set(read_zip(tmp_path / "train.zip"))
    assert "train/cat.0.jpg" in train_names and "train/dog.5.jpg" in train_names
    sf = read_zip(demo_zip(tmp_path, "statefarm"))
    assert {"driver_imgs_list.csv", "sample_submission.csv"} <= set(sf)
    assert any(n.startswith("imgs/train/c9/img_") for n in sf) and any(n.startswith("imgs/test/img_") for n in sf)
    header = sf["sample_submission.csv"].decode().splitlines()[0]
    assert header == "img,c0,c1,c2,c3,c4,c5,c6,c7,c8,c9"


def test_demo_answers_stay_outside_the_archive_and_match_its_test_images(tmp_path):
    comp = get_competition("statefarm")
    answers = tmp_path / "answers.csv"
    archive = write_demo_archive(comp, tiny_params().comp("statefarm").data.demo, 0, tmp_path / "a.zip", answers)
    labels = pd.read_csv(answers, dtype=str)
    names = read_zip(archive)
    assert not any("answer" in n or "label" in n for n in names)
    assert {f"imgs/test/{i}" for i in labels["id"]} == {n for n in names if n.startswith("imgs/test/")}
    assert set(labels["label"]) <= set(comp.classes)


def test_demo_archive_is_deterministic_in_seed(tmp_path):
    a = demo_zip(tmp_path / "a", "statefarm").read_bytes()
    b = demo_zip(tmp_path / "b", "statefarm").read_bytes()
    c = demo_zip(tmp_path / "c", "statefarm", seed=1).read_bytes()
    assert a == b and a != c


@pytest.mark.parametrize("comp_name", ["dogscats", "statefarm"])
def test_download_indexes_every_image_and_orders_test_like_the_sample(tmp_path, comp_name):
    params = tiny_params()
    raw = download.run(params, comp_name, tmp_path)
    comp = get_competition(comp_name)
    train = pd.read_csv(raw / "train.csv", dtype=str)
    test = pd.read_csv(raw / "test.csv", dtype=str)
    sample = pd.read_csv(raw / "files" / "sample_submission.csv", dtype=str)
    assert list(test["id"]) == list(sample[comp.id_column])
    assert set(train["label"]) == set(comp.classes)
    assert not train["id"].duplicated().any()
    for container, member in zip(train["container"], train["member"]):
        with zipfile.ZipFile(raw / container) as zf:
            zf.getinfo(member)
    if comp.group_column:
        listed = pd.read_csv(raw / "files" / "driver_imgs_list.csv", dtype=str)
        assert dict(zip(listed["img"], listed["subject"])) == dict(zip(train["id"], train["group"]))
    assert not list(tmp_path.glob("data/*/.*tmp*"))


def _statefarm_files(tmp_path):
    return read_zip(demo_zip(tmp_path, "statefarm"))


def test_statefarm_older_layout_with_nested_zips_is_accepted(tmp_path):
    files = _statefarm_files(tmp_path)
    imgs = {k[len("imgs/"):]: v for k, v in files.items() if k.startswith("imgs/")}
    older = {
        "imgs.zip": write_zip(tmp_path / "imgs.zip", imgs).read_bytes(),
        "driver_imgs_list.csv.zip": write_zip(
            tmp_path / "d.zip", {"driver_imgs_list.csv": files["driver_imgs_list.csv"]}).read_bytes(),
        "sample_submission.csv.zip": write_zip(
            tmp_path / "s.zip", {"sample_submission.csv": files["sample_submission.csv"]}).read_bytes(),
    }
    raw = run_on(tmp_path, "statefarm", write_zip(tmp_path / "older.zip", older))
    assert len(pd.read_csv(raw / "train.csv")) == sum(k.startswith("train/") for k in imgs)


def test_statefarm_notebook_layout_without_imgs_folder_is_accepted(tmp_path):
    files = {k.removeprefix("imgs/"): v for k, v in _statefarm_files(tmp_path).items()}
    raw = run_on(tmp_path, "statefarm", write_zip(tmp_path / "flat.zip", files))
    assert len(pd.read_csv(raw / "test.csv")) == tiny_params().comp("statefarm").data.demo.test


def _expect(tmp_path, comp_name, files, *fragments, **changes):
    path = write_zip(tmp_path / "broken.zip", files)
    with pytest.raises(ArchiveError) as e:
        run_on(tmp_path, comp_name, path, **changes)
    for fragment in fragments:
        assert fragment in str(e.value)
    assert not (tmp_path / "root" / "data" / comp_name / "raw").exists(), "nothing half-written"


def test_missing_listed_image_is_named(tmp_path):
    files = _statefarm_files(tmp_path)
    victim = next(k for k in files if k.startswith("imgs/train/c3/"))
    del files[victim]
    _expect(tmp_path, "statefarm", files, "driver_imgs_list.csv lists 1 image(s) missing", victim.split("/")[-1],
            "download it again")


def test_test_image_without_sample_row_and_the_reverse(tmp_path):
    files = _statefarm_files(tmp_path)
    extra = dict(files, **{"imgs/test/img_999999.jpg": jpeg_bytes()})
    _expect(tmp_path, "statefarm", extra, "have no row in sample_submission.csv", "img_999999.jpg")
    victim = next(k for k in files if k.startswith("imgs/test/"))
    fewer = {k: v for k, v in files.items() if k != victim}
    _expect(tmp_path, "statefarm", fewer, "sample_submission.csv has 1 row(s) with no test image",
            victim.rsplit("/", 1)[1])


@pytest.mark.parametrize("bad_name", ["../evil.csv", "/etc/evil.csv", "imgs/../../evil.jpg"])
def test_path_traversal_is_refused(tmp_path, bad_name):
    files = dict(_statefarm_files(tmp_path), **{bad_name: b"x"})
    _expect(tmp_path, "statefarm", files, "unsafe entry", "refusing")
    assert not (tmp_path / "evil.csv").exists()


def test_symlink_is_refused(tmp_path):
    path = write_zip(tmp_path / "link.zip", _statefarm_files(tmp_path))
    with zipfile.ZipFile(path, "a") as zf:
        info = zipfile.ZipInfo("imgs/train/c0/link.jpg")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match="symbolic link"):
        run_on(tmp_path, "statefarm", path)


def test_zip_bomb_cap(tmp_path):
    _expect(tmp_path, "statefarm", _statefarm_files(tmp_path), "zip bomb", "data.max_extract_gib",
            **{"statefarm.data.max_extract_gib": 1e-5})


def test_wrong_layout_says_what_was_expected(tmp_path):
    files = {"pictures/a.jpg": jpeg_bytes(), "sample_submission.csv": b"img,c0\n"}
    _expect(tmp_path, "statefarm", files, "not in the layout of State Farm", "found 0 train and 0 test",
            "pictures/a.jpg", "driver_imgs_list.csv")


def test_dogscats_archive_given_to_statefarm_is_a_layout_error(tmp_path):
    path = demo_zip(tmp_path, "dogscats")
    with pytest.raises(ArchiveError, match="not in the layout of State Farm"):
        run_on(tmp_path, "statefarm", path)


def test_truncated_or_non_zip_archive(tmp_path):
    good = demo_zip(tmp_path, "dogscats").read_bytes()
    (tmp_path / "cut.zip").write_bytes(good[: len(good) // 2])
    with pytest.raises(ArchiveError, match="not a readable zip archive.*download it again"):
        run_on(tmp_path, "dogscats", tmp_path / "cut.zip")


def test_missing_local_archive_says_how_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="kaggle competitions download -c dogs-vs-cats-redux-kernels-edition"):
        run_on(tmp_path, "dogscats", tmp_path / "nope.zip")


def test_rerun_replaces_output_whole(tmp_path):
    params = tiny_params()
    raw = download.run(params, "dogscats", tmp_path)
    (raw / "stale.txt").write_text("left over")
    download.run(params, "dogscats", tmp_path)
    assert not (raw / "stale.txt").exists()
    assert raw == Paths("dogscats", tmp_path).raw


def test_unknown_competition_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="Unknown competition 'mnist'; known competitions are 'cactus', 'cassava', 'digits', 'dogscats', 'statefarm'"):
        download.run(tiny_params(), "mnist", tmp_path)


def _central_entry_patched(path, name: str, offset: int, value: int):
    """Set a 2-byte field of `name`'s central directory record (what zipfile lists members from): flags at +8,
    compression method at +10. Python's zipfile writes neither encrypted nor Deflate64 members itself."""
    data = bytearray(path.read_bytes())
    record = data.rindex(name.encode()) - 46
    assert data[record:record + 4] == b"PK\x01\x02"
    data[record + offset:record + offset + 2] = value.to_bytes(2, "little")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("offset, value, fragments", [
    (8, 0x1, ("encrypted (password-protected) entry", "without one")),
    (10, 9, ("zip method 9 (Deflate64)", "cannot read", "7-Zip")),
])
def test_encrypted_and_deflate64_members_are_named_in_one_line(tmp_path, offset, value, fragments):
    files = _statefarm_files(tmp_path)
    victim = next(k for k in files if k.startswith("imgs/train/c1/"))
    path = _central_entry_patched(write_zip(tmp_path / "odd.zip", files), victim, offset, value)
    with pytest.raises(ArchiveError) as e:
        run_on(tmp_path, "statefarm", path)
    assert victim in str(e.value) and all(f in str(e.value) for f in fragments) and "\n" not in str(e.value)
