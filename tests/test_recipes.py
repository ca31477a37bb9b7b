"""The shipped recipes: every file validates and starts with a header comment; the paper recipes hold
the release's values (spec/method.md) and their headers say what they reproduce, on what hardware, what
to expect and how their global batches split over processes; no recipe says batches are per process;
and `semiclust train --dry-run` builds each ImageNet and CIFAR-100 recipe (data listing, the real
ResNet-50 / ViT-S/16 / ResNet-18 with its `model.init`, optimiser)
against tiny datasets generated here in the real on-disk layouts.

The dry runs take ~55 s on 2 CPU cores (each builds ResNet-50 / ViT-S and runs a probe forward at
224 px), so they are marked slow. Only what the tiny data forces is changed for them: the dataset root
and subset list, the global batches of the ImageNet recipes (24 training images) and the init
file's path. The number of classes follows the data (3 ImageNet classes here, 100 for CIFAR-100).
"""
from __future__ import annotations

import argparse
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from semiclust.cli import main
from semiclust.config.loader import Recipe, load_raw, load_recipe

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
ALL_RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))

SUAVE_IN1K = ["suave_r50_in1k_1pct", "suave_r50_in1k_10pct"]
SUAVE_FINETUNE = ["suave_r50_in1k_1pct_finetune", "suave_r50_in1k_10pct_finetune"]
DAINO_IN1K = ["daino_vits_in1k_1pct", "daino_vits_in1k_10pct", "dino_vits_in1k_10pct"]
IMAGENET = SUAVE_IN1K + SUAVE_FINETUNE + DAINO_IN1K
CIFAR = [f"{method}_r18_cifar100_{labels}" for method in ("suave", "daino") for labels in (400, 2500, 10000)]
PAPER = IMAGENET + CIFAR

WNIDS = ["n01440764", "n01443537", "n01484850"]  # 3 classes
TRAIN_PER_CLASS, VAL_PER_CLASS, LISTED_PER_CLASS = 8, 2, 4
PROCESSES, UNLABELED, LABELED = 2, 16, 8  # the ImageNet dry runs' global batches: 16 of 24 images, 8 of 12 labels


def recipe_path(name: str) -> Path:
    return RECIPES_DIR / f"{name}.yaml"


