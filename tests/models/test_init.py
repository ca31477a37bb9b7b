"""Initialisation from local checkpoints. Every file is built here, from a freshly seeded model, with
the module structure and wrappers the official code saves (SwAV, DINO, timm, semiclust), so the key
layouts are the real ones; each test proves a tensor landed (it differed before, equals it after)."""
from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.models.resnet import BasicBlock
from torchvision.models.resnet import ResNet as TorchvisionResNet

from semiclust import __version__
from semiclust.engine.checkpoint import Checkpoint, save_checkpoint
from semiclust.engine.setup import assemble_method, build_method, build_student
from semiclust.errors import SemiclustError
from semiclust.methods import METHODS
from semiclust.models.init import initialize, read_checkpoint
from semiclust.models.network import Network
from semiclust.config.schema import InitSpec
from tests.helpers import TINY_RECIPE, make_recipe

RESNET = {"name": "resnet18", "kwargs": {"layers": [1, 1, 1, 1]}}  # timm names = torchvision names
VIT = {"name": "test_vit", "kwargs": {"img_size": 32}}  # timm names = DINO's ViT names
CLASSES, HIDDEN, OUT = 4, 16, 8  # TINY_RECIPE's head: 16 hidden, 8 out


# ---------------------------------------------------------------- recipes and networks
def recipe(backbone: dict, method: str = "suave", init: dict | None = None, **head):
    raw = copy.deepcopy(TINY_RECIPE)
    raw["model"]["backbone"] = copy.deepcopy(backbone)
    raw["model"]["head"].update(head)
    if init is not None:
        raw["model"]["init"] = {k: str(v) if isinstance(v, Path) else v for k, v in init.items()}
    return make_recipe(raw, name=method)


def network(backbone: dict, method: str = "suave", in_chans: int = 3, seed: int = 0, **head) -> Network:
    torch.manual_seed(seed)
    kind = "weight_norm" if method in ("daino", "dino") else "unit"
    return Network(recipe(backbone, method, **head).model, in_chans, CLASSES, kind)


def init(net: Network, path: Path, **spec):
    return initialize(net, InitSpec(path=path, **spec))


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def assert_landed(before: dict, net: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    """Each Network key in `expected` differed before and now holds exactly the file's tensor."""
    after = net.state_dict()
    for key, tensor in expected.items():
        assert not torch.equal(before[key], tensor.to(before[key].dtype)), f"{key} already equal before init"
        assert torch.equal(after[key], tensor.to(after[key].dtype)), f"{key} did not land"


def assert_untouched(before: dict, net: nn.Module, prefix: str) -> None:
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


# ---------------------------------------------------------------- checkpoint builders
class DDP(nn.Module):
    """What DistributedDataParallel adds to every key of a wrapped model's state_dict: `module.`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


def scrambled(model: nn.Module, seed: int) -> nn.Module:
    """Random values in every tensor, BatchNorm buffers included, so any key tells file from model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5 if "running_var" in name
                             else torch.randn(tensor.shape, generator=generator))
            else:
                tensor.fill_(seed + 100)
    return model


def torchvision_resnet() -> nn.Module:
    """torchvision's ResNet with resnet18's blocks cut to one per stage (SwAV's and DINO's ResNets use
    torchvision's names); without fc, as SwAV's model has none and DINO replaces it by Identity."""
    model = TorchvisionResNet(BasicBlock, [1, 1, 1, 1])
    model.fc = nn.Identity()
    return model


