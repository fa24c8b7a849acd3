import pytest
import yaml
from pydantic import ValidationError

from conftest import REPO, tiny_raw
from pipeline.core.config import load_params, parse_params
from pipeline.core.errors import ConfigError


def test_shipped_params_load_and_use_the_demo_offline():
    params = load_params(REPO / "params.yaml")
    assert params.competitions == ("dogscats", "statefarm", "digits")
    assert params.folds == (0, 1, 2, 3, 4)
    for comp in params.competitions:
        assert params.comp(comp).data.source == "demo"
    for comp in ("dogscats", "statefarm"):
        # the lesson's recipe, offline: ImageNet weights from an installed package, not the hub
        cp = params.comp(comp)
        assert cp.features.pretrained and cp.features.weights == "package"
    # and its MNIST: a from-scratch CNN, no flips
    digits = params.comp("digits")
    assert digits.features.backbone == "vgg_lesson" and not digits.features.pretrained
    assert digits.finetune.augment.hflip == 0 == digits.features.augment.hflip
    assert params.comp("statefarm").finetune.augment.hflip == 0 == params.comp("statefarm").features.augment.hflip
    assert "hflip" not in params.comp("statefarm").finetune.tta


def test_greyscale_and_non_logloss_competitions_refuse_what_cannot_apply():
    raw = tiny_raw()
    raw["digits"] = {"finetune": {"augment": {"rgb_shift": 0.1}}, "ensemble": {"calibration": "temperature"}}
    msg = _error(raw)
    assert "digits.finetune.augment.rgb_shift: must be 0 because Digit Recognizer's images are greyscale" in msg
    assert "digits.ensemble.calibration: must be 'auto' or 'none' because Digit Recognizer is scored by accuracy" in msg


def _error(raw) -> str:
    with pytest.raises(ConfigError) as e:
        parse_params(raw, "params.yaml")
    return str(e.value)


def test_unknown_key_names_the_key_the_near_miss_and_the_allowed_keys():
    msg = _error(tiny_raw(**{"dogscats.head.lrr": 0.1}))
    assert "dogscats.head.lrr: unknown key (did you mean 'lr'?); allowed keys are batch_size, conv_channels" in msg
    assert "statefarm.prepare.imagesize: unknown key (did you mean 'image_size'?)" in _error(
        tiny_raw(**{"statefarm.prepare.imagesize": [8, 8]}))
    assert "dogscat: unknown top-level key (did you mean 'dogscats'?)" in _error({**tiny_raw(), "dogscat": {}})


def test_one_line_per_wrong_type_even_where_a_library_would_convert():
    """true is no number and 2.0 no integer (pydantic's lax mode takes both); a size needs two sides in range."""
    msg = _error(tiny_raw(**{"dogscats.head.lr": True, "dogscats.head.epochs": 2.0, "dogscats.prepare.image_size":
                             [64, 8], "statefarm.features.image_size": [64, 64, 3], "digits.finetune.amp": "yes",
                             "digits.finetune.augment": [1]}))
    assert msg.splitlines()[1:] == [
        "  dogscats.prepare.image_size[1]: must be at least 16, got 8",
        "  dogscats.head.epochs: expected an integer, got 2.0",
        "  dogscats.head.lr: expected a number, got True",
        "  statefarm.features.image_size: expected a list of 2, got [64, 64, 3]",
        "  digits.finetune.augment: expected a mapping of keys to values, got [1]",
        "  digits.finetune.amp: expected true or false, got 'yes'"]


def test_a_speed_setting_in_its_old_place_says_where_it_moved():
    msg = _error(tiny_raw(**{"statefarm.finetune.num_workers": 2}))
    assert "statefarm.finetune.num_workers: moved to statefarm.speed.finetune_workers (it changes no result" in msg
    msg = _error(tiny_raw(**{"statefarm.models.main.features.batch_size": 8}))
    assert "statefarm.models.main.features.batch_size: moved to statefarm.speed.features_batch_size" in msg


def test_out_of_range_and_wrong_type_are_all_reported_at_once():
    msg = _error(tiny_raw(**{"dogscats.head.dropout": 1.5, "statefarm.head.epochs": "ten", "seed": -1}))
    assert "3 problem(s)" in msg
    assert "dogscats.head.dropout: must be between 0.0 and 0.95, got 1.5" in msg
    assert "statefarm.head.epochs: expected an integer, got 'ten'" in msg
    assert "seed" in msg