def header(path: Path) -> str:
    """The leading comment block of a recipe file."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return " ".join(lines)


def value(recipe: Recipe, dotted: str):
    node = recipe.model_dump(mode="json")
    for key in dotted.split("."):
        node = node[key]
    return node


# ---------------------------------------------------------------- every file
def test_the_paper_recipes_are_all_shipped():
    assert {p.stem for p in ALL_RECIPES} >= set(PAPER)


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: p.stem)
def test_every_recipe_validates_and_starts_with_a_header_comment(path):
    recipe = load_recipe(path)
    assert recipe.name
    first = path.read_text().splitlines()[:2]
    assert all(line.startswith("#") for line in first), f"{path.name} must start with a header comment"


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipe_headers_say_what_where_expected_and_how_to_scale(name):
    text = header(recipe_path(name)).lower()
    for needed in ("hardware", "expected result", "batches are global", "images per optimiser step over all processes",
                   "each takes batch/n", "--dry-run --processes n", "lr_reference_batch", "global unlabeled batch",
                   "--set data.batch.unlabeled=", "--set optim.accumulate_steps=2", "--set data.options.root="):
        assert needed in text, f"{name}: the header lacks '{needed}'"
    assert "not measured by semiclust" in text  # no invented numbers
    assert "per process" not in text and "per-process batch x processes" not in text


# what recipes said before data.batch meant images per optimiser step over all processes
PER_PROCESS_CLAIMS = ("per process;", "PER PROCESS", "per-process batch x processes", "Batches are per process")


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: p.stem)
def test_no_recipe_comment_says_batches_are_per_process(path):
    text = path.read_text()
    assert load_recipe(path).data.batch.per == "global"
    for claim in PER_PROCESS_CLAIMS:
        assert claim.lower() not in text.lower(), f"{path.name} still says '{claim}': data.batch is global"


# ---------------------------------------------------------------- the release's values (spec/method.md)
SUAVE_RELEASE = {  # section 3 (+ 2, 5)
    "model.backbone.name": "resnet50", "model.head.hidden": 2048, "model.head.out": 128, "model.head.batchnorm": True,
    "method.name": "suave", "method.temperature": 0.1, "method.assignment.name": "sinkhorn",
    "method.assignment.epsilon": 0.05, "method.assignment.iterations": 3, "method.assignment.prior": "uniform",
    "method.queue.length": 3840,
    "method.queue.start_epoch": 0, "method.mixup.enabled": True, "method.freeze_prototypes_steps": 0,
    "optim.name": "lars", "optim.lr_reference_batch": 256, "optim.momentum": 0.9, "optim.trust_coefficient": 0.001,
    "optim.weight_decay": 1e-6, "optim.exclude_bias_and_norm": False, "runtime.precision": "fp16",
    "runtime.sync_batchnorm": True, "data.options.std": [0.228, 0.224, 0.225], "data.eval.size": 224,
    "data.eval.resize": 256, "data.batch.unlabeled": 256, "data.batch.labeled": 128,  # global: 32 + 16 on 8 GPUs
    "data.batch.per": "global", "method.unlabeled_mixup.enabled": True, "method.unlabeled_mixup.weight": "views",
}
SUAVE_STAGES = {
    "suave_r50_in1k_1pct": {"optim.lr": 0.4, "schedule.epochs": 100, "schedule.warmup_epochs": 5,
                            "schedule.final_lr": 0.001, "method.label_smoothing": 0.01,
                            "model.init.format": "swav", "model.init.what": "backbone"},
    "suave_r50_in1k_1pct_finetune": {"optim.lr": 0.02, "schedule.epochs": 3, "schedule.warmup_epochs": 0,
                                     "schedule.final_lr": 2e-4, "method.label_smoothing": 0.01,
                                     "model.init.format": "semiclust", "model.init.what": "all"},
    "suave_r50_in1k_10pct_finetune": {"optim.lr": 0.03, "schedule.epochs": 5, "schedule.warmup_epochs": 0,
                                      "schedule.final_lr": 3e-4, "method.label_smoothing": 0.001,
                                      "model.init.format": "semiclust", "model.init.what": "all"},
}
SUAVE_STAGES["suave_r50_in1k_10pct"] = SUAVE_STAGES["suave_r50_in1k_1pct"]
DAINO_RELEASE = {  # section 4 (+ 2, 5)
    "model.backbone.name": "vit_small_patch16_224",
    "model.backbone.kwargs": {"dynamic_img_size": True, "drop_path_rate": 0.0},  # the release's eval-mode student
    "model.head": {"hidden": 2048, "out": 256, "layers": 3, "batchnorm": False, "activation": "gelu",
                   "init": "trunc_normal", "prototypes_per_class": 1},  # one prototype per class, as the paper
    "model.init.format": "dino", "model.init.key": "student", "model.init.what": "backbone",
    "method.name": "daino", "method.temperature": 0.1, "method.label_smoothing": 0.01,
    "method.assignment.name": "center_sharpen", "method.assignment.temperature": 0.07,
    "method.assignment.warmup_temperature": 0.04, "method.assignment.warmup_epochs": 10,
    "method.assignment.center_momentum": 0.9, "method.assignment.prior": "uniform",  # no class prior: the release
    "method.teacher": {"momentum": 0.99, "momentum_end": 1.0}, "method.mixup.enabled": True,
    "optim.name": "adamw", "optim.lr": 0.00024, "optim.lr_reference_batch": 256, "optim.weight_decay": 0.04,
    "optim.weight_decay_end": 0.4, "optim.exclude_bias_and_norm": True, "optim.clip_grad_norm": None,
    "optim.decay_prototype_magnitude": True, "method.unlabeled_mixup.enabled": False,
    "schedule.epochs": 60, "schedule.warmup_epochs": 4, "schedule.final_lr": 1e-5, "runtime.precision": "fp32",
    "data.options.std": [0.229, 0.224, 0.225], "data.batch.unlabeled": 1024, "data.batch.labeled": 512,  # 64 + 32 x 16
    "data.batch.per": "global",
}


def crops(recipe: Recipe) -> list[tuple]:
    return [(g.count, g.size, g.scale, g.blur.p, g.solarize, g.color is not None) for g in recipe.data.unlabeled.crops]


@pytest.mark.parametrize("name", SUAVE_IN1K + SUAVE_FINETUNE)
def test_suave_imagenet_recipes_hold_the_release_values(name):
    recipe = load_recipe(recipe_path(name))
    for key, expected in {**SUAVE_RELEASE, **SUAVE_STAGES[name]}.items():
        assert value(recipe, key) == expected, key
    percent = "1percent.txt" if "_1pct" in name else "10percent.txt"
    assert recipe.data.labels.list.name == percent
    labeled = recipe.data.labeled
    if name.endswith("_finetune"):  # 2 x 224 (0.08-1) without colour or blur; light labeled jitter, no grayscale
        assert crops(recipe) == [(2, 224, (0.08, 1.0), 0.0, 0.0, False)]
        assert (labeled.color.brightness, labeled.grayscale) == (0.1, 0.0)
        assert recipe.model.init.path == Path(f"runs/{name.removesuffix('_finetune')}/checkpoints/final.pt")
    else:  # 2 x 224 + 8 x 96, SwAV's jitter, grayscale and blur
        assert crops(recipe) == [(2, 224, (0.14, 1.0), 0.5, 0.0, True), (8, 96, (0.05, 0.14), 0.5, 0.0, True)]
        assert recipe.data.unlabeled.crops[0].color.model_dump() == {
            "p": 0.8, "brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2}
        assert (labeled.scale, labeled.color.brightness, labeled.grayscale, labeled.blur.p) == ((0.08, 1.0), 0.4, 0.2, 0.0)
    assert "8 GPUs" in header(recipe_path(name))


@pytest.mark.parametrize("name", DAINO_IN1K)
def test_daino_imagenet_recipes_hold_the_release_values(name):
    recipe = load_recipe(recipe_path(name))
    for key, expected in DAINO_RELEASE.items():
        assert value(recipe, key) == expected, key
    assert crops(recipe) == [(1, 224, (0.25, 1.0), 1.0, 0.0, True), (1, 224, (0.25, 1.0), 0.1, 0.2, True),
                             (8, 96, (0.05, 0.25), 0.5, 0.0, True)]
    assert {g.interpolation for g in recipe.data.unlabeled.crops} == {"bicubic"}
    assert recipe.data.labels.list.name == ("1percent.txt" if "_1pct" in name else "10percent.txt")
    assert "16 GPUs" in header(recipe_path(name))


@pytest.mark.parametrize("name", DAINO_IN1K)
def test_daino_imagenet_students_have_no_drop_path_as_the_release_computes(name):
    """The release's student trains in eval mode, so its drop_path 0.1 never acts (spec/method.md section 4);
    the recipe reproduces that and its header says why and how to get the documented intent."""
    recipe = load_recipe(recipe_path(name))
    assert recipe.model.backbone.kwargs["drop_path_rate"] == 0.0
    assert recipe.optim.decay_prototype_magnitude is True
    text = header(recipe_path(name))
    assert "eval mode" in text and "--set model.backbone.kwargs.drop_path_rate=0.1" in text
    assert "drop_path 0.1 on the student only" not in text


@pytest.mark.parametrize("name", SUAVE_IN1K + SUAVE_FINETUNE)
def test_suave_imagenet_headers_say_the_unlabeled_mixup_is_on(name):
    text = header(recipe_path(name))
    assert "Not expressible in semiclust" not in text
    assert "weight: views" in text and "weight: rows" in text and "~0.3% of the loss" in text


def test_the_1pct_finetune_header_says_the_release_script_does_not_parse():
    text = header(recipe_path("suave_r50_in1k_1pct_finetune"))
    assert "--lr_last_layer" in text and "does not parse" in text
    assert "their own lr (0.01)" not in text


@pytest.mark.parametrize("name", CIFAR)
def test_cifar100_headers_say_they_are_semiclusts_choices_not_the_papers_protocol(name):
    text = header(recipe_path(name))
    assert "not the paper's protocol" in text and "the paper's CIFAR-100 setting" not in text


def test_the_dino_named_recipe_is_daino_and_identical_to_its_properly_named_copy():
    def body(name: str) -> list[str]:
        return [line for line in recipe_path(name).read_text().splitlines() if not line.startswith("#")]

    assert body("dino_vits_in1k_10pct") == body("daino_vits_in1k_10pct")  # only the header comment differs
    assert load_raw(recipe_path("dino_vits_in1k_10pct")) == load_raw(recipe_path("daino_vits_in1k_10pct"))
    assert load_recipe(recipe_path("dino_vits_in1k_10pct")).method.name == "daino"
    assert "DAINO, NOT DINO" in header(recipe_path("dino_vits_in1k_10pct"))


@pytest.mark.parametrize("method", ["suave", "daino"])
def test_cifar100_recipes_differ_only_in_the_labels_per_class(method):
    raws = {labels: load_raw(recipe_path(f"{method}_r18_cifar100_{labels}")) for labels in (400, 2500, 10000)}
    for labels, raw in raws.items():
        assert raw.pop("name") == f"{method}_r18_cifar100_{labels}"
        assert raw["data"]["labels"].pop("per_class") * 100 == labels
    assert raws[400] == raws[2500] == raws[10000]


# ---------------------------------------------------------------- tiny datasets and init files
@pytest.fixture(scope="session")
def imagenet(tmp_path_factory) -> tuple[Path, Path]:
    """ROOT/{train,val}/<wnid>/<wnid>_<i>.JPEG (small JPEGs: the crops are resized from any size) and a
    SimCLR-style subset list of base file names; returns (root, list)."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    listed = []
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for c, wnid in enumerate(WNIDS):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (36 + 4 * c, 48, 3), dtype=np.uint8)  # H x W x RGB
                name = f"{wnid}_{1000 + i}.JPEG" if split == "train" else f"ILSVRC2012_val_{c * 100 + i:08d}.JPEG"
                Image.fromarray(pixels).save(folder / name, format="JPEG")
                if split == "train" and i < LISTED_PER_CLASS:
                    listed.append(name)
    subset = root / "1percent.txt"
    subset.write_text("\n".join(listed) + "\n")
    return root, subset


