"""`pipeline lr-find`: the learning-rate range test for the head and finetuning, with plots and a suggestion."""

import numpy as np
import pandas as pd
import pytest

from pipeline import cli, lr_find
from pipeline.paths import Paths


def test_range_test_sweeps_rates_until_the_loss_explodes_and_suggests_below_the_bottom(pipeline_run, monkeypatch):
    root, params, _ = pipeline_run
    monkeypatch.chdir(root)
    weights = (Paths("statefarm", root).model("head", 0) / "head.safetensors").read_bytes()
    found = lr_find.run(params, "statefarm", 0, steps=40, start=1e-5, end=100.0, root=root)
    assert set(found) == {"head", "finetune"}
    for stage, f in found.items():
        curve = pd.read_csv(Paths("statefarm", root).reports / f"lr_find_{stage}_fold0.csv")
        assert (np.diff(curve["lr"]) > 0).all() and curve["lr"].iloc[0] == pytest.approx(1e-5)
        assert len(curve) < 40, f"{stage}: a rate of 100 makes the loss explode and stops the sweep"
        assert f["suggested"] == pytest.approx(f["minimum"] / 10)
        assert curve["loss"].min() == pytest.approx(curve.loc[curve["lr"] == f["minimum"], "loss"].item())
        assert open(f["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert (Paths("statefarm", root).model("head", 0) / "head.safetensors").read_bytes() == weights


def test_lr_find_before_repro_says_what_to_run(tmp_path, monkeypatch, capsys):
    from conftest import TINY
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["lr-find", "dogscats", "1"]) == 1
    assert "dvc repro head@dogscats-1" in capsys.readouterr().err
