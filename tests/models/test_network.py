import copy

import pytest
import timm
import torch
from torch import nn

from semiclust.errors import SemiclustError
from semiclust.models.backbones import create_backbone
from semiclust.models.heads import UnitPrototypes, WeightNormPrototypes
from semiclust.models.network import Network
from semiclust.config.loader import resolve as validate
from tests.helpers import TINY_RECIPE


def network(**model_changes) -> Network:
    raw = copy.deepcopy(TINY_RECIPE)
    raw["model"].update(model_changes)
    return Network(validate(raw).model, in_chans=1, num_classes=4, prototypes="unit")


def test_small_image_backbones_are_registered_with_timm():
    assert timm.is_model("tinyconv") and timm.is_model("resnet18_cifar")
    resnet = create_backbone("resnet18_cifar", {}, in_chans=3)
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    assert isinstance(resnet.maxpool, nn.Identity) and resnet.num_features == 512
    assert resnet(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    plain = create_backbone("resnet18", {}, in_chans=1).eval()  # any timm architecture, no download
    assert plain(torch.randn(1, 1, 32, 32)).shape == (1, 512)


def test_bad_backbone_kwargs_are_a_clear_error():
    with pytest.raises(SemiclustError, match="rejected model.backbone.kwargs"):
        create_backbone("tinyconv", {"widthz": [4]}, in_chans=1)


def test_groups_of_each_resolution_share_one_backbone_call_and_keep_their_order():
    net = network()
    net.eval()
    groups = [torch.randn(3, 1, 8, 8), torch.randn(5, 1, 4, 4), torch.randn(2, 1, 8, 8)]
    calls = []
    net.backbone.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    embeddings, scores = net(groups)
    assert calls == [5, 5]  # 3 + 2 rows at 8 px in one call, 5 rows at 4 px in another
    separately = torch.cat([net.head(net.backbone(g)) for g in groups])
    torch.testing.assert_close(embeddings, separately, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(10))
    assert scores.shape == (10, 4)


@pytest.mark.parametrize("update", [True, False])
def test_local_crops_and_batchnorm_running_statistics(update):
    net = network(local_crops_update_bn=update)
    net.train()
    global_only = copy.deepcopy(net)
    crops = torch.randn(4, 1, 8, 8)
    net([crops, torch.randn(4, 1, 4, 4) + 5.0])  # global and local crops in one step
    global_only([crops])
    first = lambda m: next(l for l in m.backbone.modules() if isinstance(l, nn.BatchNorm2d))  # noqa: E731
    assert torch.equal(first(net).running_mean, first(global_only).running_mean) != update
    assert first(net).momentum == 0.1  # restored after the call


def test_prototype_layers():
    unit = UnitPrototypes(8, 5)
    torch.testing.assert_close(unit.weight.norm(dim=1), torch.ones(5))
    z = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    assert unit(z).abs().max() <= 1.0 + 1e-6  # cosines
    wn = WeightNormPrototypes(8, 5)
    with torch.no_grad():
        wn.g.mul_(3.0)
    expected = z @ (3.0 * torch.nn.functional.normalize(wn.v, dim=1)).t()
    torch.testing.assert_close(wn(z), expected)