def _write_pickle(path: Path, content: dict) -> None:
    path.write_bytes(pickle.dumps(content, protocol=2))  # CIFAR's files are Python 2 era pickles


@pytest.fixture(scope="session")
def cifar100(tmp_path_factory) -> Path:
    """ROOT/cifar-100-python/{train,test,meta} in the python version's format: 100 classes x 100
    training images (enough for the 10,000-label recipe without shrinking anything), 1 test image each."""
    root = tmp_path_factory.mktemp("cifar100")
    folder = root / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 100), ("test", 1)):
        fine = np.repeat(np.arange(100), per_class)
        _write_pickle(folder / split, {
            b"filenames": [f"{split}_{i}.png".encode() for i in range(len(fine))], b"batch_label": split.encode(),
            b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist(),
            b"data": rng.integers(0, 256, (len(fine), 3 * 32 * 32), dtype=np.uint8)})  # R, G, B planes per row
    _write_pickle(folder / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                                    b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    yield root
    shutil.rmtree(folder)  # 30 MB; pytest keeps the last runs' temporary folders


@pytest.fixture(scope="session")
def swav_file(tmp_path_factory):
    """SwAV's released file: the DistributedDataParallel state_dict itself (`module.` + torchvision ResNet-50
    names, projection_head Linear-BN-ReLU-Linear, 3,000 prototypes), in PyTorch's legacy format."""
    torch.manual_seed(0)
    state = {f"module.{k}": v for k, v in timm.create_model("resnet50", num_classes=0).state_dict().items()}
    head = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.BatchNorm1d(2048), torch.nn.ReLU(),
                               torch.nn.Linear(2048, 128))
    state.update({f"module.projection_head.{k}": v for k, v in head.state_dict().items()})
    state["module.prototypes.weight"] = torch.randn(3000, 128)
    path = tmp_path_factory.mktemp("weights") / "swav_800ep_pretrain.pth.tar"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    yield path
    path.unlink()


