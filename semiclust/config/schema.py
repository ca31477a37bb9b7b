"""The recipe schema: pydantic classes only, every section strict (unknown keys are errors).

This is the leaf of the package: it imports nothing of semiclust, so every layer can take a `Recipe`
or one of its sections. What needs the registries (method defaults, registered names, a part's own
section) is done by the recipe loader, `semiclust/config/loader.py`, before and after validation.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationInfo, field_validator, model_validator

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]
Range = tuple[float, float]


class Strict(BaseModel):
    """Base for every recipe section: misspelled keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- data
class ColorJitter(Strict):
    """torchvision-style colour jitter, applied with probability p (factors drawn per image)."""

    p: Probability = Field(0.8, description="probability that an image is jittered at all")
    brightness: Annotated[float, Field(ge=0)] = Field(0.4, description="brightness factor drawn from [1 - b, 1 + b]")
    contrast: Annotated[float, Field(ge=0)] = Field(0.4, description="contrast factor drawn from [1 - c, 1 + c]")
    saturation: Annotated[float, Field(ge=0)] = Field(0.4,
        description="saturation factor drawn from [1 - s, 1 + s] (RGB only)")
    hue: Annotated[float, Field(ge=0, le=0.5)] = Field(0.1, description="hue shift drawn from [-h, h] turns (RGB only)")


class Blur(Strict):
    """Gaussian blur with a sigma drawn uniformly from `sigma`, applied with probability p."""

    p: Probability = Field(0.0, description="probability of a Gaussian blur")
    sigma: Range = Field((0.1, 2.0), description="blur sigma range in pixels, drawn uniformly")


class AreaAndAspect(Strict):
    """Base of the sections drawn as a box: an area `scale` (a fraction of the image, at most 1) and an aspect
    `ratio`, each a range with 0 < low <= high (crops and erased rectangles)."""

    @field_validator("scale", "ratio", check_fields=False)
    @classmethod
    def _ordered_positive(cls, value: Range) -> Range:
        low, high = value
        if not 0 < low <= high:
            raise ValueError(f"expected 0 < low <= high, got {list(value)}")
        return value

    @field_validator("scale", check_fields=False)
    @classmethod
    def _scale_at_most_one(cls, value: Range) -> Range:
        if value[1] > 1.0:
            raise ValueError(f"an area scale cannot exceed 1.0, got {list(value)}")
        return value


class Erase(AreaAndAspect):
    """Random erasing (cutout): with probability p a rectangle of the crop, of area ~ U(scale) of it and log
    aspect ~ U(log ratio), is set to the dataset mean; a strong augmentation for crops that only predict."""

    p: Probability = Field(0.0, description="probability of erasing a rectangle of the crop")
    scale: Range = Field((0.02, 0.25), description="range of the erased area as a fraction of the crop")
    ratio: Range = Field((0.3, 3.3), description="range of the erased rectangle's aspect ratio, drawn log-uniformly")


class CropGroup(AreaAndAspect):
    """`count` random resized crops of `size` px with their own augmentation."""

    count: PositiveInt = Field(1, description="number of crops of this kind per image")
    size: PositiveInt = Field(description="crop side in pixels after resizing")
    scale: Range = Field((0.08, 1.0), description="range of the crop's area as a fraction of the image")
    ratio: Range = Field((3 / 4, 4 / 3),
        description="range of the crop's aspect ratio (width / height), drawn log-uniformly")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = Field("bilinear",
        description="resampling used when resizing the crop")
    flip: Probability = Field(0.5, description="probability of a horizontal flip")
    color: ColorJitter | None = Field(None, description="colour jitter; null = none")
    grayscale: Probability = Field(0.0, description="probability of converting to grayscale")
    blur: Blur = Field(Blur(), description="Gaussian blur")
    solarize: Probability = Field(0.0, description="probability of solarizing (inverting pixels >= 0.5)")
    erase: Erase = Field(Erase(), description="random erasing (cutout) of a rectangle, after the colour ops")