def test_choice_error_lists_allowed_values():
    msg = _error(tiny_raw(**{"dogscats.ensemble.calibration": "platt"}))
    assert "dogscats.ensemble.calibration: must be one of 'auto', 'temperature', 'clip' or 'none', got 'platt'" in msg


def test_statefarm_refuses_horizontal_flips_in_augmentation_and_tta():
    msg = _error(tiny_raw(**{"statefarm.finetune.augment.hflip": 0.5, "statefarm.features.augment.hflip": 0.5,
                             "statefarm.finetune.tta": ["identity", "hflip"]}))
    assert "statefarm.finetune.augment.hflip: must be 0" in msg and "statefarm.features.augment.hflip: must be 0" in msg
    assert "statefarm.finetune.tta: must not contain 'hflip'" in msg
    assert "texting, right" in msg


def test_dogscats_allows_flips():
    params = parse_params(tiny_raw(**{"dogscats.finetune.augment.hflip": 0.5}))
    assert params.comp("dogscats").finetune.augment.hflip == 0.5


def test_yaml_scientific_notation_without_dot_is_a_number():
    raw = yaml.safe_load("lr: 1e-3")
    assert raw["lr"] == "1e-3"  # what PyYAML does; the config accepts it anyway
    params = parse_params(tiny_raw(**{"dogscats.head.lr": raw["lr"]}))
    assert params.comp("dogscats").head.lr == pytest.approx(1e-3)


def test_unknown_competition_and_top_level_key():
    msg = _error({**tiny_raw(competitions=["dogscats", "mnist"]), "mnist": {}})
    assert "unknown competition 'mnist'" in msg
    assert "mnist: unknown top-level key" in msg


def test_folds_are_some_of_the_k_folds():
    """`fold_count` splits the rows; `folds` says which of them run (all, or a quick look at fewer)."""
    assert "fold_count: must be between 2 and 100, got 1" in _error(tiny_raw(folds=[0]))  # k from folds: 1
    quick = parse_params(tiny_raw(folds=[0, 2], fold_count=3, subsample=0.5))
    assert quick.folds == (0, 2) and quick.fold_count == 3 and quick.quick
    assert not parse_params(tiny_raw(fold_count=3)).quick
    assert "folds: the folds to train and score, ascending, each in 0..2" in _error(tiny_raw(folds=[0, 3],
                                                                                             fold_count=3))
    assert "folds: the folds to train" in _error(tiny_raw(folds=[1, 0], fold_count=3))
    assert "subsample: must be between 0.01 and 1.0, got 0" in _error(tiny_raw(subsample=0))


def test_source_must_be_demo_kaggle_or_zip():
    assert "must be 'demo', 'kaggle' or a path to a .zip; got 'kagle'" in _error(tiny_raw(**{"dogscats.data.source": "kagle"}))
    for source in ("demo", "kaggle", "~/downloads/x.zip"):
        assert parse_params(tiny_raw(**{"dogscats.data.source": source})).comp("dogscats").data.source == source


def test_unknown_tta_view():
    assert "unknown view 'rot90'" in _error(tiny_raw(**{"dogscats.finetune.tta": ["rot90"]}))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_params_are_frozen():
    params = parse_params(tiny_raw())
    with pytest.raises(ValidationError, match="frozen"):
        params.comp("dogscats").head.lr = 1.0


def test_to_dict_round_trips_every_value():
    params = parse_params(tiny_raw())
    assert parse_params(yaml.safe_load(yaml.safe_dump(params.to_dict()))) == params