@pytest.fixture(scope="session")
def dino_file(tmp_path_factory):
    """DINO's full checkpoint: `student` (DDP: module.backbone.* with timm's = DINO's ViT-S/16 names,
    module.head.mlp.*, module.head.last_layer.weight_g/v), `teacher` (not wrapped: no BatchNorm), `args`
    (argparse.Namespace), epoch, dino_loss. The teacher shares the student's tensors (torch.save stores
    them once) and the last layer has 4,096 rows instead of 65,536: both are ignored by what: backbone."""
    torch.manual_seed(0)
    network = {f"backbone.{k}": v for k, v in timm.create_model("vit_small_patch16_224", num_classes=0).state_dict().items()}
    for i, (fan_in, fan_out) in zip((0, 2, 4), ((384, 2048), (2048, 2048), (2048, 256))):
        network[f"head.mlp.{i}.weight"], network[f"head.mlp.{i}.bias"] = torch.randn(fan_out, fan_in), torch.zeros(fan_out)
    network["head.last_layer.weight_g"], network["head.last_layer.weight_v"] = torch.ones(4096, 1), torch.randn(4096, 256)
    args = argparse.Namespace(arch="vit_small", patch_size=16, out_dim=4096, norm_last_layer=False, epochs=100)
    state = {"student": {f"module.{k}": v for k, v in network.items()}, "teacher": dict(network), "epoch": 100,
             "args": args, "dino_loss": {"center": torch.zeros(1, 4096)}}
    path = tmp_path_factory.mktemp("weights") / "dino_deitsmall16_pretrain_full_checkpoint.pth"
    torch.save(state, path)
    yield path
    path.unlink()


