"""Checkpoints: the typed `Checkpoint` every module reads by attribute, stored as a plain dict of tensors and
Python values, written atomically and read with weights_only.

This is the one module that spells a checkpoint's keys: `Checkpoint.from_dict` reads the dict that
`torch.load(weights_only=True)` returns (checkpoints of every earlier version included: a key they lack takes
its default), `Checkpoint.as_dict` writes it, and nothing else of semiclust handles the dict
(tests/test_architecture.py greps for the keys). What a checkpoint of a run holds is assembled by
engine/state.py; reading and writing go through semiclust/storage/tensors.py like every tensor file.
"""
from __future__ import annotations

import dataclasses
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from semiclust.config.schema import Recipe
from semiclust.config.validation import validate_saved
from semiclust.errors import SemiclustError
from semiclust.models.network import (MAX_CLASSES, MAX_IN_CHANS, PROTOTYPE_KINDS, Network, mismatch_fix,
                                      network_with_weights)
from semiclust.storage.tensors import FileRole, looks_like_safetensors, read_torch, shown, write_torch

FORMAT = "semiclust-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT = FileRole("checkpoint", "pass a .pt file written by `semiclust train` (or its run directory)",
                      "use another checkpoint of the run")
NETWORKS = ("student", "teacher", "ema")  # the networks a checkpoint may hold, by the prefix of their tensors


def _fields(cls, raw: Any) -> dict[str, Any]:
    """The dataclass fields of `cls` read from a dict (its keys are the field names); a key the dict lacks (an
    older file) takes the field's default, what it meant then. Values are kept as they are: a damaged file is named
    by the checks that read it (`checked_classifier`, `misfit`), not here."""
    raw = raw if isinstance(raw, dict) else {}
    return {f.name: raw[f.name] if f.name in raw else _default(f) for f in dataclasses.fields(cls)}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


@dataclass
class ClassifierInfo:
    """How to rebuild the evaluated network from the method's tensors: which network (`prefix`), its prototype
    kind and sizes, and whether its prototypes are matched to classes (a method trained without labels)."""

    prefix: str | None = None  # one of NETWORKS
    prototypes: str | None = None  # one of PROTOTYPE_KINDS
    in_chans: int | None = None
    num_classes: int | None = None
    matched: bool | None = None


@dataclass
class RankState:
    """What one process keeps for itself: its RNG states and its per-process buffers (SwAV's queue)."""

    torch: torch.Tensor | None = None  # the CPU generator's state
    local: dict[str, torch.Tensor] = field(default_factory=dict)  # entries of the method's per-process parts
    cuda: torch.Tensor | None = None  # the CUDA generator's state (a run on a GPU); not written when None

    def as_dict(self) -> dict[str, Any]:
        out = {"torch": self.torch, "local": self.local}
        return out if self.cuda is None else {**out, "cuda": self.cuda}


OPTIONAL = ("augment_host_rng", "validation_indices", "eval", "eval_beside", "validation")  # written only when set


