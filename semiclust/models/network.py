"""The network: backbone -> projection head -> prototypes, with multi-resolution batching."""
from __future__ import annotations

import contextlib
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from semiclust.errors import SemiclustError, examples
from semiclust.models.backbones import create_backbone
from semiclust.models.heads import ProjectionHead, UnitPrototypes, WeightNormPrototypes
from semiclust.config.schema import ModelSpec
from semiclust.version import __version__

PrototypeKind = Literal["unit", "weight_norm"]
PROTOTYPE_KINDS = ("unit", "weight_norm")
MAX_IN_CHANS = 16  # image channels a network file may describe (semiclust trains 1 or 3; generated data more)
MAX_CLASSES = 1_000_000  # classes (prototypes) a network file may describe


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
    """Maps images to (L2-normalised embeddings, prototype scores); the class scores pool each class's
    `model.head.prototypes_per_class` prototypes (with one per class they are the prototype scores). argmax of
    the class scores = the class. `temperature` (the method's tau) is the pooling's, used only with several."""

    def __init__(self, spec: ModelSpec, in_chans: int, num_classes: int,
                 prototypes: PrototypeKind, backbone_overrides: dict | None = None, temperature: float = 0.1):
        super().__init__()
        self.per_class, self.temperature = spec.head.prototypes_per_class, temperature
        self.local_crops_update_bn = spec.local_crops_update_bn
        kwargs = {**spec.backbone.kwargs, **(backbone_overrides or {})}
        self.backbone = create_backbone(spec.backbone.name, kwargs, in_chans)
        if spec.grad_checkpointing:
            enable_grad_checkpointing(self.backbone, spec.backbone.name)
        self.head = ProjectionHead(self.backbone.num_features, spec.head)
        kind = UnitPrototypes if prototypes == "unit" else WeightNormPrototypes
        self.prototypes = kind(spec.head.out, num_classes * self.per_class)  # class c's are rows c*k .. c*k + k-1

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

    def class_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Class scores (N x classes) from prototype scores (N x classes * k): each class's k prototypes pooled as
        tau * logsumexp(s / tau), so that softmax(class scores / tau) is the sum of the class's prototypes'
        probabilities; with one prototype per class, the scores themselves (the release, bit for bit)."""
        return class_scores(scores, self.per_class, self.temperature)

    def prototype_scores(self, images: torch.Tensor) -> torch.Tensor:
        """The prototype scores of a batch of images (N x classes * k): what targets are made from."""
        return self.scores(self.head(self.backbone(images)))

    def forward_groups(self, groups: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.embed_groups(groups)
        return embeddings, self.scores(embeddings)

    def forward(self, images: torch.Tensor | list[torch.Tensor]):
        """The class scores of a batch of images (the classifier's logits up to the temperature: what evaluation,
        export and predict see); given a list of crop groups, (embeddings, prototype scores) of all of them (see
        forward_groups). Both go through forward() so that a DistributedDataParallel wrapper sees every call."""
        if isinstance(images, (list, tuple)):
            return self.forward_groups(list(images))
        return self.class_scores(self.prototype_scores(images))


def class_scores(scores: torch.Tensor, per_class: int, temperature: float) -> torch.Tensor:
    """`Network.class_scores` as a pure function: k consecutive prototypes per class pooled by a
    temperature-scaled logsumexp (the identity for k = 1)."""
    if per_class == 1:
        return scores
    grouped = scores.float().unflatten(1, (-1, per_class)) / temperature  # no batch size: ONNX keeps it dynamic
    return temperature * torch.logsumexp(grouped, dim=2)


def class_log_probabilities(scores: torch.Tensor, per_class: int, temperature: float) -> torch.Tensor:
    """log p(class) from prototype scores: log of the summed probabilities of each class's prototypes under
    softmax(scores / temperature); the labeled loss's log-likelihood (for k = 1, log_softmax(scores / tau))."""
    return F.log_softmax(class_scores(scores, per_class, temperature).float() / temperature, dim=1)


