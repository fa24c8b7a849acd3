"""Going real takes one line: with only `data.source` changed, the shipped params run the real recipe's sizes (the
demo's small ones live under `data.demo`), and prepare says what a real run will cost and what it keeps."""

import io
import zipfile

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO
from pipeline.core.config import parse_params, with_changes
from pipeline.stages import download, prepare

REAL = {"dogscats": (224, 224), "statefarm": (240, 320), "digits": (28, 28), "cassava": (384, 512), "cactus": (32, 32)}
DEMO = {"dogscats": (64, 64), "statefarm": (120, 160), "digits": (28, 28), "cassava": (60, 80), "cactus": (32, 32)}


def shipped(**changes):
    """params.yaml as shipped, with `changes` (dotted keys) set as `dvc exp run -S` would."""
    return parse_params(with_changes(yaml.safe_load((REPO / "params.yaml").read_text()), changes))


def statefarm_zip(path, size=(640, 480), drivers=("p012", "p021"), per_class=1, test=3):
    """A State Farm archive in Kaggle's current layout, written here (not by the demo generator): noisy 640x480
    frames like the real ones, `per_class` per class and driver."""
    rng = np.random.default_rng(0)

    def frame():
        buf = io.BytesIO()
        pixels = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize(size, Image.BILINEAR).save(buf, format="JPEG", quality=80)
        return buf.getvalue()

    rows, n = ["subject,classname,img"], 0
    with zipfile.ZipFile(path, "w") as zf:
        for driver in drivers:
            for c in range(10):
                for _ in range(per_class):
                    n += 1
                    zf.writestr(f"imgs/train/c{c}/img_{n}.jpg", frame())
                    rows.append(f"{driver},c{c},img_{n}.jpg")
        names = [f"img_{n + i + 1}.jpg" for i in range(test)]
        for name in names:
            zf.writestr(f"imgs/test/{name}", frame())
        zf.writestr("driver_imgs_list.csv", "\n".join(rows) + "\n")
        zf.writestr("sample_submission.csv", "img," + ",".join(f"c{c}" for c in range(10)) + "\n"
                    + "".join(f"{name}" + ",0.1" * 10 + "\n" for name in names))
    return path


@pytest.mark.parametrize("comp", sorted(REAL))
def test_the_source_alone_switches_between_the_demo_and_the_real_sizes(comp):
    assert shipped().comp(comp).prepare.image_size == DEMO[comp]
    for source in ("kaggle", f"~/{comp}.zip"):
        assert shipped(**{f"{comp}.data.source": source}).comp(comp).prepare.image_size == REAL[comp]


def test_a_real_layout_archive_is_cached_at_the_real_size_and_the_demo_at_its_own(tmp_path, capsys):
    archive = statefarm_zip(tmp_path / "state-farm-distracted-driver-detection.zip")
    real = shipped(**{"statefarm.data.source": str(archive), "statefarm.speed.prepare_workers": 1})
    download.run(real, "statefarm", tmp_path / "real")
    cache = prepare.run(real, "statefarm", tmp_path / "real")
    assert np.load(cache / "train.npy", mmap_mode="r").shape == (20, 240, 320, 3)
    assert np.load(cache / "test.npy", mmap_mode="r").shape == (3, 240, 320, 3)
    out = capsys.readouterr().out
    assert "statefarm: keeping 25% of the 640x480 images' pixels (prepare.image_size [240, 320])" in out
    assert "20 train + 3 test images at 240x320" in out

    demo = shipped(**{"statefarm.speed.prepare_workers": 1})
    download.run(demo, "statefarm", tmp_path / "demo")
    cache = prepare.run(demo, "statefarm", tmp_path / "demo")
    assert np.load(cache / "train.npy", mmap_mode="r").shape[1:] == (120, 160, 3)
    assert "keeping" not in capsys.readouterr().out  # the demo's own frames: nothing to say


def test_a_small_size_set_on_purpose_says_what_share_of_the_pixels_it_keeps(tmp_path, capsys):
    archive = statefarm_zip(tmp_path / "sf.zip", drivers=("p012",), test=1)
    params = shipped(**{"statefarm.data.source": str(archive), "statefarm.prepare.image_size": [120, 160],
                        "statefarm.speed.prepare_workers": 1})
    download.run(params, "statefarm", tmp_path)
    prepare.run(params, "statefarm", tmp_path)
    out = capsys.readouterr().out
    assert "statefarm: keeping 6% of the 640x480 images' pixels (prepare.image_size [120, 160])" in out


def test_the_estimate_scales_with_pixels_and_suggests_a_quick_look_without_a_gpu():
    from pipeline.training import estimate

    real = shipped(**{"statefarm.data.source": "kaggle"})
    small = shipped(**{"statefarm.data.source": "kaggle", "statefarm.prepare.image_size": [120, 160]})
    big, _ = estimate.seconds(real, "statefarm", 22_424, 79_726, gpu=False)
    little, _ = estimate.seconds(small, "statefarm", 22_424, 79_726, gpu=False)
    decode = (22_424 + 79_726) * estimate.DECODE / min(estimate.usable_cpus(), 16)
    assert big - decode == pytest.approx(4 * (little - decode))  # 4x the pixels
    cpu = estimate.lines(real, "statefarm", 22_424, 79_726, gpu=False)
    assert len(cpu) == 2 and "on this CPU" in cpu[0] and "rough" in cpu[0]
    assert cpu[1].startswith("no GPU: for a quick look, `dvc exp run -S 'folds=[0]' -S subsample=0.25 -S "
                             "'statefarm.prepare.image_size=[120,160]'`")
    gpu = estimate.lines(real, "statefarm", 22_424, 79_726, gpu=True)
    assert len(gpu) == 1 and "GPU" in gpu[0]
    other = shipped(**{"statefarm.data.source": "kaggle", "statefarm.features.backbone": "convnext_tiny",
                       "statefarm.features.weights": "hub"})
    assert "convnext_tiny timed as EfficientNet-Lite0" in estimate.lines(other, "statefarm", 10, 10, gpu=True)[0]
