"""The modern finetuning recipe as params (issue 30): EMA of weights, mixup/cutmix, label smoothing, a
TrivialAugment policy and a second-scale TTA view. Each changes training when on; all off, a step is the plain one
bit for bit; an interrupted EMA run resumes to the uninterrupted run's weights."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import tiny_params
from pipeline.core.errors import ConfigError
from pipeline.core.io import read_json
from pipeline.core.paths import Paths
from pipeline.core.sections import AugmentParams, FinetuneParams
from pipeline.data.datasets import TTA, build_transform, reseed
from pipeline.stages import finetune
from pipeline.training import checkpoint
from pipeline.training.engine import train_step
from pipeline.training.recipe import Recipe
from test_honest_scores import COMP, copy_upstream, probabilities

CPU = torch.device("cpu")


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))


def _batches(n=4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 256, (6, 3, 4, 4), generator=g, dtype=torch.uint8),
             torch.randint(0, 5, (6,), generator=g)) for _ in range(n)]


def _train(ft: FinetuneParams | None):
    """Weights after 4 SGD steps, plain (ft None) or with the recipe of `ft`; and the recipe."""
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    recipe = Recipe(ft, 5, net, (0, 0)) if ft is not None else None
    for step, (x, y) in enumerate(_batches()):
        train_step(net, x, y, optimizer, CPU, recipe=recipe, step=step)
    return net, recipe


def test_the_recipe_all_off_is_the_plain_step_bit_for_bit():
    plain, _ = _train(None)
    off, recipe = _train(FinetuneParams())
    assert recipe.evaluated is off and recipe.ema is None and recipe.mixup is None
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), off.state_dict().values()))


def test_ema_follows_the_trained_weights_with_timms_warmed_up_decay():
    """The first update copies the weights (decay 0); step s then keeps min(decay, 1 - s^(-2/3)) of the average."""
    raw = []
    net = _net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    recipe = Recipe(FinetuneParams(ema_decay=0.6), 5, net, (0, 0))
    for step, (x, y) in enumerate(_batches()):
        train_step(net, x, y, optimizer, CPU, recipe=recipe, step=step)
        raw.append({k: v.clone() for k, v in net.state_dict().items()})
    expected = raw[0]
    for s, weights in enumerate(raw[1:], start=1):
        decay = min(0.6, 1 - (1 + s) ** (-2 / 3))
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in weights}
    ema = recipe.evaluated.state_dict()
    assert recipe.evaluated is recipe.ema.module and not torch.equal(ema["1.weight"], raw[-1]["1.weight"])
    for k in ema:
        torch.testing.assert_close(ema[k], expected[k], rtol=1e-5, atol=1e-6)


def test_mixup_and_cutmix_train_on_soft_targets_drawn_per_step_from_the_runs_seed():
    x = torch.rand(6, 3, 8, 8) * 255
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    state = np.random.get_state()[1].copy()
    for ft in (FinetuneParams(mixup=0.4), FinetuneParams(cutmix=1.0), FinetuneParams(mixup=0.4, cutmix=1.0)):
        recipe = Recipe(ft, 5, _net(), (3, 1))
        mixed, target = recipe.inputs(x.clone(), y, step=7)
        again, same = recipe.inputs(x.clone(), y, step=7)
        _, other = Recipe(ft, 5, _net(), (3, 1)).inputs(x.clone(), y, step=8)
        assert target.shape == (6, 5) and torch.allclose(target.sum(1), torch.ones(6))
        assert ((target > 0) & (target < 1)).any(), "soft targets"
        assert not torch.equal(mixed, x) and torch.equal(mixed, again) and torch.equal(target, same)
        assert not torch.equal(target, other), "another step, another draw"
        logits = torch.randn(6, 5)
        assert recipe.loss(logits, target) == pytest.approx(float(-(target * logits.log_softmax(1)).sum(1).mean()))
    assert np.array_equal(np.random.get_state()[1], state), "numpy's global random state is left as it was"


def test_label_smoothing_smooths_the_targets_and_goes_into_mixups_soft_targets():
    logits, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    recipe = Recipe(FinetuneParams(label_smoothing=0.1), 5, _net(), (0, 0))
    assert recipe.loss(logits, y) == pytest.approx(float(F.cross_entropy(logits, y, label_smoothing=0.1)))
    assert recipe.loss(logits, y) != pytest.approx(float(F.cross_entropy(logits, y)))
    mixed = Recipe(FinetuneParams(mixup=0.4, mixup_prob=0.0, label_smoothing=0.1), 5, _net(), (0, 0))
    _, target = mixed.inputs(torch.rand(6, 3, 8, 8), y, 0)  # no batch mixed: the smoothed one-hot targets
    assert torch.allclose(target.max(1).values, torch.full((6,), 0.9 + 0.1 / 5))


def test_mixup_with_an_odd_batch_is_refused_in_one_line():
    with pytest.raises(ConfigError) as e:
        tiny_params(**{f"{COMP}.finetune.mixup": 0.2, f"{COMP}.finetune.batch_size": 7})
    line = str(e.value).splitlines()[1].strip()
    assert line.startswith(f"{COMP}.finetune.batch_size: must be even with mixup") and line.endswith("got 7")
    tiny_params(**{f"{COMP}.finetune.mixup": 0.2, f"{COMP}.finetune.batch_size": 8})


def test_the_trivial_policy_draws_one_op_per_image_never_a_flip_and_keeps_greyscale():
    rng = np.random.default_rng(0)
    still = dict(shift=0, scale=0, rotate=0, brightness_contrast=0)
    for channels in (3, 1):
        image = rng.integers(0, 256, (16, 24, channels), dtype=np.uint8)
        assert torch.equal(build_transform(AugmentParams(**still))(image=image)["image"],
                           torch.from_numpy(image).permute(2, 0, 1)), "no policy: nothing"
        transform = build_transform(AugmentParams(**still, policy="trivial"))
        outs = []
        for seed in range(60):
            reseed(transform, seed)
            outs.append(transform(image=image)["image"].numpy())
            assert outs[-1].shape == (channels, 16, 24) and outs[-1].dtype == np.uint8
        reseed(transform, 5)
        assert np.array_equal(transform(image=image)["image"].numpy(), outs[5]), "seeded per image"
        original = image.transpose(2, 0, 1)
        assert len({o.tobytes() for o in outs}) > 20, "many ops at many strengths"
        assert any(np.array_equal(o, original) for o in outs), "the identity is one of the ops"
        assert not any(np.array_equal(o, original[:, :, ::-1]) for o in outs), "never a flip"
    tiny_params(**{f"{COMP}.finetune.augment.policy": "trivial"})  # State Farm (no flips) takes it


def test_the_zoom_out_view_changes_the_input_and_keeps_its_shape():
    x = torch.rand(2, 3, 24, 32) * 255
    out = TTA["zoom_out"](x)
    assert out.shape == x.shape and not torch.allclose(out, x)
    centre = torch.nn.functional.interpolate(x, size=(21, 28), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[..., 1:22, 2:30], centre)
    assert tiny_params(**{f"{COMP}.finetune.tta": ["identity", "zoom_out"]}).comp(COMP).finetune.tta[1] == "zoom_out"


@pytest.mark.parametrize("changes", [{"ema_decay": 0.9}, {"mixup": 0.4}, {"cutmix": 1.0}, {"label_smoothing": 0.1},
                                     {"augment.policy": "trivial"}], ids=lambda c: next(iter(c)))
def test_each_technique_changes_the_finetuned_network(pipeline_run, tmp_path, monkeypatch, changes):
    """On the tiny run, against the same fold finetuned with everything off (the fixture's). With EMA, the raw
    network trains exactly as without (same training losses), and the EMA's weights are what is saved and predicts."""
    root, _, _ = pipeline_run
    paths = copy_upstream(root, tmp_path)
    plain = Paths(COMP, root).fold_model("finetune", 0)
    for name in ("head.safetensors", "params.json", "oof.csv", "test.npy"):
        paths.fold_model("head", 0).mkdir(parents=True, exist_ok=True)
        (paths.fold_model("head", 0) / name).write_bytes((Paths(COMP, root).fold_model("head", 0) / name).read_bytes())
    monkeypatch.chdir(tmp_path)
    params = tiny_params(**{f"{COMP}.finetune.{k}": v for k, v in changes.items()})
    finetune.run(params, COMP, "main", 0, tmp_path)
    out = paths.fold_model("finetune", 0)
    saved, before = load_file(out / "model.safetensors"), load_file(plain / "model.safetensors")
    assert not all(torch.equal(saved[k], before[k]) for k in saved)
    assert not np.array_equal(probabilities(out), probabilities(plain))
    history = [h.get("train_loss") for h in read_json(out / "params.json")["history"]]
    if "ema_decay" in changes:
        assert history == [h.get("train_loss") for h in read_json(plain / "params.json")["history"]]
        *_, (_, val_loader, _), network, _ = finetune.setup(params, COMP, "main", 0, paths, CPU)
        network.load_state_dict(saved)
        np.testing.assert_allclose(finetune.predict(network, val_loader, CPU, params.model(COMP, "main").finetune.tta),
                                   probabilities(out), atol=1e-6)
    else:
        assert history != [h.get("train_loss") for h in read_json(plain / "params.json")["history"]]


def test_an_interrupted_ema_run_resumes_to_the_uninterrupted_runs_weights(pipeline_run, tmp_path, monkeypatch):
    """Killed after its first epoch's checkpoint, the run resumes from it (EMA included) and saves what an
    uninterrupted run saves, bit for bit."""
    root, _, _ = pipeline_run
    params = tiny_params(**{f"{COMP}.finetune.ema_decay": 0.9, f"{COMP}.finetune.epochs": 3})
    runs = {}
    for name in ("whole", "killed"):
        paths = copy_upstream(root, tmp_path / name)
        head = Paths(COMP, root).fold_model("head", 0)
        paths.fold_model("head", 0).mkdir(parents=True)
        for f in head.iterdir():
            (paths.fold_model("head", 0) / f.name).write_bytes(f.read_bytes())
        monkeypatch.chdir(tmp_path / name)
        if name == "killed":
            save = checkpoint.Checkpoint.save

            def save_then_die(self, state, epoch, history):
                save(self, state, epoch, history)
                if epoch == 1:
                    raise KeyboardInterrupt

            monkeypatch.setattr(checkpoint.Checkpoint, "save", save_then_die)
            with pytest.raises(KeyboardInterrupt):
                finetune.run(params, COMP, "main", 0, tmp_path / name)
            monkeypatch.setattr(checkpoint.Checkpoint, "save", save)
            torch.manual_seed(123)  # the resumed run must not depend on what ran before it in this process
        finetune.run(params, COMP, "main", 0, tmp_path / name)
        runs[name] = paths.fold_model("finetune", 0)
    a, b = (load_file(runs[n] / "model.safetensors") for n in ("whole", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(probabilities(runs["whole"]), probabilities(runs["killed"]))
