"""The lesson's techniques as params: each does what it says, on a tiny run's real outputs."""

from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_params
from pipeline.stages import finetune, head
from pipeline.core.sections import AugmentParams
from pipeline.data.datasets import build_transform, reseed
from pipeline.core.io import read_json
from test_honest_scores import COMP, copy_upstream


def test_rgb_shift_moves_each_colour_channel_by_one_offset_within_its_limit():
    """Keras's channel_shift_range: every pixel of a channel moves by the same amount, at most the limit."""
    image = np.full((16, 16, 3), 128, np.uint8)
    transform = build_transform(AugmentParams(shift=0, scale=0, rotate=0, brightness_contrast=0, rgb_shift=0.1))
    offsets = []
    for seed in range(20):
        reseed(transform, seed)
        out = transform(image=image)["image"].numpy().astype(float) - 128  # CHW pixel values
        assert np.allclose(out, out[:, :1, :1], atol=1e-3), "one offset per channel"
        offsets.append(out[:, 0, 0])
    offsets = np.array(offsets)
    assert np.abs(offsets).max() <= 0.1 * 255 + 1e-3
    assert np.abs(offsets).max() > 5 and len({tuple(np.round(o)) for o in offsets}) > 10, "random per image"


def test_rising_dropout_schedule_goes_from_none_to_the_rate(pipeline_run, tmp_path, monkeypatch):
    root, _, _ = pipeline_run
    copy_upstream(root, tmp_path)
    monkeypatch.chdir(tmp_path)
    params = tiny_params(**{f"{COMP}.head.dropout": 0.6, f"{COMP}.head.epochs": 4,
                            f"{COMP}.head.dropout_schedule": "rising"})
    head.run(params, COMP, "main", 0, tmp_path)
    rates = [h["dropout"] for h in read_json(tmp_path / "models" / COMP / "main" / "head" / "fold0" / "params.json")["history"][1:]]
    assert rates == pytest.approx([0.0, 0.2, 0.4, 0.6])
    constant = tiny_params(**{f"{COMP}.head.dropout": 0.6, f"{COMP}.head.epochs": 4})
    head.run(constant, COMP, "main", 0, tmp_path)
    history = read_json(tmp_path / "models" / COMP / "main" / "head" / "fold0" / "params.json")["history"][1:]
    assert [h["dropout"] for h in history] == pytest.approx([0.6] * 4)


def test_finetune_from_a_random_head_starts_elsewhere_than_from_the_trained_one(pipeline_run, tmp_path, monkeypatch):
    root, params, _ = pipeline_run
    copy_upstream(root, tmp_path)
    monkeypatch.chdir(tmp_path)
    head.run(params, COMP, "main", 0, tmp_path)
    trained = read_json(tmp_path / "models" / COMP / "main" / "head" / "fold0" / "params.json")["history"][-1]["logloss"]
    random = tiny_params(**{f"{COMP}.finetune.init": "random"})
    finetune.run(random, COMP, "main", 0, tmp_path)
    start = read_json(tmp_path / "models" / COMP / "main" / "finetune" / "fold0" / "params.json")["history"][0]["logloss"]
    assert start != pytest.approx(trained, rel=1e-6)  # (both are near chance on tiny data)
    model = finetune.load_start(random, COMP, "main", 0, finetune.Paths(COMP, tmp_path))
    again = finetune.load_start(params, COMP, "main", 0, finetune.Paths(COMP, tmp_path))
    assert not all((a == b).all() for a, b in zip(model.head.state_dict().values(), again.head.state_dict().values()))
    import torch

    x = torch.randn(4, 3, 24, 32)
    assert not torch.allclose(model.eval()(x), again.eval()(x), atol=1e-4), "a different starting network"


def test_neighbour_smoothing_pulls_a_prediction_towards_its_neighbours_only():
    from pipeline.scoring.neighbours import neighbour_smooth

    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 0.05, (5, 8)) + 1, rng.normal(0, 0.05, (5, 8)) - 1])
    features[:, 0] += np.arange(10)  # two directions in cosine space: rows 0-4 and 5-9
    probs = np.tile([[0.9, 0.1]], (10, 1))
    probs[5:] = [0.2, 0.8]
    probs[0] = [0.4, 0.6]  # an odd frame among its cluster
    smoothed = neighbour_smooth(probs, features, k=3, weight=0.5)
    assert smoothed[0, 0] == pytest.approx(0.5 * 0.4 + 0.5 * 0.9)  # pulled back by its own cluster, not the other
    assert np.allclose(smoothed.sum(axis=1), 1)
    assert np.allclose(neighbour_smooth(probs, features, k=3, weight=0.0), probs)
    assert np.allclose(neighbour_smooth(probs[:1], features[:1], k=3, weight=0.5), probs[:1]), "no neighbour"


