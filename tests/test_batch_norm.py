"""Finetuning from pretrained weights keeps the backbone's batch norm statistics (issue 17): training on small
augmented batches must not move the features the head was trained on."""

import timm
import torch
from torch import nn

from pipeline.training.models import Classifier


def _network() -> Classifier:
    torch.manual_seed(0)
    backbone = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    return Classifier(backbone, nn.Linear(backbone.num_features, 3))


def _step(network: Classifier) -> None:
    network.train()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    x = torch.randn(8, 3, 32, 32) * 3 + 1  # far from the running statistics, as a new domain is
    loss = nn.functional.cross_entropy(network(x), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _stats(network: Classifier) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in network.backbone.modules() if isinstance(m, nn.BatchNorm2d)]


def test_fixed_statistics_stay_while_the_rest_trains():
    network = _network()
    network.fix_statistics()
    before = _stats(network)
    weights = [p.clone() for p in network.backbone.parameters()]
    _step(network)
    assert before and all(torch.equal(a, b) for a, b in zip(before, _stats(network)))
    assert any(not torch.equal(a, b) for a, b in zip(weights, network.backbone.parameters()))  # it still learns
    # in train mode the frozen-statistics network computes what it computes in eval mode (no dropout in it)
    x = torch.randn(4, 3, 32, 32)
    network.train()
    train_out = network.backbone(x)
    network.eval()
    assert torch.allclose(train_out, network.backbone(x), atol=1e-5)


def test_trained_statistics_move():
    network = _network()
    before = _stats(network)
    _step(network)
    assert any(not torch.equal(a, b) for a, b in zip(before, _stats(network)))


def test_synchronised_batch_norm_computes_what_the_network_computed():
    """`finetune.sync_bn` converts every batch norm layer, timm's BatchNormAct2d with its activation: in one
    process (nothing to synchronise) the converted network's outputs are the original's, in both modes."""
    import copy

    original, network = _network(), _network()
    network.sync_batch_norm()
    layers = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert layers and all(isinstance(m, nn.SyncBatchNorm) for m in layers)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for mode in (False, True):  # eval first: a train-mode pass moves the running statistics
            a, b = copy.deepcopy(original).train(mode), copy.deepcopy(network).train(mode)
            torch.testing.assert_close(b(x), a(x))