class SubsetDraw(Strict):
    """Base of the sections that choose training images by class: exactly one of per_class, fraction, list."""

    @model_validator(mode="after")
    def _exactly_one(self) -> "SubsetDraw":
        chosen = [k for k in ("per_class", "fraction", "list") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "give exactly one of per_class, fraction or list "
                f"(got {', '.join(chosen) if chosen else 'none'})"
            )
        return self


class Labels(SubsetDraw):
    """Which training images keep their label: k per class, a fraction, or a list file. Choose one."""

    per_class: PositiveInt | None = Field(None, description="k labeled images per class, drawn with the seed")
    fraction: Annotated[float, Field(gt=0, le=1)] | None = Field(None,
        description="this fraction of each class (at least one image each); 1.0 = every labeled image")
    list: Path | None = Field(None,
        description="a file with one training index (in-memory datasets) or file name (image files) per line, e.g. a SimCLR list")
    seed: int | None = Field(None, description="seed of the draw; null = the recipe's seed")


class Validation(SubsetDraw):
    """A validation split carved from the labeled training images that are not in the labeled subset: never
    trained on (neither as labeled nor as unlabeled images), evaluated at every evaluation, and the choice of
    checkpoints/best.pt. The test split is never used to choose anything."""

    per_class: PositiveInt | None = Field(None, description="k validation images per class, drawn with the seed")
    fraction: Annotated[float, Field(gt=0, lt=1)] | None = Field(None,
        description="this fraction of each class's labeled images outside the labeled subset (at least one each)")
    list: Path | None = Field(None, description="a file naming the validation images (indices or file names, as "
                              "data.labels.list); none may be in the labeled subset")
    seed: int | None = Field(None, description="seed of the draw; null = the recipe's seed + 1")


class UnlabeledViews(Strict):
    """The multi-crop set of each unlabeled image, in order; the first `method.target_crops` crops
    are the target (global) crops: one group of 2, or two groups of 1 with different augmentation
    (DINO's two global views)."""

    crops: Annotated[list[CropGroup], Field(min_length=1)] = Field(description="the crop groups, in order")


class EvalView(Strict):
    """The single centre view used for evaluation: resize the short side, then centre-crop."""

    size: PositiveInt = Field(description="side of the centre crop in pixels")
    resize: PositiveInt | None = Field(None, description="short side before the centre crop; null = size")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = Field("bilinear",
        description="resampling used for the resize")


class Batch(Strict):
    """Images per optimiser step over all processes: the experiment. Each process takes an equal share per
    micro-batch (batch / (processes x optim.accumulate_steps)), so 1 and N processes train the same thing."""

    unlabeled: PositiveInt = Field(64,
        description="unlabeled images per optimiser step over all processes (each gives every crop of the multi-crop set)")
    labeled: PositiveInt = Field(32,
        description="labeled images per optimiser step over all processes (one view each; mixup appends a mixed copy)")
    per: Literal["global", "process"] = Field(
        "global", description="global: the batches above are over all processes and accumulation steps; process: they "
        "are per process and micro-batch, as in recipes saved before batches were global (a run directory or "
        "checkpoint of then is read with it)")


class Loader(Strict):
    """DataLoader settings for datasets of image files (in-memory datasets are augmented on the
    training device and use no workers)."""

    workers: Literal["auto"] | Annotated[int, Field(ge=0)] = Field(
        "auto", description="worker processes per training process; auto = CPUs per process - 1, at most 8")
    prefetch: PositiveInt = Field(4, description="batches each worker prepares ahead")
    pin_memory: Literal["auto"] | bool = Field("auto", description="auto = on when training on CUDA")
    persistent_workers: bool = Field(True, description="keep evaluation workers alive between evaluations")
    decode: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="where training JPEGs are decoded and cropped: cpu = by the workers; gpu = the workers only "
        "read the files and the training process decodes each batch on its device (nvJPEG) and cuts the crops there "
        "(the same crop windows and flips; other formats still go through the workers); auto = gpu when training on "
        "CUDA")