def test_neighbours_of_spatial_maps_are_searched_on_their_pooled_vectors_read_in_chunks():
    """A cut backbone's maps are averaged over space before the search (flattened, 80k test frames' maps are ~10
    GB): read in chunks or at once, from a memory-mapped file or not, the same vectors and the same neighbours."""
    from pipeline.scoring.neighbours import nearest, pooled

    rng = np.random.default_rng(2)
    maps = rng.normal(size=(23, 4, 3, 5)).astype(np.float16)
    expected = maps.astype(np.float32).mean(axis=(2, 3))
    assert np.allclose(pooled(maps, chunk=5), expected) and np.allclose(pooled(maps), expected)
    assert np.array_equal(pooled(expected), expected)  # pooled vectors pass through
    assert np.array_equal(nearest(maps, 3), nearest(expected, 3))


def test_out_of_fold_rows_find_neighbours_within_their_own_fold(tmp_path):
    """A validation row's smoothed prediction depends only on its own fold's rows (unseen drivers, as at test
    time): changing another fold's predictions does not move it."""
    from pipeline.scoring.neighbours import smooth_members
    from pipeline.core.paths import Paths

    paths = Paths(COMP, tmp_path)
    paths.features.mkdir(parents=True)
    rng = np.random.default_rng(1)
    np.save(paths.features / "train.npy", rng.normal(size=(40, 6)).astype(np.float16))
    np.save(paths.features / "test.npy", rng.normal(size=(10, 6)).astype(np.float16))
    fold_of = np.repeat([0, 1], 20)
    probs = rng.dirichlet(np.ones(3), size=40)
    first = {"head": probs.copy()}, {"head": rng.dirichlet(np.ones(3), size=10)}
    smooth_members(*first, paths, fold_of, 3, 0.5)
    other = probs.copy()
    other[20:] = rng.dirichlet(np.ones(3), size=20)
    second = {"head": other}, {"head": rng.dirichlet(np.ones(3), size=10)}
    smooth_members(*second, paths, fold_of, 3, 0.5)
    assert np.allclose(first[0]["head"][:20], second[0]["head"][:20])
    assert not np.allclose(first[0]["head"][:20], probs[:20])


def test_pseudo_labels_join_training_but_the_folds_predictions_ignore_its_labels(pipeline_run, tmp_path, monkeypatch):
    """Confident test rows (labelled by a first head) train a second head; the validation rows are in neither,
    so permuting the fold's labels still leaves its out-of-fold predictions unchanged."""
    from test_honest_scores import permute_fold_labels, probabilities

    root, _, _ = pipeline_run
    params = tiny_params(**{f"{COMP}.head.pseudo_label": 0.15})  # 10 classes: a random head is rarely confident
    runs = []
    for name, permute in (("plain", False), ("permuted", True)):
        paths = copy_upstream(root, tmp_path / name)
        if permute:
            permute_fold_labels(paths, 0)
        monkeypatch.chdir(tmp_path / name)
        head.run(params, COMP, "main", 0, tmp_path / name)
        runs.append(paths)
    info = read_json(runs[0].fold_model("head", 0) / "params.json")["pseudo_label"]
    assert 0 < info["test_rows"] <= info["of_test_rows"] and info["threshold"] == 0.15
    assert len(info["first_history"]) == params.comp(COMP).head.epochs + 1
    np.testing.assert_allclose(probabilities(runs[0].fold_model("head", 0)), probabilities(runs[1].fold_model("head", 0)),
                               rtol=0, atol=1e-6)
    plain = tmp_path / "off"
    copy_upstream(root, plain)
    monkeypatch.chdir(plain)
    head.run(tiny_params(), COMP, "main", 0, plain)
    assert read_json(plain / "models" / COMP / "main" / "head" / "fold0" / "params.json")["pseudo_label"] is None
    assert not np.allclose(probabilities(plain / "models" / COMP / "main" / "head" / "fold0"),
                           probabilities(runs[0].fold_model("head", 0))), "the pseudo-labelled rows changed the head"


def test_dropout_is_set_per_layer_and_can_spare_the_input():
    """The lesson's head has no dropout on its input; `head.input_dropout` sets that layer alone."""
    import torch

    from pipeline.training.models import create_head

    params = tiny_params(**{f"{COMP}.head.input_dropout": 0.0, f"{COMP}.head.dropout": 0.4})
    hp = params.comp(COMP).head
    model = create_head(16, 10, 8, hp.dropout, hp.input_dropout)
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert rates == [0.0, 0.4]
    assert isinstance(list(model)[0], torch.nn.BatchNorm1d) and isinstance(list(model)[1], torch.nn.Dropout)