def test_stage_command_line_reports_user_errors_without_a_traceback(tmp_path):
    import subprocess
    import sys

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(parse_params(tiny_raw()).to_dict()))
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "pipeline.stages.download", "mnist"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.startswith("error: Unknown competition 'mnist'") and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "pipeline.stages.finetune", "dogscats", "main", "7"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "fold 7 is not one of params.yaml's folds [0, 1, 2]" in out.stderr
    out = subprocess.run([sys.executable, "-m", "pipeline.stages.head", "dogscats", "big"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "model 'big' is not one of params.yaml's models ['main', 'cut']" in out.stderr


@pytest.mark.parametrize("stage", ["head", "finetune"])
def test_a_training_batch_of_one_is_refused(stage):
    msg = _error(tiny_raw(**{f"dogscats.{stage}.batch_size": 1}))
    assert f"dogscats.{stage}.batch_size: must be between 2" in msg


def test_weights_file_that_would_be_ignored_is_an_error():
    msg = _error(tiny_raw(**{"dogscats.features.weights_file": "w.safetensors"}))  # tiny params: pretrained false
    assert "dogscats.features.weights_file: is set but would be ignored" in msg and "weights: file" in msg


def test_weights_need_their_source():
    msg = _error(tiny_raw(**{"statefarm.features.pretrained": True, "statefarm.features.weights": "file",
                             "dogscats.features.pretrained": True, "dogscats.features.weights": "package"}))
    assert "statefarm.features.weights_file: weights: file needs the path" in msg
    assert "dogscats.features.weights: 'package' has weights for tf_efficientnet_lite0" in msg
    assert "'test_resnet'" in msg


def test_a_model_is_its_competitions_sections_with_its_overrides():
    params = parse_params(tiny_raw(**{"statefarm.models.cut.head": {"lr": 0.5}}))
    base, cut = params.model("statefarm", "main"), params.model("statefarm", "cut")
    assert base.head == params.comp("statefarm").head and base.seed == params.seed
    assert cut.head.lr == 0.5 and cut.head.epochs == base.head.epochs, "only the overridden key changes"
    assert cut.features.cut == 2 and cut.seed == 1 and cut.finetune.augment == base.finetune.augment


@pytest.mark.parametrize("changes, expected", [
    ({"statefarm.models.cut.features": {"cutt": 3}}, "statefarm.models.cut.features.cutt: unknown key (did you mean 'cut'?); allowed"),
    ({"statefarm.models.cut.optimizer": {}}, "statefarm.models.cut.optimizer: unknown key; a model overrides"),
    ({"statefarm.models.cut.finetune": {"augment": {"hflip": 0.5}}},
     "statefarm.models.cut.finetune.augment.hflip: must be 0 because"),
    ({"statefarm.models.cut.head": {"lr": -1}}, "statefarm.models.cut.head.lr: must be between"),
    ({"statefarm.models.extra": {}}, "statefarm.models.extra: is not in the top-level models ['main', 'cut']"),
    ({"models": ["main", "main"]}, "models: must be distinct names"),
    ({"models": ["main", "cut", "big"]}, "dogscats.models.big: missing; every model in the top-level models needs"),
    ({"statefarm.models": ["main"]}, "statefarm.models: expected a mapping of model name to overrides"),
    ({"statefarm.models.cut": [1]}, "statefarm.models.cut: expected a mapping (e.g. {} for no overrides)"),
    ({"models": ["a-b"]}, "models: must be distinct names of lowercase letters"),
])
def test_model_overrides_are_checked_like_the_sections_they_override(changes, expected):
    assert expected in _error(tiny_raw(**changes))


def test_an_unknown_model_names_the_list_and_the_entry_to_add():
    with pytest.raises(ConfigError, match=r"add it to the top-level `models:` list and give it a `dogscats.models.big:`"):
        parse_params(tiny_raw()).model("dogscats", "big")


def test_a_model_overriding_one_augmentation_key_keeps_the_others():
    params = parse_params(tiny_raw(**{"dogscats.models.cut.finetune": {"augment": {"rotate": 30}}}))
    base, cut = params.model("dogscats", "main").finetune.augment, params.model("dogscats", "cut").finetune.augment
    assert cut.rotate == 30 and cut.hflip == base.hflip == 0.5 and cut.shift == base.shift


def test_changing_finetunings_augmentation_leaves_the_features_stage_alone():
    """Two augmentation sections: the features stage depends on features.augment only (dvc.yaml lists sections)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert "${item.comp}.finetune" not in stages["features"]["params"]
    assert not any(p.endswith(".augment") for p in stages["features"]["params"] + stages["finetune"]["params"])


def test_competitions_given_as_one_name_is_one_problem():
    msg = _error(tiny_raw(competitions="dogscats"))
    assert msg.splitlines()[1:] == ["  competitions: expected a list, got 'dogscats'"]
