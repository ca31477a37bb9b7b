"""`semiclust recipe init`: a recipe for a data set semiclust has never seen, from the data and a time budget.

It reads the folder (an ImageFolder with train/ and val/ class folders, or a folder of images with a
labels list and an optional evaluation list), measures the images' sizes (from their headers), picks the
crop sizes from them, then times a training step of each candidate backbone width ON THIS MACHINE and
keeps the widest one that still allows enough passes over the data inside the budget. Batch sizes
follow the labeled set; everything else is the method's defaults for small images, measured on
Fashion-MNIST (docs/method.md, "Small real images: levers measured so far"), except Daino in a short run (see
SHORT_DAINO_STEPS).
"""
from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from semiclust.data.datasets import Dataset, FileSplit, build_dataset, dataset_options
from semiclust.data.decode import UnreadableImage, decode_rgb, image_size, is_image_file
from semiclust.engine.checkpoint import load_checkpoint
from semiclust.engine.run_dir import RunFiles
from semiclust.engine.setup import build_run
from semiclust.engine.step import train_step
from semiclust.errors import SemiclustError
from semiclust.label.lists import read_provenance, read_rows, refuse_unlabeled
from semiclust.config.loader import resolve
from semiclust.config.schema import MIN_BUDGET_S, TOO_SHORT_BUDGET, Recipe, duration_seconds
from semiclust.config.validation import validate_saved

# Measured on Fashion-MNIST, 10 labels per class, 5 minutes on 2 cores (docs/method.md, "Small real images"):
# widths [16, 32, 64] with three convolutions per stage (3.7 epochs) reached 79.1%, with two (5.2 epochs) 78.8%;
# [32, 64, 128] with one (the earlier default, 4.1 epochs) 74.6%, with two (1.7 epochs) 75.4%: depth first, then
# passes over the data, then width.
CONVS_PER_STAGE = 3
MIN_EPOCHS = 20  # a wider candidate is taken only while it still allows this many passes over the unlabeled set
FIRST_WIDTHS = (16, 24, 32, 48, 64)  # the first stage's width of each candidate; each stage doubles it
SAMPLE = 256  # image headers read to learn the sizes
GREY_SAMPLE = 64  # images decoded to learn whether the folder is grey
TIMED_STEPS = 4  # steps timed per candidate width (the first one, warming up, is left out of the mean)
# Daino in a short run (docs/method.md, "Issue 24 screen"; docs/benchmarks.md, "Long-tailed"): its unlabeled term
# collapses towards uniform targets early and only the labeled loss pulls it out; with the labeled loss at its row
# share and a teacher momentum that rises to 1, a run of a few hundred steps does not get out. Below this many
# planned steps init writes a labeled weight of 0.5 and a teacher momentum held at 0.99 (measured: +12.7 points on
# Fashion-MNIST at ~400 steps, 3 seeds; digits at imbalance 10, 400 steps, 28.1 -> 84.6%; level at ~2,800 steps).
SHORT_DAINO_STEPS = 1500


@dataclass
class Choice:
    """One decision of the recipe, and why, for the comments of the written file."""

    key: str
    value: object
    why: str


@dataclass
class Measured:
    width: int
    step_s: float
    epochs: float  # passes over the unlabeled set that 90% of the budget allows at this speed


@dataclass
class InitResult:
    recipe: Recipe
    text: str
    choices: list[Choice] = field(default_factory=list)
    measured: list[Measured] = field(default_factory=list)


def refuse_existing(out: Path, force: bool) -> None:
    """`recipe init` never replaces a file unasked: an existing --out (or a link there) is refused without --force,
    before any work; with it, the file is replaced atomically."""
    out = Path(out)
    if not force and (out.is_symlink() or (out.exists() and not out.is_dir())):
        raise SemiclustError(f"--out '{out}' already exists, and `semiclust recipe init` does not replace a file "
                             "unasked: give another path with --out, or add --force to replace it.")