class Data(Strict):
    dataset: str = Field(description="a registered dataset (`semiclust list datasets`)")
    options: dict[str, Any] = Field({},
        description="the dataset's options, e.g. {root: data/cifar100} (see docs/data.md)")
    labels: Labels
    unlabeled: UnlabeledViews
    labeled: CropGroup
    eval: EvalView
    batch: Batch = Batch()
    loader: Loader = Loader()
    corrupt_images: Literal["skip", "fail"] = Field(
        "skip", description="an unreadable image file: skip it with a warning (replaced by the next image), or "
        "stop the run naming it")
    cache: Literal["auto", "off"] = Field(
        "auto", description="auto: image files of one size that fit data.cache_gb are decoded once into memory at "
        "the start and cropped in batches like an in-memory dataset (small images: much faster); off: always read "
        "the files")
    cache_gb: Annotated[float, Field(ge=0)] = Field(2.0, description="memory the decoded images may take (per node)")
    validation: Validation | None = Field(None, description="a validation split carved from the training set "
                                          "(model selection without the test split); null = none")
    max_image_pixels: PositiveInt | None = Field(
        89_478_485, description="an image file whose header declares more pixels is unreadable and never decoded "
        "(a decompression bomb); Pillow's default; null = no limit")


    @field_validator("cache", mode="before")
    @classmethod
    def _off_as_yaml_reads_it(cls, value: object) -> object:
        """YAML 1.1 reads a bare `off` (in a file or a --set) as false: it means "off" here."""
        return "off" if value is False else value

    @field_validator("labeled")
    @classmethod
    def _one_labeled_view(cls, group: CropGroup) -> CropGroup:
        if group.count != 1:
            raise ValueError("the labeled view is a single crop: count must be 1")
        return group


# ---------------------------------------------------------------- model
class BackboneSpec(Strict):
    """Any timm model name (or one semiclust registers with timm) and its keyword arguments."""

    name: str = Field(
        description="any timm model name, or semiclust's tinyconv, resnet18_cifar, resnet34_cifar (`semiclust list backbones`)")
    kwargs: dict[str, Any] = Field({},
        description="the architecture's keyword arguments for timm.create_model, e.g. {dynamic_img_size: true, "
        "drop_path_rate: 0.1}: plain values only, no loading options, file paths, in_chans or num_classes (docs/models.md)")


class Head(Strict):
    """Projector MLP on backbone features, then L2 normalisation and the class prototypes."""

    hidden: PositiveInt = Field(2048, description="width of the hidden layers (default depends on the method: 2048)")
    out: PositiveInt = Field(128,
        description="embedding size after L2 normalisation (suave/swav/supervised 128, daino/dino 256)")
    layers: Annotated[int, Field(ge=1)] = Field(2, description="number of linear layers (suave 2, daino 3)")
    batchnorm: bool = Field(True, description="BatchNorm after hidden layers (SwAV: true, DINO: false)")
    activation: Literal["relu", "gelu"] = Field("relu",
        description="activation after hidden layers (SwAV relu, DINO gelu)")
    init: Literal["default", "trunc_normal"] = Field("default", description="trunc_normal = DINO's std 0.02")
    prototypes_per_class: Annotated[int, Field(ge=1, le=64)] = Field(1,
        description="prototypes tied to each class (k): k x classes prototypes, a class's probability the sum of its "
        "prototypes', so that a class made of several modes can be several clusters; 1 = the release")


class InitSpec(Strict):
    """Start from a local checkpoint (nothing is downloaded): an official SwAV or DINO file, a timm
    checkpoint, a safetensors file (timm's or a `semiclust export`), or a semiclust checkpoint."""

    path: Path = Field(description="the checkpoint file")
    format: Literal["auto", "swav", "dino", "timm", "safetensors", "semiclust"] = Field(
        "auto", description="auto = recognised from the file's keys")
    what: Literal["backbone", "backbone_head", "all"] = Field(
        "backbone", description="backbone (the paper), backbone + projection head, or all (+ prototypes: "
        "semiclust checkpoints and classifier exports)")
    key: Literal["student", "teacher"] = Field(
        "student", description="which network of a DINO or semiclust checkpoint that holds two")
    strict: bool = Field(True, description="false: load what matches and only report missing keys")