@dataclass
class Checkpoint:
    """A checkpoint of a run, every key a typed attribute (the dict's keys are these names). Evaluation results
    (`eval`, `validation`, `eval_beside`'s values) are `EvalResult.as_dict()` dicts; `recipe` is the recipe as
    `model_dump(mode="json")` wrote it; `method` and `optimizer` are state dicts."""

    semiclust_version: str | None = None
    recipe: dict[str, Any] | None = None
    step: int | None = None  # the steps done: the step a resume continues from
    epoch: int | None = None
    world_size: int = 1
    method: dict[str, torch.Tensor] | None = None
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None  # the fp16 gradient scaler's state; None when it is off
    augment_rng: torch.Tensor | None = None
    augment_host_rng: torch.Tensor | None = None  # the host generator of the augmentation draws, when not augment_rng
    per_rank: list[RankState | None] | None = None  # each process's own state
    skipped_steps: int = 0  # non-finite steps skipped so far
    classes: list[str] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    labeled_indices: torch.Tensor | None = None
    labeled_sha256: str | None = None
    labeled_list_sha256: str | None = None
    labeled_files: list | None = None  # the labeled images' file names (image-file datasets)
    corrupt_images: int = 0  # unreadable training images skipped so far
    classifier: ClassifierInfo = field(default_factory=ClassifierInfo)
    validation_indices: torch.Tensor | None = None  # data.validation's images
    eval: dict[str, Any] | None = None  # the classifier's test result
    eval_beside: dict[str, dict[str, Any]] | None = None  # the test results of the networks beside it, by name
    validation: dict[str, Any] | None = None  # the classifier's validation result

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Checkpoint":
        """The checkpoint of the dict `torch.load` returns (keys an older file lacks take what they meant then)."""
        values = _fields(cls, raw)
        values["classifier"] = ClassifierInfo(**_fields(ClassifierInfo, values["classifier"]))
        if isinstance(values["per_rank"], list):
            values["per_rank"] = [RankState(**_fields(RankState, entry)) if isinstance(entry, dict) else None
                                  for entry in values["per_rank"]]
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """The dict a checkpoint file holds (plain tensors and Python values), its format marker first."""
        out: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in OPTIONAL and value is None:
                continue
            out[f.name] = value
        out["classifier"] = dataclasses.asdict(self.classifier)
        if isinstance(self.per_rank, list):
            out["per_rank"] = [entry.as_dict() if isinstance(entry, RankState) else entry for entry in self.per_rank]
        return out

    def rank_state(self, rank: int) -> RankState | None:
        """Process `rank`'s own state, or None when the file has none for it (damaged or edited)."""
        if not isinstance(self.per_rank, list) or rank >= len(self.per_rank):
            return None
        return self.per_rank[rank]

    def network_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors of one network of the method (student, teacher or ema), without its prefix."""
        start = prefix + "."
        return {k[len(start):]: v for k, v in (self.method or {}).items() if k.startswith(start)}

    def held_networks(self) -> list[str]:
        """The networks whose tensors the checkpoint holds, in NETWORKS' order."""
        return [name for name in NETWORKS if any(k.startswith(name + ".") for k in (self.method or {}))]


def is_checkpoint_content(content: dict[str, Any]) -> bool:
    """Whether a loaded file's content is a semiclust checkpoint (an init file of format auto is recognised so)."""
    return "semiclust_version" in content or content.get("format") == FORMAT or isinstance(content.get("method"), dict)


def method_tensors(content: dict[str, Any]) -> Any:
    """The method's tensors of a checkpoint's content (the content itself when it is a bare state dict)."""
    return content.get("method") if isinstance(content.get("method"), dict) else content