def test_unfrozen_groups_train_at_decaying_rates_and_frozen_ones_stay_put(pipeline_run, tmp_path, monkeypatch):
    """`finetune.unfreeze: 2`: only the backbone's last two timm layer groups train, the last at lr *
    backbone_lr_ratio and the one before at `layer_decay` of that; everything earlier keeps the features
    stage's weights, tensor for tensor."""
    import torch
    from safetensors.torch import load_file

    root, _, _ = pipeline_run
    paths = copy_upstream(root, tmp_path)
    monkeypatch.chdir(tmp_path)
    params = tiny_params(**{f"{COMP}.finetune.unfreeze": 2, f"{COMP}.finetune.layer_decay": 0.5,
                            f"{COMP}.finetune.backbone_lr_ratio": 0.2})
    head.run(params, COMP, "main", 0, tmp_path)
    ft = params.model(COMP, "main").finetune
    *_, network, optimizer = finetune.setup(params, COMP, "main", 0, paths, torch.device("cpu"))
    rates = [g["lr"] for g in optimizer.param_groups]  # OneCycleLR has not touched them yet
    assert rates == pytest.approx([ft.lr * 0.2, ft.lr * 0.1, ft.lr])
    trainable = {n for n, p in network.backbone.named_parameters() if p.requires_grad}
    assert trainable and len(trainable) < len(list(network.backbone.parameters()))
    finetune.run(params, COMP, "main", 0, tmp_path)
    start = load_file(paths.features / "backbone.safetensors")
    end = {n.removeprefix("backbone."): t for n, t in
           load_file(paths.fold_model("finetune", 0) / "model.safetensors").items() if n.startswith("backbone.")}
    weights = [n for n in start if not n.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    moved = {n for n in weights if not torch.equal(start[n], end[n])}
    assert moved and moved <= trainable, "only the unfrozen groups' weights moved"


def test_a_model_can_see_the_cache_at_its_own_image_size(pipeline_run, tmp_path, monkeypatch):
    """`features.image_size` resizes the cached images for one model (features, finetuning and its predictions),
    so an ensemble can mix image sizes from one cache."""
    from pipeline.stages import features

    root, _, _ = pipeline_run
    paths = copy_upstream(root, tmp_path)
    monkeypatch.chdir(tmp_path)
    params = tiny_params(**{f"{COMP}.features.image_size": [48, 64], f"{COMP}.features.cut": 1,
                            f"{COMP}.features.aug_copies": 0})
    features.run(params, COMP, "main", tmp_path)
    meta = read_json(paths.features / "meta.json")
    cached = read_json(Path(root) / "data" / COMP / "features" / "main" / "meta.json")
    assert meta["image_size"] == [48, 64] and cached["image_size"] is None
    # test_resnet's level 1 is at 1/4 of the input: twice the cache's 24x32 gives twice the map
    assert meta["shape"][1:] == [12, 16]
    head.run(params, COMP, "main", 0, tmp_path)
    finetune.run(params, COMP, "main", 0, tmp_path)
    info = read_json(paths.fold_model("finetune", 0) / "params.json")
    assert info["features"]["image_size"] == [48, 64] and info["history"][-1]["logloss"] > 0


def test_unfreeze_zero_keeps_the_backbone_exactly_as_the_features_stage_left_it(pipeline_run, tmp_path, monkeypatch):
    """Frozen groups stay in eval mode while the head trains: their batch norm statistics do not drift, so the
    backbone is still the one whose features the head learnt from."""
    import torch
    from safetensors.torch import load_file

    root, _, _ = pipeline_run
    paths = copy_upstream(root, tmp_path)
    monkeypatch.chdir(tmp_path)
    params = tiny_params(**{f"{COMP}.finetune.unfreeze": 0})
    head.run(params, COMP, "main", 0, tmp_path)
    finetune.run(params, COMP, "main", 0, tmp_path)
    start = load_file(paths.features / "backbone.safetensors")
    end = load_file(paths.fold_model("finetune", 0) / "model.safetensors")
    assert all(torch.equal(start[n], end[f"backbone.{n}"]) for n in start), "running statistics included"
    *_, network, optimizer = finetune.setup(params, COMP, "main", 0, paths, torch.device("cpu"))
    network.train()
    assert not any(m.training for m in network.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert network.head.training and len(optimizer.param_groups) == 1
