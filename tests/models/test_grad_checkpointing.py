"""`model.grad_checkpointing`: the dry run's estimate falls with it, gradients and BatchNorm statistics stay
what they are without it, and a backbone that cannot checkpoint is a clear error."""
import copy

import pytest
import torch

from semiclust import api
from semiclust.engine.checkpoint import load_checkpoint
from semiclust.engine.dry_run import activation_bytes_per_image, probe_shapes, saved_bytes
from semiclust.errors import SemiclustError
from semiclust.models.network import Network
from tests.helpers import TINY_RECIPE, make_recipe, timm_recipe

VIT = ("test_vit", {"img_size": 16, "patch_size": 4, "dynamic_img_size": True})
RESNET = ("test_resnet", {})


def recipe_for(backbone: tuple[str, dict], checkpointing: bool, **model):
    raw = timm_recipe(*backbone)
    raw["model"].update(grad_checkpointing=checkpointing, **model)
    return make_recipe(raw)


def twin_networks(backbone: tuple[str, dict], **model) -> tuple[Network, Network]:
    """The same network (same weights) without and with gradient checkpointing."""
    torch.manual_seed(0)
    plain = Network(recipe_for(backbone, False, **model).model, 3, 4, "unit")
    checkpointed = Network(recipe_for(backbone, True, **model).model, 3, 4, "unit")
    checkpointed.load_state_dict(plain.state_dict())
    return plain, checkpointed


def test_saved_bytes_counts_what_autograd_keeps_once_per_storage():
    """Linear keeps its input (for the weight's gradient), ReLU its output, which the next Linear keeps too
    (the same storage, counted once); weights are parameters and not counted: 5 x (4 + 8) floats."""
    network = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    assert saved_bytes(network, torch.randn(5, 4)) == 5 * (4 + 8) * 4


@pytest.mark.parametrize("backbone, at_most", [(VIT, 0.5), (RESNET, 0.9)])
def test_the_activation_estimate_is_clearly_smaller_with_checkpointing(backbone, at_most):
    plain, checkpointed = twin_networks(backbone)
    recipe = recipe_for(backbone, True)
    without, with_it = (activation_bytes_per_image(n, recipe, 3) for n in (plain, checkpointed))
    assert with_it < at_most * without, (with_it, without)


@pytest.mark.parametrize("backbone", [VIT, RESNET])
def test_one_backward_gives_the_same_gradients_and_batchnorm_statistics(backbone):
    plain, checkpointed = twin_networks(backbone, local_crops_update_bn=False)  # frozen stats on small crops too
    recipe = recipe_for(backbone, True)
    generator = torch.Generator().manual_seed(1)
    crops = [torch.randn(shape, generator=generator) for shape in probe_shapes(recipe, 3, 4)]
    for network in (plain, checkpointed):
        network.train()
        embeddings, scores = network(crops)
        (scores.logsumexp(dim=1).mean() + embeddings.square().sum()).backward()
    gradients = [(name, a.grad, b.grad) for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters())]
    assert all(b is not None for _, _, b in gradients)
    worst = max((a - b).abs().max().item() for _, a, b in gradients)
    assert worst <= 1e-6, worst
    for (name, a), b in zip(plain.named_buffers(), checkpointed.buffers()):  # running stats moved once, not twice
        assert torch.equal(a, b), name


def test_training_with_checkpointing_ends_with_the_same_weights(tmp_path):
    raw = timm_recipe(*RESNET)
    summaries = [api.train(make_recipe(copy.deepcopy(raw)), tmp_path / "plain")]
    raw["model"]["grad_checkpointing"] = True
    summaries.append(api.train(make_recipe(raw), tmp_path / "checkpointed"))
    first, second = (load_checkpoint(s.checkpoint).method for s in summaries)
    assert max((first[k].float() - second[k].float()).abs().max().item() for k in first) < 1e-4
    assert summaries[0].result.top1 == summaries[1].result.top1


def test_a_backbone_without_checkpointing_is_named_and_the_dry_run_says_it_is_on():
    raw = copy.deepcopy(TINY_RECIPE)
    raw["model"]["grad_checkpointing"] = True
    with pytest.raises(SemiclustError, match="backbone 'tinyconv' does not support gradient checkpointing"):
        Network(make_recipe(raw).model, 1, 4, "unit")
    from semiclust.render import dry_run_rows

    recipe = recipe_for(RESNET, True)
    rows = dict(dry_run_rows(recipe, api.dry_run(recipe)))
    assert "with gradient checkpointing" in rows["activations"]