def describe_data(data: Path | None, labels: Path | None, evaluation: Path | None,
                  registered: tuple[str, Path | None] | None = None) -> tuple[str, dict]:
    """The dataset registry entry and options for a folder (an ImageFolder tree, or images and a labels list),
    or a registered dataset (`registered`: its name and its root, e.g. fashion_mnist and its idx files' folder)."""
    if (data is None) == (registered is None):
        raise SemiclustError("give either --data FOLDER (your own images) or --dataset NAME (a registered dataset, "
                             "`semiclust list datasets`, with --root for its files), not both or neither.")
    if registered is not None:
        name, root = registered
        return name, ({"root": str(Path(root).expanduser())} if root is not None else {})
    data = Path(data).expanduser()
    if not data.is_dir():
        raise SemiclustError(f"--data '{data}' is not a folder; give an ImageFolder (train/<class>/..., val/<class>/...) "
                             "or a folder of images with --labels.")
    if labels is None:
        train = data / "train"
        if not train.is_dir() or not any(p.is_dir() for p in train.iterdir()):
            raise SemiclustError(f"'{data}' has no train/<class>/ folders; lay it out as an ImageFolder, or give the "
                                 "labeled images as a 'path,label' list with --labels (the folder is then the unlabeled pool).")
        eval_dir = next((name for name in ("val", "test") if (data / name).is_dir()), None)
        return "imagefolder", {"root": str(data), "train_dir": "train", "eval_dir": eval_dir}
    options = {"labeled": str(Path(labels).expanduser().resolve()), "unlabeled": [str(data.resolve())]}
    if evaluation is not None:
        options["eval"] = str(Path(evaluation).expanduser().resolve())
    return "labeled_list", options


