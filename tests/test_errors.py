"""Bad input a user can cause: a clear message naming the fix, no traceback from the stage command line, and
nothing half-written."""

import zipfile

import pytest
import torch
import yaml

from conftest import TINY, tiny_params
from pipeline.stages import download, features, head, prepare
from pipeline.data.demo import write_demo_archive
from pipeline.core.competitions import get_competition
from pipeline.core.errors import ImageError


def _params_file(tmp_path, monkeypatch, **changes):
    raw = {**TINY, **changes}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)


def _stage_error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    _params_file(tmp_path, monkeypatch, device="cuda")
    err = _stage_error(features.main, ["dogscats", "main"], capsys)
    assert "device: 'cuda' was asked for in params.yaml but torch sees no GPU" in err


def test_a_stage_run_before_its_inputs_says_what_to_run(tmp_path, monkeypatch, capsys):
    _params_file(tmp_path, monkeypatch)
    err = _stage_error(features.main, ["statefarm", "main"], capsys)
    assert "cannot be read" in err and "dvc repro prepare@" in err
    err = _stage_error(head.main, ["statefarm", "main"], capsys)
    assert "re-run `dvc repro prepare@<comp>`" in err


def test_a_damaged_image_behind_an_intact_zip_directory_is_named(tmp_path):
    """The zip's table of contents is fine, one member's compressed bytes are not: a raw BadZipFile or zlib
    error before; now the member, the archive and the fix."""
    comp = get_competition("statefarm")
    path = write_demo_archive(comp, tiny_params().comp("statefarm").data.demo, 0, tmp_path / "sf.zip")
    with zipfile.ZipFile(path) as zf:
        victim = next(i for i in zf.infolist() if i.filename.startswith("imgs/train/c3/"))
        start = victim.header_offset + 30 + len(victim.filename.encode()) + len(victim.extra)
    data = bytearray(path.read_bytes())
    middle = start + victim.compress_size // 2
    data[middle : middle + 16] = bytes(255 - b for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))
    params = tiny_params(**{"statefarm.data.source": str(path)})
    root = tmp_path / "root"
    download.run(params, "statefarm", root)
    with pytest.raises(ImageError) as e:
        prepare.run(params, "statefarm", root)
    assert victim.filename in str(e.value) and "Download it again" in str(e.value)
    assert not (root / "data" / "statefarm" / "cache").exists()


def test_a_killed_run_leaves_nothing_a_later_stage_reads_and_the_next_run_cleans_up(tmp_path):
    """A stage killed mid-write (SIGKILL: no cleanup runs) leaves only its temporary folder; the output it was
    writing does not exist, and the next run of that stage removes the leftover."""
    import signal
    import subprocess
    import sys

    from conftest import REPO
    from pipeline.core.io import atomic_dir

    target = tmp_path / "data" / "cache"
    code = ("import sys, time\nfrom pathlib import Path\nfrom pipeline.core.io import atomic_dir\n"
            "with atomic_dir(Path(sys.argv[1])) as out:\n    (out / 'train.npy').write_bytes(b'0' * 1000)\n"
            "    print('writing', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = list(target.parent.glob(".cache.tmp*"))
    assert len(leftovers) == 1 and not target.exists(), "nothing a later stage would read"
    with atomic_dir(target) as out:
        (out / "train.npy").write_bytes(b"1")
    assert not leftovers[0].exists() and (target / "train.npy").read_bytes() == b"1"
