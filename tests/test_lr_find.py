"""`pipeline lr-find`: the learning-rate range test for the head and finetuning, with plots and a suggestion."""

import numpy as np
import pandas as pd
import pytest

from pipeline import cli

from pipeline.commands import lr_find
from pipeline.core.paths import Paths


def test_range_test_sweeps_rates_until_the_loss_explodes_and_suggests_below_the_bottom(pipeline_run, monkeypatch):
    root, params, _ = pipeline_run
    monkeypatch.chdir(root)
    weights = (Paths("statefarm", root).fold_model("head", 0) / "head.safetensors").read_bytes()
    found = lr_find.run(params, "statefarm", 0, steps=40, start=1e-5, end=100.0, root=root)
    assert set(found) == {"head", "finetune"}
    for stage, f in found.items():
        curve = pd.read_csv(Paths("statefarm", root).reports / f"lr_find_main_{stage}_fold0.csv")
        assert (np.diff(curve["lr"]) > 0).all() and curve["lr"].iloc[0] == pytest.approx(1e-5)
        assert len(curve) < 40, f"{stage}: a rate of 100 makes the loss explode and stops the sweep"
        assert f["suggested"] == pytest.approx(f["minimum"] / 10)
        assert curve["loss"].min() == pytest.approx(curve.loc[curve["lr"] == f["minimum"], "loss"].item())
        assert open(f["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert (Paths("statefarm", root).fold_model("head", 0) / "head.safetensors").read_bytes() == weights


def test_lr_find_before_repro_says_what_to_run(tmp_path, monkeypatch, capsys):
    from conftest import TINY
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["lr-find", "dogscats", "1"]) == 1
    assert "dvc repro head@dogscats-main" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--steps", "0"], ["--start", "0"], ["--start", "1", "--end", "0.1"]])
def test_lr_find_refuses_a_sweep_that_cannot_be_made(tmp_path, monkeypatch, capsys, args):
    from conftest import TINY
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["lr-find", "dogscats", *args]) == 1
    assert "lr-find needs 0 < --start < --end and --steps >= 3" in capsys.readouterr().err


def test_suggestion_sits_on_the_falling_part_of_the_curve():
    rates = list(np.geomspace(1e-6, 1.0, 61))
    losses = [2.3 - 1.5 / (1 + np.exp(-(np.log10(r) + 3) * 3)) for r in rates[:50]] + [1.0, 1.5, 3.0, 6.0, 9.0]
    found = lr_find.suggest(rates[:55], losses)
    assert found["minimum"] == rates[49] and found["suggested"] < found["minimum"]
    assert 3e-4 < found["steepest"] < 3e-3, "the sigmoid falls fastest at 1e-3"