def save_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A crash mid-write leaves the previous file at `path` intact.
    """
    write_torch(checkpoint.as_dict(), path)


def checkpoint_file(path: Path | str) -> Path:
    """The checkpoint a path names: the file itself, or a run directory's checkpoints/final.pt."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / "final.pt"
        if not candidate.is_file():
            raise SemiclustError(f"'{path}' is a folder without checkpoints/final.pt; pass the checkpoint file itself.")
        return candidate
    return path


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a semiclust checkpoint without executing pickled code; clear errors for bad files."""
    path = checkpoint_file(path)
    if path.is_file() and looks_like_safetensors(path):
        raise SemiclustError(
            f"'{path}' is a safetensors export (written by `semiclust export`), not a training checkpoint: this command "
            "reads the .pt files `semiclust train` writes (e.g. RUN/checkpoints/final.pt). To classify images with the "
            f"export, use `{shlex.join(['semiclust', 'predict', '--model', str(path)])} IMAGES`.")
    state = read_torch(path, CHECKPOINT, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SemiclustError(f"'{path}' is a PyTorch file but not a semiclust checkpoint (no '{FORMAT}' marker).")
    version = state.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise SemiclustError(f"checkpoint '{path}' is damaged or was edited: its format_version is {shown(version)} "
                             f"(a {type(version).__name__}), where semiclust writes a whole number; {CHECKPOINT.damaged}.")
    if version > FORMAT_VERSION:
        raise SemiclustError(f"checkpoint '{path}' was written by a newer semiclust; upgrade semiclust to read it.")
    return Checkpoint.from_dict(state)


def with_network(checkpoint: Checkpoint, network: str | None) -> Checkpoint:
    """The checkpoint with another of its networks as the classifier (`semiclust export --network`): the student,
    Daino's teacher or the weight average of method.ema; its test result replaces the classifier's."""
    info = checked_classifier(checkpoint)
    if network is None or network == info.prefix:
        return checkpoint
    held = checkpoint.held_networks()
    if network not in held:
        raise SemiclustError(f"--network {network}: this checkpoint holds the networks {', '.join(held)}; choose one "
                             "of them (method.ema.enabled: true keeps a weight average named ema).")
    beside = (checkpoint.eval_beside or {}).get("online" if network == "student" else network)
    return dataclasses.replace(checkpoint, classifier=dataclasses.replace(info, prefix=network), eval=beside)


def classifier_network(checkpoint: Checkpoint) -> tuple[Network, Recipe]:
    """The evaluated network of a checkpoint (Daino's teacher) and its recipe, rebuilt from the state; tensors that
    do not fit are named, as damage when this version of semiclust wrote the file."""
    info = checked_classifier(checkpoint)
    recipe = validate_saved(checkpoint.recipe, "the checkpoint's recipe")
    fix = mismatch_fix(checkpoint.semiclust_version, CHECKPOINT.damaged)
    network = network_with_weights(recipe.model, info.in_chans, info.num_classes, info.prototypes,
                                   checkpoint.network_tensors(info.prefix), "the checkpoint", fix,
                                   recipe.method.temperature)
    return network, recipe


def whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def numbers(value: Any, length: int) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == length and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)


def checked_classifier(checkpoint: Checkpoint) -> ClassifierInfo:
    """The checkpoint's description of its classifier (which network, its sizes, classes, normalisation), each
    value checked before a network of that size is built: a damaged or edited file is one paragraph naming the
    field, its value and what semiclust writes there."""
    c, info = checkpoint, checkpoint.classifier
    chans, classes = info.in_chans, c.classes
    fields = [
        ("recipe", c.recipe, isinstance(c.recipe, dict), "the recipe as a mapping"),
        ("method", c.method, isinstance(c.method, dict), "the tensors of the networks, by name"),
        ("classifier.prefix", info.prefix, info.prefix in NETWORKS, f"one of {', '.join(NETWORKS)}"),
        ("classifier.prototypes", info.prototypes, info.prototypes in PROTOTYPE_KINDS,
         f"one of {', '.join(PROTOTYPE_KINDS)}"),
        ("classifier.in_chans", chans, whole(chans, 1, MAX_IN_CHANS), f"a whole number from 1 to {MAX_IN_CHANS}"),
        ("classifier.num_classes", info.num_classes, whole(info.num_classes, 1, MAX_CLASSES),
         f"a whole number from 1 to {MAX_CLASSES:,}"),
        ("classes", classes, isinstance(classes, list) and len(classes) == info.num_classes
         and all(isinstance(name, str) for name in classes), "a list of classifier.num_classes class names"),
        ("mean", c.mean, numbers(c.mean, chans), "one number per input channel (in_chans)"),
        ("std", c.std, numbers(c.std, chans) and all(v > 0 for v in c.std), "one number above 0 per input channel "
                                                                              "(in_chans)"),
        ("step", c.step, whole(c.step, 0, 2**62), "a whole number"),
    ]
    for name, value, ok, expected in fields:
        if not ok:
            raise SemiclustError(f"the checkpoint is damaged or edited: its {name} is {shown(value)}, where semiclust "
                                 f"writes {expected}; {CHECKPOINT.damaged}.")
    return info


def periodic_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step_{step:09d}.pt"


def periodic_checkpoints(folder: Path) -> list[Path]:
    """The periodic checkpoints in a folder, oldest first."""
    return sorted(Path(folder).glob("step_*.pt"))


def save_periodic(checkpoint: Checkpoint, folder: Path, keep_last: int) -> Path:
    """Write step_<step>.pt atomically, then delete all but the newest `keep_last` periodic ones."""
    path = periodic_path(folder, checkpoint.step)
    save_checkpoint(checkpoint, path)
    for old in periodic_checkpoints(folder)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def latest_usable(folder: Path, map_location: str | torch.device = "cpu",
                  fits: Callable[[Checkpoint], str | None] = lambda checkpoint: None,
                  skipped: list[str] | None = None) -> tuple[Path, Checkpoint] | None:
    """The newest periodic checkpoint that loads and that `fits` (None, or why it cannot be used: a tensor of
    the wrong shape), falling back to older ones; each one passed over is added to `skipped` with its reason, for
    the run's start-up lines (not a Python warning with a source path)."""
    for path in reversed(periodic_checkpoints(folder)):
        try:
            checkpoint = load_checkpoint(path, map_location)
        except SemiclustError as err:
            reason = str(err)
        else:
            reason = fits(checkpoint)
            if reason is None:
                return path, checkpoint
        if skipped is not None:
            skipped.append(f"passed over checkpoint '{path}': {reason}")
    return None