def swav_model(seed: int, hidden: int = HIDDEN, out: int = OUT, clusters: int = 30) -> nn.Module:
    """SwAV's ResNet: backbone + projection_head (Linear, BN, ReLU, Linear) + prototypes, inside DDP."""
    model = torchvision_resnet()
    model.projection_head = nn.Sequential(nn.Linear(512, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                          nn.Linear(hidden, out))
    model.prototypes = nn.Linear(out, clusters, bias=False)
    return scrambled(DDP(model), seed)


def swav_file(tmp_path: Path, seed: int = 1, **shape) -> tuple[Path, dict]:
    """An official-style SwAV file: the DDP state_dict itself, in PyTorch's legacy (pre-1.6) format as
    SwAV's released files; returns its path and its state."""
    state = swav_model(seed, **shape).state_dict()
    path = tmp_path / "swav_800ep_pretrain.pth.tar"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return path, state


class DinoHead(nn.Module):
    """DINO's head: mlp (Linear, GELU, Linear, GELU, Linear) then a weight-normalised last_layer."""

    def __init__(self, in_dim: int, hidden: int = HIDDEN, bottleneck: int = OUT, out_dim: int = 50):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.last_layer = nn.Module()
        self.last_layer.weight_g = nn.Parameter(torch.ones(out_dim, 1))
        self.last_layer.weight_v = nn.Parameter(torch.randn(out_dim, bottleneck))


class MultiCropWrapper(nn.Module):
    """DINO's wrapper: `backbone` (classifier replaced by Identity) and `head`."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head


def vit(seed: int, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(VIT["name"], **{"num_classes": 0, **VIT["kwargs"], **kwargs})


def dino_file(tmp_path: Path, backbone: str = "vit") -> tuple[Path, dict]:
    """A DINO full checkpoint as main_dino.py saves it: student (DDP: `module.`), teacher (DDP only
    with BatchNorm, i.e. for ResNets), optimizer, epoch, args (argparse.Namespace), dino_loss, fp16_scaler."""
    def make(seed: int) -> MultiCropWrapper:
        body = vit(seed) if backbone == "vit" else torchvision_resnet()
        return MultiCropWrapper(body, DinoHead(body.num_features if backbone == "vit" else 512))

    student = scrambled(DDP(make(1)), 1)
    teacher = scrambled(make(2) if backbone == "vit" else DDP(make(2)), 2)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    for p in student.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    args = argparse.Namespace(arch="vit_small" if backbone == "vit" else "resnet50", patch_size=16, out_dim=65536,
                              norm_last_layer=False, use_fp16=True, global_crops_scale=(0.4, 1.0),
                              local_crops_number=8, lr=0.0005, data_path="/path/to/imagenet/train", output_dir=".",
                              seed=0, world_size=16, rank=0, gpu=0, dist_url="env://", saveckp_freq=20)
    state = {"student": student.state_dict(), "teacher": teacher.state_dict(), "optimizer": optimizer.state_dict(),
             "epoch": 800, "args": args, "dino_loss": {"center": torch.randn(1, 50)},
             "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                             "_growth_tracker": 0}}
    path = tmp_path / f"dino_{backbone}_full_checkpoint.pth"
    torch.save(state, path)
    return path, state


def network_keys(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    """The backbone entries of a file's state under `prefix`, renamed to Network backbone keys."""
    return {"backbone." + k[len(prefix):]: v for k, v in state.items()
            if k.startswith(prefix) and not k[len(prefix):].startswith(("projection_head.", "prototypes."))}


def semiclust_checkpoint(tmp_path: Path, method: str = "suave", backbone: dict | None = None) -> tuple[Path, nn.Module]:
    """A checkpoint as `semiclust train` writes it (the keys `init` reads, plus optimizer and extras)."""
    r = recipe(backbone or TINY_RECIPE["model"]["backbone"], method)
    torch.manual_seed(7)
    trained = build_method(r, CLASSES, 3, 10)
    for net in [trained.student] + ([trained.teacher] if hasattr(trained, "teacher") else []):
        scrambled(net, 11 if net is trained.student else 12).prototypes.normalize_()  # unit after every step
    optimizer = torch.optim.SGD(trained.student.parameters(), lr=0.1)
    path = tmp_path / "checkpoints" / "final.pt"
    save_checkpoint(Checkpoint.from_dict({"semiclust_version": __version__, "recipe": r.model_dump(mode="json"), "step": 20, "epoch": 2,
                     "method": trained.state_dict(), "optimizer": optimizer.state_dict(), "classes": ["a", "b", "c", "d"],
                     "classifier": {"prefix": "teacher" if hasattr(trained, "teacher") else "student",
                                    "prototypes": trained.prototypes, "in_chans": 3, "num_classes": CLASSES,
                                    "matched": False}}), path)
    return path, trained


# ---------------------------------------------------------------- one test per layout
def test_swav_file_initialises_the_backbone_and_ignores_head_and_prototypes(tmp_path):
    path, state = swav_file(tmp_path)
    net = network(RESNET)
    before = snapshot(net)
    report = init(net, path)
    assert_landed(before, net, network_keys(state, "module."))
    assert_untouched(before, net, "head.")
    assert_untouched(before, net, "prototypes.")
    assert report.format == "swav" and not report.missing and not report.unexpected
    assert "module.prototypes.weight" in report.ignored and "module.projection_head.0.weight" in report.ignored
    assert len(report.loaded) == len([k for k in net.state_dict() if k.startswith("backbone.")])
    summary = report.summary()
    assert f"init from swav file {path}: {len(report.loaded)} backbone tensors loaded" in summary
    assert "0 missing, 0 unexpected" in summary and "(projection_head, prototypes)" in summary


def test_swav_projection_head_loads_with_backbone_head(tmp_path):
    path, state = swav_file(tmp_path)
    net = network(RESNET)
    before = snapshot(net)
    report = init(net, path, what="backbone_head")
    head = {f"head.mlp.{k[len('module.projection_head.'):]}": v for k, v in state.items()
            if k.startswith("module.projection_head.")}
    assert set(head) >= {"head.mlp.0.weight", "head.mlp.1.running_var", "head.mlp.3.bias"}
    assert_landed(before, net, {**head, **network_keys(state, "module.")})
    assert_untouched(before, net, "prototypes.")
    assert report.ignored == ["module.prototypes.weight"]


def test_dino_full_checkpoint_uses_the_student_entry(tmp_path):
    path, state = dino_file(tmp_path)
    net = network(VIT, "daino")
    before = snapshot(net)
    report = init(net, path)
    assert_landed(before, net, network_keys(state["student"], "module.backbone."))
    assert_untouched(before, net, "head.")
    assert report.format == "dino" and report.entry == "'student'" and not report.missing
    assert "module.head.last_layer.weight_v" in report.ignored


def test_dino_teacher_entry_and_head(tmp_path):
    path, state = dino_file(tmp_path)
    net = network(VIT, "daino")
    before = snapshot(net)
    init(net, path, key="teacher", what="backbone_head")
    teacher = state["teacher"]  # a ViT teacher is not wrapped in DDP: no `module.`
    assert_landed(before, net, {**network_keys(teacher, "backbone."),
                                **{k: v for k, v in teacher.items() if k.startswith("head.mlp.")}})
    assert_untouched(before, net, "prototypes.")


def test_dino_backbone_only_file(tmp_path):
    state = scrambled(vit(3), 3).state_dict()  # dino_deitsmall16_pretrain.pth: plain ViT names
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(state, path)
    for layout in ("auto", "dino"):
        net = network(VIT, "daino")
        before = snapshot(net)
        report = init(net, path, format=layout)
        assert_landed(before, net, {f"backbone.{k}": v for k, v in state.items()})
        assert report.format == ("timm" if layout == "auto" else "dino") and not report.ignored


def test_dino_resnet_checkpoint(tmp_path):
    path, state = dino_file(tmp_path, backbone="resnet")
    net = network(RESNET, "daino")
    before = snapshot(net)
    report = init(net, path, key="teacher", what="backbone_head")  # a ResNet teacher is wrapped in DDP too
    teacher = state["teacher"]
    assert any(k.startswith("module.backbone.layer1.0.bn1.running_mean") for k in teacher)
    assert_landed(before, net, {**network_keys(teacher, "module.backbone."),
                                **{k[len("module."):]: v for k, v in teacher.items() if k.startswith("module.head.mlp.")}})
    assert report.format == "dino" and not report.missing and not report.unexpected


def test_timm_checkpoint_prefers_ema_and_drops_the_classifier(tmp_path):
    model = scrambled(vit(4, num_classes=10), 4)
    ema = scrambled(copy.deepcopy(model), 5)
    path = tmp_path / "model_best.pth.tar"  # what timm's train.py writes
    torch.save({"epoch": 3, "arch": "test_vit", "state_dict": model.state_dict(), "state_dict_ema": ema.state_dict(),
                "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(), "version": 2,
                "args": argparse.Namespace(model="test_vit", lr=0.1), "metric": np.float64(71.25)}, path)
    net = network(VIT)
    before = snapshot(net)
    report = init(net, path)
    ema_state = ema.state_dict()
    assert_landed(before, net, {f"backbone.{k}": v for k, v in ema_state.items() if not k.startswith("head.")})
    assert report.format == "timm" and report.entry == "'state_dict_ema'"
    assert sorted(report.ignored) == ["head.bias", "head.weight"] and not report.missing and not report.unexpected


@pytest.mark.parametrize("metadata", [{"format": "pt"}, {"format": "semiclust", "content": "backbone",
                                                          "architecture": "resnet18"}])
def test_timm_style_safetensors(tmp_path, metadata):
    torch.manual_seed(5)
    timm_model = scrambled(timm.create_model("resnet18", num_classes=10, layers=[1, 1, 1, 1]), 5)
    state = timm_model.state_dict()
    if metadata["format"] == "semiclust":  # `semiclust export` writes the backbone without a classifier
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    path = tmp_path / "model.safetensors"
    save_file(state, str(path), metadata=metadata)
    net = network(RESNET)
    before = snapshot(net)
    report = init(net, path)
    assert_landed(before, net, {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")})
    assert sorted(report.ignored) == (["fc.bias", "fc.weight"] if metadata["format"] == "pt" else [])
    assert report.format == ("timm" if metadata["format"] == "pt" else "safetensors")


def test_semiclust_checkpoint_with_all_loads_prototypes(tmp_path):
    path, trained = semiclust_checkpoint(tmp_path)
    net = network(TINY_RECIPE["model"]["backbone"])
    before = snapshot(net)
    report = init(net, path, what="all")
    assert_landed(before, net, trained.student.state_dict())
    assert report.format == "semiclust" and report.entry == "'student'"
    assert not report.missing and not report.unexpected and not report.ignored


def test_semiclust_teacher_and_a_suave_file_without_teacher(tmp_path):
    path, trained = semiclust_checkpoint(tmp_path / "daino", "daino")
    net = network(TINY_RECIPE["model"]["backbone"], "daino")
    before = snapshot(net)
    init(net, path, key="teacher", what="all")
    assert_landed(before, net, trained.teacher.state_dict())
    suave_path, _ = semiclust_checkpoint(tmp_path / "suave")
    with pytest.raises(SemiclustError, match="model.init.key"):
        init(network(TINY_RECIPE["model"]["backbone"]), suave_path, key="teacher")


def test_unit_and_weight_normalised_prototypes_convert(tmp_path):
    path, trained = semiclust_checkpoint(tmp_path, "daino")
    raw = copy.deepcopy(TINY_RECIPE)
    # Daino's head, Suave's prototypes
    raw["model"]["head"] = recipe(TINY_RECIPE["model"]["backbone"], "daino").model.head.model_dump()
    torch.manual_seed(0)
    net = Network(make_recipe(raw).model, 3, CLASSES, "unit")
    report = init(net, path, what="all")
    expected = torch.nn.functional.normalize(trained.student.prototypes.v, dim=1)
    torch.testing.assert_close(net.prototypes.weight, expected)
    assert "converted to unit prototypes" in report.summary()


def test_semiclust_classifier_export_safetensors(tmp_path):
    source = scrambled(network(RESNET, seed=3), 3)
    path = tmp_path / "classifier.safetensors"  # as `semiclust export --content classifier` writes it
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path),
              metadata={"format": "semiclust", "format_version": "1", "content": "classifier", "architecture": "resnet18",
                        "num_classes": str(CLASSES)})
    net = network(RESNET)
    before = snapshot(net)
    report = init(net, path, what="all")
    assert_landed(before, net, source.state_dict())
    assert report.format == "safetensors" and report.entry == "semiclust classifier export"


# ---------------------------------------------------------------- what, and the wiring into methods
def test_what_all_needs_prototypes_of_the_right_number_of_classes(tmp_path):
    path, _ = swav_file(tmp_path)
    with pytest.raises(SemiclustError, match="provides no prototypes weights"):
        init(network(RESNET), path, what="all")
    ckpt, _ = semiclust_checkpoint(tmp_path)
    torch.manual_seed(0)
    six_classes = Network(recipe(TINY_RECIPE["model"]["backbone"]).model, 3, 6, "unit")
    with pytest.raises(SemiclustError, match=r"prototypes.weight: file \(4, 8\) vs model \(6, 8\)"):
        init(six_classes, ckpt, what="all")


@pytest.mark.parametrize("method", ["suave", "daino"])
def test_method_construction_applies_the_init_to_student_and_teacher(tmp_path, method):
    if method == "suave":
        path, state = swav_file(tmp_path)
        expected, backbone = network_keys(state, "module."), RESNET
    else:
        path, state = dino_file(tmp_path)
        expected, backbone = network_keys(state["student"], "module.backbone."), VIT
    kind = METHODS.get(method)
    student, report = build_student(recipe(backbone, method, init={"path": path}), 3, CLASSES, kind)
    schedules = build_method(recipe(backbone, method), CLASSES, 3, steps_per_epoch=10).schedules
    built = assemble_method(kind, recipe(backbone, method), student, 3, CLASSES, schedules, 1)
    for net in [built.student] + ([built.teacher] if method == "daino" else []):
        for key in ("backbone.conv1.weight", "backbone.layer4.0.bn2.running_var", "backbone.pos_embed",
                    "backbone.blocks.5.mlp.fc2.weight"):
            if key in expected:
                assert torch.equal(net.state_dict()[key], expected[key])
    assert report is not None and report.format == ("swav" if method == "suave" else "dino")
    assert build_student(recipe(backbone, method), 3, CLASSES, kind)[1] is None


# ---------------------------------------------------------------- adaptations
def test_vit_position_embeddings_are_resampled_to_the_model_grid(tmp_path):
    state = scrambled(vit(6, img_size=64), 6).state_dict()  # a 4x4 grid; the recipe's model has 2x2
    path = tmp_path / "vit64.pth"
    torch.save(state, path)
    net = network(VIT)
    report = init(net, path)
    assert net.backbone.pos_embed.shape == (1, 5, 64)
    assert torch.equal(net.backbone.cls_token, state["cls_token"])
    assert "pos_embed resampled from a 4x4 to a 2x2 grid" in report.summary()


def test_an_rgb_first_conv_is_folded_into_one_channel(tmp_path):
    path, state = swav_file(tmp_path)
    net = network(RESNET, in_chans=1)
    report = init(net, path)
    torch.testing.assert_close(net.backbone.conv1.weight, state["module.conv1.weight"].sum(dim=1, keepdim=True))
    assert "conv1 adapted from 3 to 1 input channels" in report.summary()


# ---------------------------------------------------------------- errors
def test_a_checkpoint_of_another_architecture_names_example_keys(tmp_path):
    path, _ = swav_file(tmp_path)
    with pytest.raises(SemiclustError, match="model.backbone.name 'test_vit'") as err:
        init(network(VIT), path)
    message = str(err.value)
    assert "backbone.cls_token" in message and "module.conv1.weight" in message and " more. " in message


def test_a_shape_mismatch_names_the_keys_and_both_shapes(tmp_path):
    path, _ = swav_file(tmp_path, hidden=32)
    with pytest.raises(SemiclustError, match=r"head.mlp.0.weight: file \(32, 512\) vs model \(16, 512\)"):
        init(network(RESNET), path, what="backbone_head")
    init(network(RESNET), path)  # the backbone alone fits


def test_strict_missing_keys_are_an_error_unless_strict_is_false(tmp_path):
    state = {k: v for k, v in scrambled(vit(7), 7).state_dict().items() if not k.startswith("norm.")}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(SemiclustError, match=r"2 model weights are missing from the file: backbone.norm.weight, "
                                             r"backbone.norm.bias.*strict to false"):
        init(network(VIT), path)
    net = network(VIT)
    before = snapshot(net)
    report = init(net, path, strict=False)
    assert report.missing == ["backbone.norm.weight", "backbone.norm.bias"]
    assert_landed(before, net, {"backbone.blocks.0.attn.qkv.weight": state["blocks.0.attn.qkv.weight"]})
    assert "2 missing" in report.summary()


class Payload:
    """An object whose unpickling would run a shell command (the classic malicious checkpoint)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Custom:
    """An arbitrary class instance: not on the allow-list either."""


@pytest.mark.parametrize("payload", ["system", "custom"])
def test_pickled_code_is_refused_without_running_it(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    obj = Payload(marker) if payload == "system" else Custom()
    torch.save({"state_dict": vit(0).state_dict(), "extra": obj}, path)
    refused = "system" if payload == "system" else "Custom"
    with pytest.raises(SemiclustError, match=rf"contains \S*{refused}.*semiclust never executes pickled code"):
        init(network(VIT), path)
    assert not marker.exists()


def test_missing_truncated_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(SemiclustError, match="does not exist"):
        init(network(VIT), tmp_path / "nope.pth")
    path, _ = swav_file(tmp_path)
    full = tmp_path / "full.pth"
    torch.save(torch.load(path, weights_only=True), full)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(SemiclustError, match="truncated.pth' could not be read.*truncated, corrupt"):
        read_checkpoint(truncated)
    legacy = tmp_path / "legacy_truncated.pth"
    legacy.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(SemiclustError, match="could not be read"):
        read_checkpoint(legacy)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    with pytest.raises(SemiclustError, match="could not be read"):
        read_checkpoint(text)
    tensors = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(tensors))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(tensors.read_bytes()[:-100])
    with pytest.raises(SemiclustError, match="cut.safetensors' could not be read as safetensors"):
        init(network(VIT), cut)