class ModelSpec(Strict):
    backbone: BackboneSpec
    head: Head = Head()
    init: InitSpec | None = Field(None, description="initial weights from a local checkpoint; null = random")
    local_crops_update_bn: bool = Field(
        True, description="false: backbone calls on crops smaller than the largest leave BatchNorm running "
        "statistics untouched (they still normalise with batch statistics); true = the release")
    grad_checkpointing: bool = Field(
        False, description="recompute the backbone's blocks during backward instead of keeping their activations "
        "(timm's set_grad_checkpointing): less activation memory for more compute, the same gradients")


# ---------------------------------------------------------------- method
class PartSpec(BaseModel):
    """The recipe section of a registered part (e.g. `method.assignment`): `name` chooses the part, and
    the part's own section class, registered with it and derived from this one, declares and checks
    the other keys (the recipe loader validates the section with it). Unknown keys are kept here so a
    saved recipe reads back without the part's module."""

    model_config = ConfigDict(extra="allow")
    takes_queue: ClassVar[bool] = False  # whether Suave's queue of past embeddings may feed this part

    name: str = Field(description="the registered part (`semiclust list assignments`)")

    @property
    def typed(self) -> bool:
        """Whether the part's own section class checked this section (not just the generic one)."""
        return type(self) is not PartSpec


class Mixup(Strict):
    """Appends a mixed copy of the labeled batch: Mixup with probability mixup_prob, else CutMix."""

    enabled: bool = Field(True, description="append a mixed copy of the labeled batch")
    mixup_prob: Probability = Field(0.5, description="probability of Mixup for a batch (else CutMix)")
    alpha: Annotated[float, Field(gt=0)] = Field(1.0, description="lambda ~ Beta(alpha, alpha)")


class UnlabeledMixup(Strict):
    """Suave's release: one more view of each unlabeled image, global crop 1 mixed with the batch-reversed global
    crop 2 (Mixup or CutMix as method.mixup draws them, one lambda per batch), predicted at the temperature
    against lambda * q1 + (1 - lambda) * reversed(q2); it never makes targets."""

    enabled: bool = Field(False, description="add the mixed view of the two global crops")
    weight: Literal["views", "rows"] = Field(
        "views", description="its count in the row-count weighting: views = 1 (the release: ~0.3% of the loss with "
        "its batches), rows = one per image")


class Ema(Strict):
    """An exponential moving average of the student's weights (timm's ModelEmaV3), evaluated and exportable
    beside it; Daino's teacher already is one."""

    enabled: bool = Field(False, description="keep the average")
    momentum: Annotated[float, Field(ge=0, lt=1)] = Field(0.999, description="weight of the average at each step")
    warmup: bool = Field(True, description="momentum min(momentum, (1 + step) / (10 + step)): early steps count more")
    evaluate: bool = Field(False, description="the average is the classifier evaluated, checkpointed as the result "
                                              "and exported (else the online network, with the average reported beside)")