def typical_size(dataset: Dataset) -> int:
    """The median short side of the training images (from a sample of headers), in pixels."""
    split = dataset.train
    if not isinstance(split, FileSplit):
        return int(min(split.images.shape[-2:]))
    step = max(1, len(split) // SAMPLE)
    sides = []
    for index in range(0, len(split), step):
        if not is_image_file(split.files[index]):
            continue
        try:
            sides.append(min(image_size(split.path(index))))
        except UnreadableImage:
            continue
    if not sides:
        raise SemiclustError(f"none of the {len(split)} training images of '{split.root}' could be read; run "
                             "`semiclust data check` on a recipe for it to see why.")
    return int(statistics.median(sides))


def grey_images(dataset: Dataset) -> int:
    """How many of an even sample of the training files were decoded, if every one is grey (R = G = B); 0 when
    one is in colour, none could be read, or the data are not files. A grey folder trains a 1-channel network
    (`data.options.channels: 1`): the same pixels, a third of the memory and of the first layer's work."""
    split = dataset.train
    if not isinstance(split, FileSplit) or split.channels == 1 or not len(split):
        return 0
    seen = 0
    for index in range(0, len(split), max(1, len(split) // GREY_SAMPLE)):
        try:
            image = decode_rgb(split.path(index))
        except UnreadableImage:
            continue
        if not (torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])):
            return 0
        seen += 1
    return seen


def crop_sizes(side: int) -> tuple[int, int, int]:
    """Global crop, local crop and backbone stages for images of this short side: small images keep their
    size (a 28-px image is cropped to 28 and 14 px), larger ones are cropped as the release does (224 / 96)."""
    global_size = side if side <= 64 else min(224, 16 * round(side / 16))
    local_size = max(8, global_size // 2 if global_size <= 64 else round(global_size * 0.43))
    stages = max(3, round(math.log2(global_size / 7)) + 1)  # down to about 7 px, as the digits network does
    return global_size, local_size, stages


def template(name: str, dataset: str, options: dict, labels: dict, method: str, sizes: tuple[int, int, int],
             width: int, batch: tuple[int, int]) -> dict:
    """The recipe for a backbone width: the method's settings for small images (docs/method.md)."""
    global_size, local_size, stages = sizes
    color = {"p": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}

    def view() -> dict:  # a copy for each view: one shared dict would be written as a YAML anchor and its aliases
        return {"flip": 0.5, "color": dict(color)}

    raw = {
        "name": name, "seed": 0,
        "data": {"dataset": dataset, "options": options, "labels": labels,
                 "unlabeled": {"crops": [{"count": 2, "size": global_size, "scale": [0.5, 1.0], **view()},
                                         {"count": 4, "size": local_size, "scale": [0.2, 0.5], **view()}]},
                 "labeled": {"size": global_size, "scale": [0.5, 1.0], **view()},
                 "eval": {"size": global_size}, "batch": {"unlabeled": batch[0], "labeled": batch[1]}},
        "model": {"backbone": {"name": "tinyconv", "kwargs": {"widths": [width * 2**s for s in range(stages)],
                                                              "convs_per_stage": CONVS_PER_STAGE}},
                  "head": {"hidden": 256, "out": 64}, "local_crops_update_bn": False},
        "method": {"name": method},
        "schedule": {"budget": None, "warmup_epochs": 0.5, "final_lr": 0.0},
        "runtime": {"channels_last": True, "log_every_steps": 50},
        "checkpoint": {"every_epochs": 0, "every_minutes": 10},
    }
    if method in ("daino", "dino"):
        raw["model"]["head"].update({"layers": 3, "batchnorm": False, "activation": "gelu", "init": "trunc_normal"})
        raw["optim"] = {"name": "adamw", "lr": 0.002, "lr_reference_batch": None, "weight_decay": 0.04,
                        "weight_decay_end": 0.4, "exclude_bias_and_norm": True}
        raw["schedule"]["final_lr"] = 1.0e-5
    else:
        raw["optim"] = {"name": "sgd", "lr": 0.1, "lr_reference_batch": None, "momentum": 0.9, "nesterov": True,
                        "weight_decay": 1.0e-4}
    return raw


def step_seconds(raw: dict, classes: int, channels: int, device: torch.device) -> float:
    """The time of one real step of this recipe on this machine, on generated images of the same size and
    channels (the data's content does not change a step's time)."""
    trial = yaml.safe_load(yaml.safe_dump(raw))
    trial["model"].pop("init", None)  # the weights do not change a step's time
    size = trial["data"]["unlabeled"]["crops"][0]["size"]
    per_class = trial["data"]["batch"]["unlabeled"] // classes + 2
    trial["data"].update({"dataset": "synthetic", "labels": {"per_class": 1},
                          "options": {"num_classes": classes, "size": size, "channels": channels,
                                      "train_per_class": per_class, "test_per_class": 1}})
    trial["data"]["batch"]["labeled"] = min(trial["data"]["batch"]["labeled"], classes)
    trial["schedule"] = {"epochs": TIMED_STEPS}  # at least one step an epoch: the timed steps lie inside the run
    trial["runtime"].update({"device": device.type, "progress": "none"})
    with tempfile.TemporaryDirectory() as folder:
        run = build_run(resolve(trial, "a timing recipe"), RunFiles(Path(folder)), device, resume=False)
    times = []
    for step in range(TIMED_STEPS):
        started = time.perf_counter()
        train_step(run, step)
        times.append(time.perf_counter() - started)
    return statistics.fmean(times[1:])


def choose_width(raw_for, classes: int, channels: int, train_images: int, budget_s: float,
                 device: torch.device) -> tuple[int, list[Measured]]:
    """The widest first-stage width that still gives MIN_EPOCHS passes inside the budget (the narrowest if
    none does), from timed steps of each candidate; wider candidates are only timed while they fit."""
    measured: list[Measured] = []
    for width in FIRST_WIDTHS:
        raw = raw_for(width)
        seconds = step_seconds(raw, classes, channels, device)
        measured.append(Measured(width, seconds, 0.9 * budget_s / seconds * raw["data"]["batch"]["unlabeled"] / train_images))
        if measured[-1].epochs < MIN_EPOCHS:
            break
    fitting = [m for m in measured if m.epochs >= MIN_EPOCHS]
    return (fitting[-1] if fitting else measured[0]).width, measured


def labels_spec(dataset: Dataset, per_class: int | None, fraction: float | None) -> tuple[dict, int]:
    """The recipe's data.labels and the labeled images it gives (every label of a labels list by default)."""
    if per_class is not None:
        return {"per_class": per_class}, per_class * dataset.num_classes
    labeled = int((dataset.train.labels >= 0).sum())
    if fraction is not None:
        return {"fraction": fraction}, max(dataset.num_classes, round(fraction * labeled))
    return {"fraction": 1.0}, labeled


@dataclass
class WarmStart:
    """The run a suggestion list was picked with (`semiclust label suggest`): its checkpoint, its network's
    description and its method; a recipe for the filled-in list starts from its weights (model.init)."""

    run: Path
    checkpoint: Path
    model: dict
    method: str
    images: Path | None


SAME_HEAD = {"swav": ("suave", "swav"), "dino": ("daino", "dino")}  # the methods that share a suggestion run's head


def warm_start(labels: Path) -> WarmStart | None:
    """The suggestion run a `path,label` list names in its comment lines (None for any other list); refuses a list
    with rows still unlabeled, one paragraph saying how many and where."""
    rows = read_rows(labels)
    refuse_unlabeled(labels, rows)
    origin = read_provenance(labels)
    if origin.checkpoint is None:
        return None
    if origin.dataset is not None:
        raise SemiclustError(f"'{labels}' names training indices of the registered dataset '{origin.dataset}', not "
                             "image files; label those by index with data.labels: {list: FILE} (one index per line) "
                             f"in a recipe for {origin.dataset}, starting from model.init: {{path: {origin.checkpoint}}}.")
    if not origin.checkpoint.is_file():
        raise SemiclustError(f"'{labels}' was suggested with the run whose checkpoint is '{origin.checkpoint}', which "
                             "is gone; put the run back, or delete the '# run:' and '# checkpoint:' lines of the list "
                             "to write a recipe that starts from random weights.")
    recipe = validate_saved(load_checkpoint(origin.checkpoint).recipe, f"the recipe of '{origin.checkpoint}'")
    model = recipe.model.model_dump(mode="json", exclude={"init"})
    return WarmStart(origin.run or origin.checkpoint.parent.parent, origin.checkpoint, model, recipe.method.name,
                     origin.images)


def start_from(raw: dict, start: WarmStart, method: str) -> str:
    """Put the suggestion run's network and weights into a recipe: its backbone always, its head too when the
    method shares it (SwAV's for Suave, DINO's for Daino); returns what is loaded."""
    what = "backbone_head" if method in SAME_HEAD.get(start.method, ()) else "backbone"
    raw["model"]["backbone"] = start.model["backbone"]
    raw["model"]["local_crops_update_bn"] = start.model["local_crops_update_bn"]
    if what == "backbone_head":
        raw["model"]["head"] = start.model["head"]
    raw["model"]["init"] = {"path": str(start.checkpoint), "format": "semiclust", "what": what,
                            "key": "teacher" if start.method in ("dino", "daino") else "student"}
    return what


def new_recipe(data: Path | None, budget: str, labels: Path | None = None, evaluation: Path | None = None,
                method: str = "suave", per_class: int | None = None, fraction: float | None = None,
                name: str | None = None, device: str = "cpu",
                registered: tuple[str, Path | None] | None = None) -> InitResult:
    """A recipe for the images in `data` (or the registered dataset `registered`: name and root), fitted to
    `budget` on this machine (module docstring). A labels list written by `semiclust label suggest` (filled in)
    makes a recipe that starts from the weights of the run it was suggested with, on that run's folder when
    `data` is not given."""
    budget_seconds(budget)
    start = warm_start(Path(labels)) if labels is not None else None
    if start is not None and data is None and registered is None:
        data = start.images
    dataset_name, options = describe_data(data, labels, evaluation, registered)
    name = name or f"{Path(data).resolve().name if data is not None else dataset_name}_{method}"
    return fitted_recipe(dataset_name, options, budget, method, per_class, fraction, name, device,
                         where=f"'{data}'" if data is not None else dataset_name, start=start)


def fitted_recipe(dataset_name: str, options: dict, budget: str, method: str = "suave", per_class: int | None = None,
                  fraction: float | None = None, name: str = "recipe", device: str = "cpu", seed: int = 0,
                  where: str = "the data", start: WarmStart | None = None) -> InitResult:
    """The recipe for a registered dataset's options, fitted to `budget` on this machine: crops from the images,
    the widest backbone that fits (or the network of `start`, a suggestion run whose weights it starts from)."""
    budget_s = budget_seconds(budget)
    dataset = build_dataset(dataset_name, options)
    if dataset.problems:
        raise SemiclustError(f"the data in {where} have {len(dataset.problems)} problem(s), e.g. {dataset.problems[0]}; "
                             "fix them first (`semiclust data check` on the written recipe lists them all).")
    grey = grey_images(dataset) if "channels" in dataset_options(dataset_name) else 0
    if grey:
        options = {**options, "channels": 1}
        dataset = build_dataset(dataset_name, options)
    spec, labeled = labels_spec(dataset, per_class, fraction)
    side = typical_size(dataset)
    sizes = crop_sizes(side)
    batch = (min(256, len(dataset.train) // 4), max(1, min(100, labeled)))
    loaded = None

    def raw_for(width: int) -> dict:
        nonlocal loaded
        raw = template(name, dataset_name, options, spec, method, sizes, width, batch)
        if start is not None:
            loaded = start_from(raw, start, method)
        return raw

    if start is None:
        width, measured = choose_width(raw_for, dataset.num_classes, dataset.channels, len(dataset.train), budget_s,
                                       torch.device(device))
    else:
        width = start.model["backbone"]["kwargs"].get("widths", [FIRST_WIDTHS[0]])[0]
        measured = [timed(raw_for(width), width, dataset, budget_s, torch.device(device))]
    raw = raw_for(width)
    raw["seed"] = seed
    raw["schedule"]["budget"] = budget
    chosen = next(m for m in measured if m.width == width)
    raw["eval"] = {"every_epochs": max(1, round(chosen.epochs / 6))}
    # the warm-up: half an epoch, or a tenth of the run when the budget allows fewer than 5 passes over the data
    raw["schedule"]["warmup_epochs"] = min(0.5, float(f"{chosen.epochs / 10:.2g}"))
    if method in ("daino", "dino"):  # the teacher temperature's warm-up: a sixth of the run (DINO's default is 10 epochs)
        raw["method"]["assignment"] = {"name": "center_sharpen", "warmup_epochs": max(1, round(chosen.epochs / 6))}
    choices = made_choices(raw, dataset_name, options, dataset, labeled, sizes, side, grey, measured, budget)
    short = short_daino_run(raw, method, budget_s, chosen)
    if short is not None:
        choices.append(short)
    if start is not None:
        started = Choice("model", raw["model"]["backbone"], f"the network of the suggestion run {start.run} "
                         f"({start.method}), its {loaded.replace('_', ' + ')} weights loaded (model.init): "
                         f"{chosen.step_s:.3f}s a step here, {chosen.epochs:.1f} epochs in {budget}")
        choices = [started if c.key == "model.backbone" else c for c in choices]
    recipe = resolve(raw, "the recipe written by `semiclust recipe init`")
    return InitResult(recipe, render_recipe(raw, choices), choices, measured)


def short_daino_run(raw: dict, method: str, budget_s: float, chosen: Measured) -> Choice | None:
    """For Daino in a run of fewer than SHORT_DAINO_STEPS planned steps: the labeled weight 0.5 and the teacher's
    momentum held at 0.99, written into `raw` (see SHORT_DAINO_STEPS); None otherwise."""
    steps = 0.9 * budget_s / chosen.step_s
    if method != "daino" or steps >= SHORT_DAINO_STEPS:
        return None
    raw["method"].update({"labeled_weight": 0.5, "teacher": {"momentum_end": 0.99}})
    return Choice("method.labeled_weight, method.teacher.momentum_end", "0.5, 0.99",
                  f"about {steps:,.0f} steps planned, fewer than {SHORT_DAINO_STEPS:,}: in a short run Daino needs the "
                  "labeled loss's pull and a teacher that keeps following (docs/method.md)")


def budget_seconds(budget: str) -> float:
    """The budget of a `--budget` option in seconds, or one paragraph naming the option and how to write one (a
    duration, at least MIN_BUDGET_S): `train`, `recipe init` and `label suggest` all check theirs here."""
    try:
        seconds = duration_seconds(budget)
    except ValueError as err:
        raise SemiclustError(f"--budget: {err}.") from None
    if seconds < MIN_BUDGET_S:
        raise SemiclustError(f"--budget: {TOO_SHORT_BUDGET}; give e.g. --budget 30m.")
    return seconds


def timed(raw: dict, width: int, dataset: Dataset, budget_s: float, device: torch.device) -> Measured:
    """One candidate's step time here and the passes over the data it allows in 90% of the budget."""
    seconds = step_seconds(raw, dataset.num_classes, dataset.channels, device)
    return Measured(width, seconds, 0.9 * budget_s / seconds * raw["data"]["batch"]["unlabeled"] / len(dataset.train))


def made_choices(raw: dict, dataset_name: str, options: dict, dataset: Dataset, labeled: int, sizes: tuple,
                 side: int, grey: int, measured: list[Measured], budget: str) -> list[Choice]:
    """What the recipe's header says was measured and chosen."""
    return [
        Choice("data", f"{dataset_name} {options}", f"{len(dataset.train):,} training images, {dataset.num_classes} "
               f"classes, {labeled:,} labeled"),
        Choice("crops", f"{sizes[0]} and {sizes[1]} px", f"the images' median short side is {side} px"),
        *([Choice("data.options.channels", 1, f"the {grey} training images sampled are all grey: a 1-channel "
                  "network on their luma")] if grey else []),
        Choice("model.backbone", raw["model"]["backbone"], f"the widest of {[m.width for m in measured]} whose steps "
               f"give {MIN_EPOCHS}+ epochs in {budget} here: " + ", ".join(
                   f"width {m.width}: {m.step_s:.3f}s a step, {m.epochs:.1f} epochs" for m in measured)),
        Choice("data.batch", raw["data"]["batch"], "256 unlabeled (or a quarter of the set), up to 100 labeled"),
    ]


def render_recipe(raw: dict, choices: list[Choice]) -> str:
    """The recipe as YAML under a header saying what `recipe init` measured and chose."""
    header = [f"# Written by `semiclust recipe init` for {raw['data']['dataset']}: budget {raw['schedule']['budget']}.",
              "# Every value below can be changed; `semiclust recipe show` prints the defaults filled in.",
              "# What was measured and chosen:"]
    header += [f"#   {c.key}: {c.why}" for c in choices]
    return "\n".join(header) + "\n" + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, width=110)