def teacher_of(student: Network, spec: ModelSpec, in_chans: int, num_classes: int, prototypes: PrototypeKind) -> Network:
    """An EMA teacher: the student's architecture with stochastic depth and dropout off, the student's
    weights copied in, no gradients (DINO's teacher)."""
    stochastic = {k: 0.0 for k in ("drop_path_rate", "drop_rate") if k in spec.backbone.kwargs}
    teacher = Network(spec, in_chans, num_classes, prototypes, stochastic or None, student.temperature)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    return teacher


def network_with_weights(spec: ModelSpec, in_chans: int, num_classes: int, prototypes: PrototypeKind,
                         weights: dict[str, torch.Tensor], source: str, fix: str, temperature: float = 0.1) -> Network:
    """Rebuild a network from its description and load its tensors (a checkpoint's classifier, an export). The
    description is first built without memory (torch's meta device) and compared with the tensors, so a file whose
    sizes do not fit (damaged, edited, hostile: a class count of a billion) is a clear error naming the tensor,
    `source` and `fix`, before anything of the described size is allocated."""
    problem = weights_mismatch(expected_shapes(spec, in_chans, num_classes, prototypes), weights)
    if problem:
        raise SemiclustError(f"{source} does not match the network it describes: {problem}; {fix}.")
    network = Network(spec, in_chans, num_classes, prototypes, temperature=temperature)
    try:
        network.load_state_dict(weights)
    except RuntimeError as err:
        raise SemiclustError(f"{source} does not match the network it describes ({str(err).splitlines()[0][:200]}); "
                             f"{fix}.") from None
    return network


def expected_shapes(spec: ModelSpec, in_chans: int, num_classes: int,
                    prototypes: PrototypeKind) -> dict[str, tuple[int, ...]] | None:
    """The shape of every tensor of the described network, built on the meta device (no memory); None for a
    backbone that cannot be built there (loading the weights then checks the shapes instead)."""
    try:
        with torch.device("meta"):
            network = Network(spec, in_chans, num_classes, prototypes)
    except SemiclustError:
        raise
    except Exception:  # a timm model that reads tensor values while it is built
        return None
    return {key: tuple(value.shape) for key, value in network.state_dict().items()}


def weights_mismatch(expected: dict[str, tuple[int, ...]] | None, weights: dict[str, torch.Tensor]) -> str | None:
    """What does not fit between a network's tensor shapes and a file's tensors: the first tensor of another shape
    (its name, its shape, the shape expected), or the tensors missing or extra; None when everything fits."""
    if expected is None:
        return None
    for key, shape in expected.items():
        value = weights.get(key)
        if value is not None and not isinstance(value, torch.Tensor):
            return f"'{key}' is a {type(value).__name__}, not a tensor"
        if value is not None and tuple(value.shape) != shape:
            return f"tensor '{key}' has shape {tuple(value.shape)}, expected {shape}"
    missing = [key for key in expected if key not in weights]
    if missing:
        return f"{len(missing)} tensor(s) missing: {examples(missing, 3)}"
    extra = [key for key in weights if key not in expected]
    return f"{len(extra)} tensor(s) it does not have: {examples(extra, 3)}" if extra else None


def mismatch_fix(recorded_version: object, damaged_fix: str) -> str:
    """What to do about a file whose tensors do not fit its description: a file this version of semiclust wrote
    is damaged or edited; one of another version may be read with that version."""
    if recorded_version == __version__:
        return f"the file is damaged or edited (it records semiclust {__version__}, this version); {damaged_fix}"
    if isinstance(recorded_version, str) and recorded_version:
        return (f"it was written by semiclust {recorded_version[:40]} (this is {__version__}), whose networks may differ; "
                f"read it with that version, or {damaged_fix}")
    return f"it records no semiclust version (damaged or edited, or written by another version); {damaged_fix}"