class MethodSpec(BaseModel):
    """The keys every method takes; a method's own options are in its own section (below), and an option the chosen
    method does not take is an error naming the method."""

    # A method's own section is a subclass, registered with the method (`@METHODS.register(name, spec=...)`), that
    # forbids unknown keys; the recipe loader validates `method` with the chosen method's class. This generic class
    # keeps unknown keys only so that a saved recipe reads back without the methods' modules.
    model_config = ConfigDict(extra="allow")

    name: str = Field(description="suave, daino, swav, dino or supervised (`semiclust list methods`); sets the defaults "
                      "of head, assignment and optimiser")
    temperature: Annotated[float, Field(gt=0)] = Field(0.1,
        description="prototype scores are divided by it to give logits (tau)")
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = Field(0.01,
        description="label smoothing of the labeled cross-entropy")
    labeled_weight: Probability | None = Field(
        None, description="weight of the labeled loss; null = row-count weighting (the release)"
    )
    target_crops: Annotated[int, Field(ge=1)] = Field(2,
        description="how many of the first unlabeled crops make targets (SwAV's crops for assignment, DINO's teacher crops)")
    assignment: SerializeAsAny[PartSpec] = Field(
        description="how unlabeled targets are made; its keys are those of the named assignment (see below)")
    mixup: Mixup = Mixup()
    unlabeled_mixup: UnlabeledMixup = UnlabeledMixup()
    ema: Ema = Ema()
    freeze_prototypes_steps: Annotated[int, Field(ge=0)] = Field(0,
        description="keep the prototypes fixed for this many first steps (SwAV's option)")

    @field_validator("assignment", mode="before")
    @classmethod
    def _registered_section(cls, value: Any, info: ValidationInfo) -> Any:
        """With the registered section classes in the validation context (the recipe loader passes
        them), the section is validated by its part's own class; without them it stays generic."""
        specs = (info.context or {}).get("assignment_specs") or {}
        if part_name(value) in specs:  # a name that is not a string stays for the generic check to name
            return specs[value["name"]].model_validate(value, context=info.context)
        return value


