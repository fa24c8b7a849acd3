"""The lesson's VGG-style CNN as a timm model: the timm API the pipeline uses on every backbone, and that it learns."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import timm
import torch
from timm.models import group_parameters

from pipeline.training.vgg import NoPretrainedWeightsError

WIDTHS = {"vgg_lesson": (32, 64, 128), "vgg_lesson_wide": (64, 128, 256)}
SIZES = [(28, 28), (32, 48)]


def make(name="vgg_lesson", seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("num_classes", 0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def images(chans=3, size=(28, 28), n=2, seed=1):
    return torch.randn(n, chans, *size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(WIDTHS))
@pytest.mark.parametrize("chans", [1, 3])
@pytest.mark.parametrize("size", SIZES)
def test_shapes_follow_feature_info(name, chans, size):
    model, x = make(name, in_chans=chans), images(chans, size)
    widths = WIDTHS[name]
    # each max pool halves the resolution and the next stage doubles the filters
    assert [f["num_chs"] for f in model.feature_info] == list(widths)
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8]
    assert [model.get_submodule(f["module"]) is model.stages[i] for i, f in enumerate(model.feature_info)] == [True] * 3
    assert model.num_features == widths[-1]
    with torch.no_grad():
        feats, levels = model.forward_intermediates(x)
        assert feats.shape == (2, widths[-1], size[0] // 8, size[1] // 8)
        assert torch.equal(feats, model.forward_features(x))
        assert [tuple(t.shape) for t in levels] == [(2, f["num_chs"], size[0] // f["reduction"], size[1] // f["reduction"])
                                                    for f in model.feature_info]
        pooled = model(x)
        assert pooled.shape == (2, model.num_features)
        assert torch.allclose(pooled, feats.mean((2, 3)), atol=1e-6)  # num_classes=0: the pooled features
        for k in range(3):
            only = model.forward_intermediates(x, indices=[k], intermediates_only=True, stop_early=True)
            assert len(only) == 1 and torch.equal(only[0], levels[k])
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)  # an int: the last n
        assert all(torch.equal(a, b) for a, b in zip(last_two, levels[1:], strict=True))
        assert torch.equal(model.forward_intermediates(x, indices=[-1], intermediates_only=True)[0], levels[2])
    with pytest.raises(AssertionError):
        model.forward_intermediates(x, indices=[3])


def test_smallest_input_is_8_pixels():
    model = make()
    with torch.no_grad():
        assert model.forward_features(images(size=(8, 8))).shape == (2, 128, 1, 1)


def test_features_only_extractor_matches_intermediates():
    model, x = make(), images()
    torch.manual_seed(0)  # the same initial weights: stem and stages are built first, in the same order
    extractor = timm.create_model("vgg_lesson", pretrained=False, features_only=True).eval()
    with torch.no_grad():
        got, want = extractor(x), model.forward_intermediates(x, intermediates_only=True)
    assert extractor.feature_info.channels() == [32, 64, 128]
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_classifier_head_logits_pre_logits_and_dropout():
    model, x = make(num_classes=10, drop_rate=0.5), images(n=4)
    assert model.get_classifier().out_features == 10 and model.head_drop.p == 0.5
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (4, 10)
        assert torch.equal(logits, model.forward_head(model.forward_features(x)))
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (4, model.head_hidden_size)
        assert model.head_hidden_size == 512
        model.train()
        assert not torch.equal(model(x), model(x))  # dropout is live in training


def test_reset_classifier():
    model, x = make(num_classes=10), images()
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, 128)
    assert not any(n.startswith(("pre_logits", "fc")) for n, _ in model.named_parameters())
    model.reset_classifier(5)
    assert not model.fc.training  # the new head takes the model's (eval) mode
    with torch.no_grad():
        assert model(x).shape == (2, 5)
        model.reset_classifier(0, "")  # no pooling: the last map itself
        assert torch.equal(model(x), model.forward_features(x))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("prune_head", [True, False])
@pytest.mark.parametrize("level", [0, 1, 2])
def test_pruning_keeps_the_maps(level, prune_head, size):
    model, x = make(num_classes=10), images(size=size)
    pruned = copy.deepcopy(model)
    assert pruned.prune_intermediate_layers([level], prune_head=prune_head) == [level]
    assert len(pruned.stages) == level + 1
    assert pruned.num_features == model.feature_info[level]["num_chs"]
    n_params = [sum(p.numel() for p in m.parameters()) for m in (pruned, model)]
    assert n_params[0] < n_params[1] if prune_head or level < 2 else n_params[0] == n_params[1]
    with torch.no_grad():
        want = model.forward_intermediates(x, intermediates_only=True)[level]
        got = pruned.forward_intermediates(x, indices=[level], intermediates_only=True, stop_early=True)[0]
        assert torch.equal(got, want)
        if prune_head or level < 2:  # timm's semantics: the head (and its pooling) goes, the map comes out
            assert pruned.num_classes == 0 and torch.equal(pruned(x), want)
        else:
            assert pruned(x).shape == (2, 10)


def test_pruning_with_last_n():
    model = make()
    assert model.prune_intermediate_layers(indices=1) == [2]  # timm's default: keep the last level
    assert len(model.stages) == 3


@pytest.mark.parametrize("num_classes", [0, 10])
@pytest.mark.parametrize("coarse", [True, False])
def test_group_parameters_stem_then_stages(coarse, num_classes):
    model = make(num_classes=num_classes)
    groups = [names for _, names in sorted(group_parameters(model, model.group_matcher(coarse=coarse)).items())]
    flat = [n for names in groups for n in names]
    assert Counter(flat) == Counter(n for n, _ in model.named_parameters())  # every parameter exactly once
    assert all(n.startswith("stem.") for n in groups[0]) and not any(n.startswith("stem.") for n in flat[len(groups[0]):])
    stage_of = [int(n.split(".")[1]) for names in groups[1:] for n in names if n.startswith("stages.")]
    assert stage_of == sorted(stage_of) and set(stage_of) == {0, 1, 2}
    if coarse:
        assert [{n.split(".")[1] for n in names} for names in groups[1:4]] == [{"0"}, {"1"}, {"2"}]
    if num_classes:  # the head, matched by no pattern, comes last
        assert all(n.startswith(("pre_logits", "fc")) for n in groups[-1])


@pytest.mark.parametrize("chans", [1, 3])
def test_pretrained_cfg_and_data_config(chans):
    model = make(num_classes=10, in_chans=chans)
    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg
    assert cfg["architecture"] == "vgg_lesson" and cfg["num_classes"] == 10 and cfg["fixed_input_size"] is False
    assert model.get_submodule(cfg["first_conv"]).in_channels == chans
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    data = timm.data.resolve_model_data_config(model)
    assert data["input_size"] == (chans, 28, 28)
    assert data["mean"] == (0.5,) * chans and data["std"] == (0.25,) * chans


@pytest.mark.parametrize("name", list(WIDTHS))
def test_pretrained_true_says_there_are_none(name):
    with pytest.raises(NoPretrainedWeightsError, match=r"no pretrained weights.*features\.pretrained: false"):
        timm.create_model(name, pretrained=True, num_classes=0)


def test_own_weights_still_load_through_timm():
    trained = make(seed=3)
    loaded = timm.create_model("vgg_lesson", pretrained=True, num_classes=0,
                               pretrained_cfg_overlay={"state_dict": trained.state_dict()})
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in trained.state_dict().items())


def test_grad_checkpointing_saves_activations_and_keeps_gradients():
    results, saved = [], []
    for enable in (False, True):
        model = make(num_classes=10).train()
        model.set_grad_checkpointing(enable)
        x = images(n=4).requires_grad_()
        count = [0]

        def pack(t):
            count[0] += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            outs = [model(x), model.forward_intermediates(x)[0]]
        saved.append(count[0])
        for out in outs:
            out.sum().backward()
        results.append((outs[0].detach(), x.grad.clone(), model.stem.conv.weight.grad.clone()))
    assert saved[1] < saved[0] / 2  # checkpointed stages keep only their inputs for the backward pass
    for plain, checkpointed in zip(*results, strict=True):
        torch.testing.assert_close(plain, checkpointed)


def _overfit(steps=12):
    torch.manual_seed(0)
    model = timm.create_model("vgg_lesson", pretrained=False, num_classes=10, in_chans=1).train()
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).sum().item()
    return losses, correct


def test_learns_random_labels():
    losses, correct = _overfit()
    assert losses[-1] < 0.2 * losses[0]  # random labels: only memorising them brings the loss down
    assert correct == 16
    assert _overfit() == (losses, correct)  # deterministic under torch.manual_seed