@pytest.fixture(scope="session")
def suave_final_checkpoint(tmp_path_factory):
    """What the first stage leaves in runs/<stage 1>/checkpoints/final.pt, for the fine-tune recipes: a
    semiclust checkpoint of the stage-1 recipe's Suave (ResNet-50, 3 prototypes for the 3 tiny classes),
    written by semiclust's own save_checkpoint with the entries `model.init` reads. Nothing is trained."""
    from semiclust import __version__
    from semiclust.engine.checkpoint import Checkpoint, save_checkpoint
    from semiclust.engine.setup import build_method

    recipe = load_recipe(recipe_path("suave_r50_in1k_1pct"), ["model.init=null"])
    torch.manual_seed(0)
    method = build_method(recipe, len(WNIDS), 3, 1)
    path = tmp_path_factory.mktemp("runs") / "suave_r50_in1k_1pct" / "checkpoints" / "final.pt"
    save_checkpoint(Checkpoint.from_dict({"semiclust_version": __version__, "recipe": recipe.model_dump(mode="json"), "step": 500,
                     "epoch": 100, "method": method.state_dict(), "classes": WNIDS,
                     "classifier": {"prefix": "student", "prototypes": method.prototypes, "in_chans": 3,
                                    "num_classes": len(WNIDS), "matched": False}}), path)
    yield path
    path.unlink()


