"""The network: backbone -> projection head -> prototypes, with multi-resolution batching."""
from __future__ import annotations

import contextlib
from typing import Iterator, Literal

import torch
from torch import nn

from semiclust.errors import SemiclustError
from semiclust.models.backbones import create_backbone
from semiclust.models.heads import ProjectionHead, UnitPrototypes, WeightNormPrototypes
from semiclust.schema import ModelSpec

PrototypeKind = Literal["unit", "weight_norm"]


@contextlib.contextmanager
def frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with batch statistics as usual but leave their running
    statistics untouched (momentum 0) inside the block."""
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum


def in_backward() -> bool:
    """Whether autograd's engine is running a backward pass, where gradient checkpointing re-runs forwards."""
    return torch._C._current_graph_task_id() != -1


def _stash_running_stats(layer: nn.Module, _inputs) -> None:
    if layer.training and layer.track_running_stats and in_backward():
        layer._stats_before_recompute = [b.clone() for b in (layer.running_mean, layer.running_var,
                                                             layer.num_batches_tracked)]


def _restore_running_stats(layer: nn.Module, _inputs, _output) -> None:
    saved = layer.__dict__.pop("_stats_before_recompute", None)
    if saved is not None:
        with torch.no_grad():
            for buffer, value in zip((layer.running_mean, layer.running_var, layer.num_batches_tracked), saved):
                buffer.copy_(value)


def keep_running_stats_in_recompute(module: nn.Module) -> None:
    """Gradient checkpointing runs the forward of each checkpointed block a second time, during backward,
    and a BatchNorm layer there would update its running statistics twice with one batch. These hooks put
    them back after that second run, so they move once per step as without checkpointing (idempotent;
    call it again after BatchNorm layers are replaced, as SyncBatchNorm conversion does)."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and not getattr(layer, "_recompute_guard", False):
            layer.register_forward_pre_hook(_stash_running_stats)
            layer.register_forward_hook(_restore_running_stats)
            layer._recompute_guard = True


def enable_grad_checkpointing(backbone: nn.Module, name: str) -> None:
    """timm's `set_grad_checkpointing()` on the backbone, or a clear error for one that has none."""
    try:
        backbone.set_grad_checkpointing(True)
    except (AttributeError, AssertionError, NotImplementedError):
        raise SemiclustError(f"model.grad_checkpointing is on but backbone '{name}' does not support gradient "
                             "checkpointing (timm's set_grad_checkpointing); set model.grad_checkpointing: false or "
                             "choose a backbone that has it (timm's ResNets, ViTs, ConvNeXts, ...).") from None
    keep_running_stats_in_recompute(backbone)


class Network(nn.Module):
    """Maps images to (L2-normalised embeddings, prototype scores). argmax of the scores = the class."""

    def __init__(self, spec: ModelSpec, in_chans: int, num_prototypes: int,
                 prototypes: PrototypeKind, backbone_overrides: dict | None = None):
        super().__init__()
        self.local_crops_update_bn = spec.local_crops_update_bn
        kwargs = {**spec.backbone.kwargs, **(backbone_overrides or {})}
        self.backbone = create_backbone(spec.backbone.name, kwargs, in_chans)
        if spec.grad_checkpointing:
            enable_grad_checkpointing(self.backbone, spec.backbone.name)
        self.head = ProjectionHead(self.backbone.num_features, spec.head)
        kind = UnitPrototypes if prototypes == "unit" else WeightNormPrototypes
        self.prototypes = kind(spec.head.out, num_prototypes)

    def embed_groups(self, groups: list[torch.Tensor]) -> torch.Tensor:
        """Backbone once per resolution (same-size groups concatenated), head once on everything.

        Returns the embeddings of all groups, concatenated in the order given. With
        `model.local_crops_update_bn: false`, backbone calls at resolutions below the largest one
        do not move the backbone's BatchNorm running statistics, which then describe images at
        evaluation size (the projector runs once on all rows, so its BatchNorm sees them all).
        """
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, group in enumerate(groups):
            by_size.setdefault(tuple(group.shape[1:]), []).append(index)
        features: list[torch.Tensor | None] = [None] * len(groups)
        largest = max(size[-1] for size in by_size)
        for size, members in by_size.items():
            batch = torch.cat([groups[i] for i in members]) if len(members) > 1 else groups[members[0]]
            smaller = size[-1] < largest and not self.local_crops_update_bn
            with frozen_running_stats(self.backbone) if smaller else contextlib.nullcontext():
                out = self.backbone(batch)
            for i, part in zip(members, out.split([len(groups[i]) for i in members])):
                features[i] = part
        return self.head(torch.cat(features))  # type: ignore[arg-type]

    def scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Prototype scores in fp32 even under autocast: with tau = 0.1 (and eps = 0.05 in Sinkhorn)
        bf16's 3 significant digits would be amplified into large logit errors."""
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.prototypes(embeddings.float())

    def forward_groups(self, groups: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.embed_groups(groups)
        return embeddings, self.scores(embeddings)

    def forward(self, images: torch.Tensor | list[torch.Tensor]):
        """Prototype scores of a batch of images (the classifier's logits up to the temperature);
        given a list of crop groups, (embeddings, scores) of all of them (see forward_groups).
        Both go through forward() so that a DistributedDataParallel wrapper sees every call."""
        if isinstance(images, (list, tuple)):
            return self.forward_groups(list(images))
        return self.scores(self.head(self.backbone(images)))


def teacher_of(student: Network, spec: ModelSpec, in_chans: int, num_prototypes: int, prototypes: PrototypeKind) -> Network:
    """An EMA teacher: the student's architecture with stochastic depth and dropout off, the student's
    weights copied in, no gradients (DINO's teacher)."""
    stochastic = {k: 0.0 for k in ("drop_path_rate", "drop_rate") if k in spec.backbone.kwargs}
    teacher = Network(spec, in_chans, num_prototypes, prototypes, stochastic or None)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    return teacher


def network_with_weights(spec: ModelSpec, in_chans: int, num_prototypes: int, prototypes: PrototypeKind,
                         weights: dict[str, torch.Tensor], source: str, fix: str) -> Network:
    """Rebuild a network from its description and load its tensors (a checkpoint's classifier, an
    export); a file whose tensors do not fit is a clear error naming `source` and `fix`."""
    network = Network(spec, in_chans, num_prototypes, prototypes)
    try:
        network.load_state_dict(weights)
    except RuntimeError as err:
        raise SemiclustError(f"{source} does not match the network it describes ({str(err).splitlines()[0][:200]}); "
                             f"{fix}.") from None
    return network