class PlainMethodSpec(MethodSpec):
    """The section of a method without options of its own (supervised): the keys every method takes, nothing else."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------- optimisation and runtime
class Optim(Strict):
    """Optimiser. lr is for `lr_reference_batch` images per step (the global unlabeled batch,
    the labeled batch for `supervised`) and scaled linearly; null = use lr as given."""

    name: Literal["sgd", "lars", "adamw"] = Field(description="the optimiser")
    lr: Annotated[float, Field(gt=0, le=1e4)] = Field(description="peak learning rate for lr_reference_batch images per step")
    lr_reference_batch: PositiveInt | None = Field(256,
        description="the lr is scaled by global unlabeled batch / this (labeled batch for supervised); null = no scaling")
    weight_decay: Annotated[float, Field(ge=0)] = Field(1e-6,
        description="weight decay (at the start, if weight_decay_end is set)")
    weight_decay_end: Annotated[float, Field(ge=0)] | None = Field(
        None, description="cosine weight-decay schedule end value; null = constant"
    )
    momentum: Annotated[float, Field(ge=0, lt=1)] = Field(0.9, description="momentum of SGD and LARS")
    nesterov: bool = Field(False, description="Nesterov momentum (SGD)")
    trust_coefficient: Annotated[float, Field(gt=0)] = Field(0.001, description="LARS trust coefficient")
    betas: Range = Field((0.9, 0.999), description="AdamW betas")
    exclude_bias_and_norm: bool = Field(False,
        description="no weight decay (and no LARS adaptation) for biases and normalisation parameters")
    clip_grad_norm: Annotated[float, Field(gt=0)] | None = Field(None,
        description="max gradient norm; null = no clipping")
    accumulate_steps: PositiveInt = Field(
        1, description="batches per optimiser step (gradients summed; targets, queue and center per batch)")
    decay_prototype_magnitude: bool = Field(
        False, description="weight-decay the magnitude g of weight-normalised prototypes (Daino) like the weights, even "
        "with exclude_bias_and_norm: the release does (its g has shape K x 1, so it falls in the decayed group); "
        "false = g is a 1-D parameter, excluded with the biases and norms")
    backbone_warmup_epochs: Annotated[float, Field(ge=0)] = Field(
        0, description="head warm-up: for this many first epochs (may be fractional) the backbone is frozen (its "
        "BatchNorm layers in eval mode) or, with backbone_warmup_lr_scale > 0, trained at that fraction of the lr; "
        "for a pretrained backbone and a fresh head (0 = off)")
    backbone_warmup_lr_scale: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0, description="the backbone's lr during the head warm-up, as a fraction of the lr (0 = frozen)")


DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*$")


MIN_BUDGET_S = 10
TOO_SHORT_BUDGET = f"a budget shorter than {MIN_BUDGET_S} seconds leaves no time to train"


def part_name(section: Any) -> str | None:
    """A registered part's section's `name` when it is a string (None otherwise): a list or a mapping there is
    unhashable, so a registry lookup would be a TypeError traceback instead of the validation error naming it."""
    name = section.get("name") if isinstance(section, dict) else None
    return name if isinstance(name, str) else None


def duration_seconds(text: str) -> float:
    """'30m', '2h', '1h30m', '90s', '1.5h' -> seconds (ValueError for anything else)."""
    found = DURATION.match(text)
    if re.fullmatch(r"\s*\d+(?:\.\d+)?\s*", text):
        raise ValueError(f"'{text.strip()}' has no unit, so it is not a duration; write e.g. {text.strip()}m, 2h, "
                         "1h30m or 90s")
    if not text.strip() or not found or not any(found.groups()):
        raise ValueError(f"'{text}' is not a duration; write e.g. 30m, 2h, 1h30m or 900s")
    hours, minutes, seconds = (float(part) if part else 0.0 for part in found.groups())
    return hours * 3600 + minutes * 60 + seconds


class Finetune(Strict):
    """A fine-tuning stage at the end of the run, inside the same run and budget (the release's second stage, which
    it runs as a separate job): the last `share` of the steps restart the learning rate at `lr` (scaled like optim.lr,
    no warm-up) and decay it by cosine to `final_lr`; the first stage's cosine then ends where this one starts."""

    share: Annotated[float, Field(gt=0, le=0.5)] = Field(description="the share of the run's steps the stage takes "
                                                                     "(its last ones)")
    lr: Annotated[float, Field(gt=0, le=1e4)] = Field(description="peak learning rate of the stage, for "
                                                                  "optim.lr_reference_batch images per step")
    final_lr: Annotated[float, Field(ge=0)] = Field(0.0, description="learning rate at the end of the stage")
    labeled_weight: Probability | None = Field(
        None, description="weight of the labeled loss during the stage (1 = the labeled images only); null = as in "
        "the first stage (method.labeled_weight)")
    targets: Literal["method", "pseudo_labels", "propagated"] = Field(
        "method", description="the unlabeled targets during the stage: the method's own (Sinkhorn, the teacher; the "
        "release's second stage), pseudo_labels: self-training on the classifier's confident class predictions "
        "(Daino: the teacher's) of the target crops, one hard class per image, every crop trained towards it, or "
        "propagated: the labels spread over a k-nearest-neighbour graph of the classifier's backbone features of "
        "every training image, once at the stage's start, each image trained towards its class weighted by the "
        "propagation's confidence")
    threshold: Probability = Field(0.95, description="pseudo_labels: the class probability an unlabeled image's "
                                   "prediction needs to be trained on (the others are left out of the step)")
    neighbours: Annotated[int, Field(ge=1, le=1000)] = Field(
        20, description="propagated: the neighbours of each image in the graph the labels spread over")