# ---------------------------------------------------------------- the dry runs
def dry_run(capsys, monkeypatch, name: str, *options: str) -> dict[str, str]:
    """`semiclust train RECIPE --dry-run ...` in-process; the printed plan as {row: text}, table cells
    that rich wrapped over several lines joined back."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["train", str(recipe_path(name)), "--dry-run", *options])
    out, err = capsys.readouterr()
    assert done.value.code == 0, err
    assert "dry run: nothing was trained or written." in out
    rows: dict[str, str] = {}
    key = None
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) < 4:
            continue
        key = cells[1] or key
        rows[key] = f"{rows.get(key, '')} {cells[2]}".strip()
    return rows


def sets(**values) -> list[str]:
    return [arg for key, v in values.items() for arg in ("--set", f"{key.replace('__', '.')}={v}")]


def check_imagenet_plan(rows: dict[str, str], recipe: Recipe) -> None:
    assert rows["data"] == (f"{len(WNIDS) * TRAIN_PER_CLASS} training images, {len(WNIDS) * LISTED_PER_CLASS} "
                            f"labeled, {len(WNIDS) * VAL_PER_CLASS} evaluation images, {len(WNIDS)} classes")
    assert rows["global batch"] == (f"{UNLABELED} unlabeled + {LABELED} labeled images per step; each of {PROCESSES} "
                                    f"process(es) takes {UNLABELED // PROCESSES} + {LABELED // PROCESSES}")
    epochs = recipe.schedule.epochs  # 24 // 16 = 1 step per epoch
    assert rows["steps"] == f"1 per epoch x {epochs} epochs = {epochs}; warm-up {round(recipe.schedule.warmup_epochs)}"
    lr = recipe.optim.lr * UNLABELED / recipe.optim.lr_reference_batch
    assert rows["learning rate"] == f"{lr:.4g} after scaling ({recipe.optim.lr:g} per 256 images)"


@pytest.mark.slow
@pytest.mark.parametrize("name", SUAVE_IN1K)
def test_suave_imagenet_dry_run(name, imagenet, swav_file, capsys, monkeypatch):
    root, subset = imagenet
    rows = dry_run(capsys, monkeypatch, name, "--processes", str(PROCESSES), *sets(
        data__options__root=root, data__labels__list=subset, data__batch__unlabeled=UNLABELED,
        data__batch__labeled=LABELED, model__init__path=swav_file))
    check_imagenet_plan(rows, load_recipe(recipe_path(name)))
    assert rows["parameters"].startswith("backbone 23,508,032, head 4,462,720, prototypes 384;")  # ResNet-50, 3 x 128
    assert rows["optimiser"] == "lars, 1 parameter group(s)"
    # SwAV's projector (9 tensors) and its 3,000 self-supervised prototypes are left out (what: backbone)
    assert re.search(r"init from swav file .* 318 backbone tensors loaded, 0 missing, 0 unexpected, 10 ignored "
                     r"\(projection_head, prototypes\)", rows["init"]), rows["init"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SUAVE_FINETUNE)
def test_suave_finetune_dry_run_starts_from_the_first_stage_checkpoint(name, imagenet, suave_final_checkpoint,
                                                                      capsys, monkeypatch):
    root, subset = imagenet
    rows = dry_run(capsys, monkeypatch, name, "--processes", str(PROCESSES), *sets(
        data__options__root=root, data__labels__list=subset, data__batch__unlabeled=UNLABELED,
        data__batch__labeled=LABELED, model__init__path=suave_final_checkpoint))
    check_imagenet_plan(rows, load_recipe(recipe_path(name)))
    assert rows["parameters"].startswith("backbone 23,508,032, head 4,462,720, prototypes 384;")
    # backbone (320 incl. BatchNorm buffers) + head (7) + prototypes (1), all from the checkpoint's student
    assert re.search(r"init from semiclust file .*\('student'\):? 328 backbone\+head\+prototypes tensors loaded, "
                     r"0 missing, 0 unexpected", rows["init"]), rows["init"]


# dino_vits_in1k_10pct.yaml is left out: below its header it is daino_vits_in1k_10pct.yaml line for line
# (test_the_dino_named_recipe_is_daino_...), and each ViT-S dry run costs ~8 s on 2 cores.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["daino_vits_in1k_1pct", "daino_vits_in1k_10pct"])
def test_daino_imagenet_dry_run(name, imagenet, dino_file, capsys, monkeypatch):
    root, subset = imagenet
    rows = dry_run(capsys, monkeypatch, name, "--processes", str(PROCESSES), *sets(
        data__options__root=root, data__labels__list=subset, data__batch__unlabeled=UNLABELED,
        data__batch__labeled=LABELED, model__init__path=dino_file))
    check_imagenet_plan(rows, load_recipe(recipe_path(name)))
    # ViT-S/16 and DINO's head; weight-normalised prototypes: v (3 x 256) + g (3)
    assert rows["parameters"] == ("backbone 21,665,664, head 5,509,376, prototypes 771; trainable 27,175,811; "
                                  "EMA teacher 27,175,811")
    assert rows["optimiser"] == "adamw, 2 parameter group(s)"  # no weight decay on biases and 1-D parameters
    assert re.search(r"init from dino file .*\('student'\):? 150 backbone tensors loaded, 0 missing, 0 unexpected",
                     rows["init"]), rows["init"]


@pytest.mark.slow
@pytest.mark.parametrize("name", CIFAR)
def test_cifar100_dry_run(name, cifar100, capsys, monkeypatch):
    rows = dry_run(capsys, monkeypatch, name, *sets(data__options__root=cifar100))
    labels = int(name.rsplit("_", 1)[1])
    assert rows["data"] == f"10,000 training images, {labels:,} labeled, 100 evaluation images, 100 classes"
    assert rows["global batch"] == "256 unlabeled + 128 labeled images per step; each of 1 process(es) takes 256 + 128"
    assert rows["steps"] == "39 per epoch x 500 epochs = 19,500; warm-up 390"
    assert rows["learning rate"] == "0.1 after scaling (0.1 per 256 images)"
    assert rows["parameters"].startswith("backbone 11,168,832,")  # the small-image ResNet-18
    assert "init" not in rows  # trained from scratch
