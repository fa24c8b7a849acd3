"""`pipeline overfit`: the lesson's "start by overfitting" check, which a network that can learn passes and one that
cannot (a learning rate far too small) fails."""

from conftest import tiny_params
from pipeline import cli
from pipeline.commands import overfit
from pipeline.core.paths import Paths


def test_the_tiny_models_memorise_two_batches_and_a_frozen_learning_rate_does_not(pipeline_run):
    root, params, _ = pipeline_run
    found = overfit.run(params, "statefarm", 0, root=root)
    for stage in ("head", "finetune"):
        f = found[stage]
        assert f["learns"] and f["last"] < 0.05 < f["first"], (stage, f)
        assert f["rows"] == 16, "two batches of 8"
        assert (Paths("statefarm", root).reports / f"overfit_main_{stage}_fold0.png").is_file()
    stuck = overfit.run(tiny_params(**{"statefarm.head.lr": 1e-7}), "statefarm", 0, ("head",), root=root)["head"]
    assert not stuck["learns"] and stuck["last"] > 0.5 * stuck["first"]


def test_the_command_says_whether_it_can_learn_and_exits_non_zero_when_not(pipeline_run, monkeypatch, capsys):
    import yaml

    root, params, _ = pipeline_run
    monkeypatch.chdir(root)
    try:
        (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(**{"statefarm.head.lr": 1e-7}).to_dict()))
        assert cli.main(["overfit", "statefarm", "--stage", "head", "--steps", "20"]) == 3
        out = capsys.readouterr().out
        assert "did not get below 0.05: check statefarm.head.lr" in out and "fixed rows" in out
        (root / "params.yaml").write_text(yaml.safe_dump(params.to_dict()))
        assert cli.main(["overfit", "statefarm", "--stage", "head"]) == 0
        assert "it can learn: now regularise" in capsys.readouterr().out
    finally:  # the session's fixture root: leave no params.yaml for other tests
        (root / "params.yaml").unlink(missing_ok=True)
