"""timm backbones: name errors with suggestions, and offline local weights through timm's own loader."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from pipeline.config import FeaturesParams
from pipeline.errors import ModelError
from pipeline.models import create_backbone, create_head


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
    backbone = create_backbone(FeaturesParams(backbone="test_resnet", pretrained=True, weights_file=str(path)))
    source.reset_classifier(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(backbone.eval()(x), source.eval()(x))
    torch.manual_seed(2)
    random = create_backbone(FeaturesParams(backbone="test_resnet", pretrained=False))
    with torch.no_grad():
        assert not torch.allclose(random.eval()(x), source(x))


def test_missing_weights_file_says_what_to_give(tmp_path):
    fp = FeaturesParams(backbone="test_resnet", pretrained=True, weights_file=str(tmp_path / "none.safetensors"))
    with pytest.raises(ModelError, match="does not exist"):
        create_backbone(fp)


def test_head_maps_features_to_class_logits():
    head = create_head(64, 10, 32, 0.5)
    assert head(torch.randn(4, 64)).shape == (4, 10)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in head)
    assert any(isinstance(m, torch.nn.Dropout) for m in head)