class Schedule(Strict):
    """How long the run is (epochs, or a wall-time budget), linear warm-up, then cosine down to final_lr; optionally
    a fine-tuning stage at the end (`finetune`)."""

    epochs: PositiveInt | None = Field(None, description="passes over the unlabeled set (or give a budget)")
    budget: str | None = Field(
        None, description="wall time of the whole `semiclust train` command instead of epochs, e.g. 30m, 2h, 1h30m: "
        "a short calibration at start measures the speed and fixes the number of steps, so that training, its "
        "evaluations and checkpoints end inside the budget; the steps are recorded in budget.json and reused on resume")
    warmup_epochs: Annotated[float, Field(ge=0)] = Field(0, description="linear warm-up length (may be fractional)")
    warmup_start_lr: Annotated[float, Field(ge=0)] = Field(0.0, description="learning rate at step 0 of the warm-up")
    final_lr: Annotated[float, Field(ge=0)] = Field(0.0, description="learning rate at the end of the cosine decay")
    finetune: Finetune | None = Field(None, description="a fine-tuning stage at the end of the run (see below); null = "
                                      "none (the release runs it as a separate recipe)")

    @field_validator("budget", mode="before")
    @classmethod
    def _a_unit(cls, value: Any) -> Any:
        """A bare number (`budget: 10`, `--budget 10`) says no unit: say so, not "a valid string"."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise ValueError(f"a budget needs a unit ({value} alone is not a duration); write e.g. {value}m, 2h, "
                             "1h30m or 90s")
        return value

    @field_validator("budget")
    @classmethod
    def _a_duration(cls, value: str | None) -> str | None:
        if value is not None and duration_seconds(value) < MIN_BUDGET_S:
            raise ValueError(TOO_SHORT_BUDGET)
        return value

    @model_validator(mode="after")
    def _epochs_or_budget(self) -> "Schedule":
        if (self.epochs is None) == (self.budget is None):
            raise ValueError("give schedule.epochs or schedule.budget (one of them)")
        return self

    @property
    def budget_seconds(self) -> float | None:
        return None if self.budget is None else duration_seconds(self.budget)

    @property
    def propagates(self) -> bool:
        """Whether a fine-tuning stage trains on propagated labels (its table and the batches' image rows needed)."""
        return self.finetune is not None and self.finetune.targets == "propagated"


LoggerName = Literal["tensorboard", "wandb", "mlflow"]


class Tracking(Strict):
    """Where `runtime.loggers` send a run; the run's name there is the run directory's name. Environment
    variables the trackers read themselves (WANDB_MODE, WANDB_ENTITY, MLFLOW_TRACKING_URI, credentials) apply."""

    project: Annotated[str, Field(min_length=1)] = Field("semiclust",
        description="the W&B project and the MLflow experiment the run is logged to")
    wandb_mode: Literal["online", "offline"] | None = Field(None,
        description="offline: W&B writes <run>/wandb only (`wandb sync` uploads it later); null = W&B's own setting")
    mlflow_uri: str | None = Field(None,
        description="MLflow tracking URI (sqlite:///mlflow.db, http://host:5000, ...); null = MLFLOW_TRACKING_URI or "
        "MLflow's default")


class Runtime(Strict):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when visible, else CPU")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto",
        description="auto = bf16 autocast on GPUs that support it, fp32 on CPU (bf16 is slow there); fp16 uses a gradient scaler")
    channels_last: Literal["auto"] | bool = Field("auto", description="auto = on for convolutional backbones on CUDA")
    compile: bool = Field(False, description="torch.compile the backbone")
    threads: PositiveInt | None = Field(None, description="CPU threads; null = torch's default")
    sync_batchnorm: Literal["auto"] | bool = Field(
        "auto", description="batch statistics over all processes; auto = on when more than one process")
    skip_nonfinite_steps: Annotated[int, Field(ge=0)] = Field(
        0, description="skip up to this many steps with a non-finite loss before stopping")
    log_every_steps: PositiveInt = Field(10, description="steps between metrics.jsonl training records")
    progress: Literal["auto", "rich", "plain", "none"] = Field("auto",
        description="auto = a live bar on a terminal, plain lines otherwise")
    tensorboard: bool = Field(False, description="also log to <run>/tensorboard: the same as listing tensorboard in "
                              "runtime.loggers (kept for older recipes)")
    loggers: list[LoggerName] = Field([],
        description="experiment trackers that get metrics.jsonl's figures, the recipe and the final curves and confusion "
        "PNGs: tensorboard, wandb, mlflow (each an optional extra, e.g. pip install 'semiclust[wandb]')")
    tracking: Tracking = Field(Tracking(), description="the W&B project / MLflow experiment and where they log")

    @field_validator("loggers")
    @classmethod
    def _each_logger_once(cls, value: list[str]) -> list[str]:
        twice = sorted(name for name, count in Counter(value).items() if count > 1)
        if twice:
            raise ValueError(f"each logger may be listed once; {', '.join(twice)} is listed more than once")
        return value

    @property
    def active_loggers(self) -> list[str]:
        """The loggers this run uses: runtime.loggers, and tensorboard when runtime.tensorboard is on."""
        return (["tensorboard"] if self.tensorboard and "tensorboard" not in self.loggers else []) + self.loggers


class CheckpointSpec(Strict):
    """Periodic checkpoints (checkpoints/step_<N>.pt, written atomically; 0 = off) and how many to
    keep; checkpoints/final.pt is always written at the end."""

    every_epochs: Annotated[int, Field(ge=0)] = Field(10,
        description="write checkpoints/step_<N>.pt every this many epochs (0 = off)")
    every_steps: Annotated[int, Field(ge=0)] = Field(0, description="... every this many steps (0 = off)")
    every_minutes: Annotated[float, Field(ge=0)] = Field(0, description="... every this many minutes (0 = off)")
    keep_last: PositiveInt = Field(2, description="periodic checkpoints kept (final.pt is always written)")


class EvalSpec(Strict):
    every_epochs: Annotated[int, Field(ge=0)] = Field(0,
        description="evaluate every this many epochs (0 = only at the end)")
    batch_size: PositiveInt = Field(512, description="images per evaluation batch")


class Recipe(Strict):
    """A whole training run, top to bottom."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")] = Field(
        description="the run's name (default run directory runs/<name>): one path component")
    seed: int = Field(0, description="seed of everything random (subset draw, weights, augmentation, streams)")
    data: Data
    model: ModelSpec
    method: SerializeAsAny[MethodSpec]
    optim: Optim
    schedule: Schedule
    runtime: Runtime = Runtime()
    checkpoint: CheckpointSpec = CheckpointSpec()
    eval: EvalSpec = EvalSpec()

    @field_validator("method", mode="before")
    @classmethod
    def _method_section(cls, value: Any, info: ValidationInfo) -> Any:
        """With the registered method sections in the validation context, `method` is validated by the chosen
        method's own class (an option another method owns is an error naming the method); without them, or for an
        unknown method (the loader names it), the section stays generic."""
        specs = (info.context or {}).get("method_specs") or {}
        if part_name(value) not in specs:  # a name that is not a string stays for the generic check to name
            return value
        section = specs[value["name"]]
        foreign = [key for key in value if key not in section.model_fields and any(
            key in other.model_fields for other in specs.values())]
        if foreign:
            owners = sorted(name for name, other in specs.items() if foreign[0] in other.model_fields)
            raise ValueError(f"method '{value['name']}' does not take '{foreign[0]}' (an option of "
                             f"{', '.join(owners)}); remove method.{foreign[0]} or choose one of those methods")
        return section.model_validate(value, context=info.context)

    @field_validator("name")
    @classmethod
    def _one_path_component(cls, name: str) -> str:
        if set(name) == {"."}:
            raise ValueError("a run's name is one folder name under runs/, not '.' or '..'")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        sizes = [group.size for group in self.data.unlabeled.crops for _ in range(group.count)]
        targets = self.method.target_crops
        if len(sizes) < targets or len(set(sizes[:targets])) != 1:
            raise ValueError(
                f"method.target_crops is {targets}: the first {targets} unlabeled crops (in the order of "
                f"data.unlabeled.crops) give the targets and must exist and share one size, got sizes "
                f"{sizes[:targets]}. Put the global crops first (one group, or one group per augmentation)"
            )
        total_crops = sum(group.count for group in self.data.unlabeled.crops)
        if total_crops < 2:
            raise ValueError("data.unlabeled.crops must hold at least 2 crops in all (swapped prediction needs pairs)")
        if self.schedule.epochs is not None and self.schedule.warmup_epochs > self.schedule.epochs:
            raise ValueError("schedule.warmup_epochs is longer than schedule.epochs")
        return self
