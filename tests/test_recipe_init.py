"""`semiclust recipe init` (semiclust/config/init.py), through the CLI in-process: the recipe it writes for an
ImageFolder of 16-px images and for a folder of 64-px images with a labels list validates, names the data and
the budget, and crops as the images' size asks; a folder it cannot use is a one-paragraph error, not a traceback;
and the 64-px recipe trains inside a short budget."""
from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from semiclust import api
from semiclust.cli import app
from tests.test_cli import run as cli
from semiclust.config.loader import load_recipe
from semiclust.data.datasets import build_dataset
from semiclust.config.init import crop_sizes, grey_images
from tests.data.files import image_tree, save, stripes


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread for the timed steps: on a shared 2-core machine two threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_folder(tmp_path) -> Path:
    """An ImageFolder of 16-px PNGs: train/ and val/ with 3 class folders."""
    image_tree(tmp_path / "small" / "train", ["ant", "bee", "cat"], per_class=6, size=16)
    image_tree(tmp_path / "small" / "val", ["ant", "bee", "cat"], per_class=2, size=16, start_seed=70)
    return tmp_path / "small"


def large_images(root: Path) -> tuple[Path, Path]:
    """40 generated 64-px PNGs in one folder, 12 of them labeled in a 'path,label' list beside it."""
    lines = ["path,label"]
    for i in range(40):
        save(root / "pool" / f"img_{i:02d}.png", stripes(i % 4, i, size=64))
        if i < 12:
            lines.append(f"pool/img_{i:02d}.png,c{i % 4}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "pool", root / "labels.csv"


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> dict:
    """`recipe init` run once on the 64-px folder (its candidates' timing is the slow part), for two tests."""
    root = tmp_path_factory.mktemp("large")
    pool, labels = large_images(root)
    out = root / "large.yaml"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        done = CliRunner().invoke(app, ["recipe", "init", "--data", str(pool), "--labels", str(labels), "--out",
                                        str(out), "--budget", "1m"])
    finally:
        torch.set_num_threads(threads)
    assert done.exit_code == 0, done.output
    return {"pool": pool, "labels": labels, "out": out, "stdout": " ".join(done.stdout.split()), "root": root}


def written(capsys, out: Path, *argv: str):
    """Run `recipe init` to `out`; the validated recipe, the file's text and the command's output."""
    code, stdout, err = cli(capsys, "recipe", "init", "--out", str(out), *argv)
    assert code == 0, err
    stdout = " ".join(stdout.split())  # the console wraps long lines at its width
    assert f"wrote {out}; train with: {shlex.join(['semiclust', 'train', str(out)])}" in stdout  # pasteable as is
    text = out.read_text()
    assert "&id" not in text and "*id" not in text  # no YAML anchors: each view's settings are edited on their own
    return load_recipe(out), text, stdout


def test_crop_sizes_follow_the_images_short_side():
    """Crops keep small images' size, follow the release (224 / 96) for large ones, never shrink as images grow."""
    assert crop_sizes(8) == (8, 8, 3) and crop_sizes(16) == (16, 8, 3) and crop_sizes(28) == (28, 14, 3)
    assert crop_sizes(64) == (64, 32, 4) and crop_sizes(96) == (96, 41, 5) and crop_sizes(500) == (224, 96, 6)
    sides = [8, 12, 16, 28, 32, 48, 64, 96, 128, 224, 500]
    for smaller, larger in zip(sides, sides[1:]):
        assert all(a <= b for a, b in zip(crop_sizes(smaller), crop_sizes(larger))), (smaller, larger)


def test_an_imagefolder_of_16_px_images_gets_a_valid_16_px_recipe(capsys, small_folder, tmp_path):
    """A 16-px ImageFolder gets a valid recipe naming the folder and the 1m budget, with 16- and 8-px crops."""
    out = tmp_path / "small.yaml"
    recipe, text, stdout = written(capsys, out, "--data", str(small_folder), "--budget", "1m")
    assert recipe.data.dataset == "imagefolder" and recipe.data.options["root"] == str(small_folder)
    assert recipe.data.options["eval_dir"] == "val" and "channels" not in recipe.data.options  # colour: RGB
    assert recipe.schedule.budget == "1m" and recipe.schedule.budget_seconds == 60 and recipe.schedule.epochs is None
    assert [c.size for c in recipe.data.unlabeled.crops] == [16, 8]
    assert recipe.data.labeled.size == recipe.data.eval.size == 16
    assert len(recipe.model.backbone.kwargs["widths"]) == crop_sizes(16)[2]
    assert text.startswith("# Written by `semiclust recipe init` for imagefolder: budget 1m.")
    assert "crops: the images' median short side is 16 px" in stdout and "18 training images, 3 classes" in stdout
    code, shown, err = cli(capsys, "recipe", "show", str(out))
    assert code == 0, err
    assert yaml.safe_load(shown)["schedule"]["budget"] == "1m"


def test_a_folder_of_grey_images_gets_a_one_channel_recipe(capsys, tmp_path):
    """Grey PNGs get `channels: 1` (a 1-channel network, said in the output); one colour image among them, or a
    colour folder, keeps RGB."""
    image_tree(tmp_path / "grey" / "train", ["ant", "bee", "cat"], per_class=6, size=16, grey=True)
    image_tree(tmp_path / "grey" / "val", ["ant", "bee", "cat"], per_class=2, size=16, start_seed=70, grey=True)
    recipe, text, stdout = written(capsys, tmp_path / "grey recipe.yaml", "--data", str(tmp_path / "grey"),
                                   "--budget", "1m")
    assert recipe.data.options["channels"] == 1 and "channels: 1" in text
    assert "data.options.channels: the 18 training images sampled are all grey" in stdout
    assert build_dataset(recipe.data.dataset, recipe.data.options).channels == 1
    save(tmp_path / "grey" / "train" / "bee" / "bee_colour.png", stripes(1, 3, size=16))
    assert grey_images(build_dataset("imagefolder", {"root": str(tmp_path / "grey")})) == 0
    image_tree(tmp_path / "colour" / "train", ["ant", "bee"], per_class=2, size=16)
    assert grey_images(build_dataset("imagefolder", {"root": str(tmp_path / "colour"), "eval_dir": None})) == 0


def test_a_folder_of_64_px_images_gets_larger_crops(large):
    """40 64-px images with a labels list get a valid labeled_list recipe with larger (64 / 32 px) crops."""
    pool, labels, out, stdout = large["pool"], large["labels"], large["out"], large["stdout"]
    assert f"wrote {out}; train with: semiclust train {out}" in stdout
    assert "&id" not in out.read_text() and "*id" not in out.read_text()
    recipe = load_recipe(out)
    assert recipe.data.dataset == "labeled_list"
    assert recipe.data.options == {"labeled": str(labels.resolve()), "unlabeled": [str(pool.resolve())]}
    assert recipe.schedule.budget == "1m" and "40 training images, 4 classes, 12 labeled" in stdout
    sizes = [c.size for c in recipe.data.unlabeled.crops]
    assert sizes == [64, 32] and recipe.data.labeled.size == recipe.data.eval.size == 64
    assert sizes[0] > crop_sizes(16)[0] and sizes[1] > crop_sizes(16)[1]
    assert len(recipe.model.backbone.kwargs["widths"]) == crop_sizes(64)[2] == 4
    assert recipe.data.batch.unlabeled == 10 and recipe.data.batch.labeled == 12  # a quarter of 40; every label


def test_a_folder_it_cannot_use_is_a_one_paragraph_error(capsys, tmp_path):
    """A folder init cannot use, or a bad --budget, is a one-paragraph exit 2 with no traceback and no file."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_images" / "train" / "ant").mkdir(parents=True)
    for i in range(3):
        save(tmp_path / "flat" / f"img_{i}.png", stripes(0, i, size=16))
    image_tree(tmp_path / "ok" / "train", ["ant", "bee"], per_class=2, size=16)
    cases = [
        (tmp_path / "nowhere", [], "is not a folder; give an ImageFolder"),
        (tmp_path / "empty", [], "has no train/<class>/ folders"),
        (tmp_path / "flat", [], "has no train/<class>/ folders"),
        (tmp_path / "no_images", [], "class 'ant' has no images"),
        (tmp_path / "ok", ["--budget", "1minute"], "--budget: '1minute' is not a duration; write e.g. 30m"),
    ]
    out = tmp_path / "recipe.yaml"
    for folder, extra, says in cases:
        code, _, err = cli(capsys, "recipe", "init", "--data", str(folder), "--out", str(out), *extra)
        assert code == 2 and says in err, (folder, err)
        assert "Traceback" not in err and err.strip().count("\n\n") == 0 and err.startswith("error: ")
        assert not out.exists()


@pytest.mark.slow
def test_the_64_px_recipe_trains_inside_a_20_s_budget(large, capsys):
    """The written 64-px recipe trains (its images cached) and ends inside a 20 s budget counted from the call."""
    out, tmp_path = large["out"], large["root"]
    started = time.time()
    summary = api.train(out, tmp_path / "run", overrides=["schedule.budget=20s", "runtime.threads=1",
                                                          "runtime.device=cpu"], started=started)
    took = time.time() - started
    assert "training images decoded into memory once (40 images" in " ".join(capsys.readouterr().out.split())
    plan = json.loads((tmp_path / "run" / "budget.json").read_text())
    assert plan["budget_s"] == 20 and summary.steps > 0 and summary.checkpoint.is_file()
    assert summary.budget_used is not None and float(summary.budget_used.rsplit("(", 1)[1].rstrip("%)")) <= 100.0
    assert took <= 1.03 * 20, (took, plan)


def test_a_registered_dataset_gets_a_recipe_that_names_it(capsys, tmp_path):
    """`--dataset NAME` (here the generated `synthetic`; fashion_mnist with --root is the same path) writes a recipe
    for that registry entry; --data and --dataset together, or neither, is a one-paragraph error."""
    recipe, text, stdout = written(capsys, tmp_path / "synthetic.yaml", "--dataset", "synthetic", "--per-class", "2",
                                   "--budget", "1m")
    assert recipe.data.dataset == "synthetic" and recipe.data.options == {} and recipe.name == "synthetic_suave"
    assert recipe.data.labels.per_class == 2 and recipe.schedule.budget == "1m"
    assert "# Written by `semiclust recipe init` for synthetic: budget 1m." in text
    folder = tmp_path / "ok"
    image_tree(folder / "train", ["ant", "bee"], per_class=2, size=16)
    for argv in (["--dataset", "synthetic", "--data", str(folder)], []):
        code, _, err = cli(capsys, "recipe", "init", "--out", str(tmp_path / "x.yaml"), *argv)
        assert code == 2 and "give either --data FOLDER (your own images) or --dataset NAME" in err, err
        assert "Traceback" not in err and not (tmp_path / "x.yaml").exists()


def fashion_stand_in(root: Path) -> None:
    """Stand-in Fashion-MNIST idx files under `root` (1,040 training images of 28 px, 10 classes; 20 test)."""
    import numpy as np

    from tests.data.test_array_datasets import idx_bytes, pixels

    folder = root / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    for split, count in (("train", 1040), ("t10k", 20)):
        (folder / f"{split}-images-idx3-ubyte").write_bytes(idx_bytes(pixels(count, 1, 28)[:, 0]))
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(count) % 10))


@pytest.mark.parametrize("method, budget, step_s, short", [("daino", "5m", 0.5, True), ("daino", "30m", 0.3, False),
                                                           ("suave", "5m", 0.5, False)])
def test_init_gives_daino_the_labeled_pull_and_a_following_teacher_in_a_short_run(tmp_path, monkeypatch, method,
                                                                                   budget, step_s, short):
    """Fewer than SHORT_DAINO_STEPS planned steps (90% of the budget at the measured step time: 540 here) get Daino
    the labeled weight 0.5 and the teacher momentum held at 0.99, said in the header; a long run (5,400 steps) and
    Suave keep the method's defaults."""
    from semiclust.config import init as recipe_init

    monkeypatch.setattr(recipe_init, "choose_width", lambda *args: (16, [recipe_init.Measured(16, step_s, 5.0)]))
    fashion_stand_in(tmp_path)
    written = api.init_recipe(None, budget, method=method, per_class=10, registered=("fashion_mnist", tmp_path))
    spec = written.recipe.method
    if short:
        assert spec.labeled_weight == 0.5 and spec.teacher.momentum_end == 0.99
        assert "#   method.labeled_weight, method.teacher.momentum_end: about 540 steps planned" in written.text
    else:
        assert spec.labeled_weight is None and "steps planned" not in written.text
        assert method != "daino" or spec.teacher.momentum_end == 1.0


@pytest.mark.parametrize("method", ["suave", "daino"])
def test_the_shipped_fashion_mnist_recipes_are_what_init_writes(tmp_path, monkeypatch, method):
    """recipes/fashion_mnist_{suave,daino}.yaml are `recipe init --dataset fashion_mnist --per-class 10 --budget 30m`
    output: on stand-in idx files of the same shape (1,040 images of 28 px, 10 classes) and with the widths' timing
    read back from the shipped file's own header (the machine-dependent part), init writes the same recipe."""
    import re

    from semiclust.config import init as recipe_init
    from semiclust.config.shipped import find_recipe

    shipped = find_recipe(f"fashion_mnist_{method}")
    text = shipped.read_text()
    timings = [recipe_init.Measured(int(w), float(s), float(e))
               for w, s, e in re.findall(r"width (\d+): ([\d.]+)s a step, ([\d.]+) epochs", text)]
    assert timings, "the shipped recipe lost the header that init writes"
    chosen = yaml.safe_load(text)["model"]["backbone"]["kwargs"]["widths"][0]
    monkeypatch.setattr(recipe_init, "choose_width", lambda *args: (chosen, timings))
    fashion_stand_in(tmp_path)
    written = api.init_recipe(None, "30m", method=method, per_class=10, registered=("fashion_mnist", tmp_path))
    ours, theirs = yaml.safe_load(written.text), yaml.safe_load(text)
    assert ours["data"].pop("options") == {"root": str(tmp_path)}
    assert theirs["data"].pop("options") == {"root": "/usr/share/datasets/fashion-mnist"}
    assert ours == theirs
    header = [line for line in written.text.splitlines() if line.startswith("#") and "training images" not in line]
    assert len(header) >= 5 and all(line in text for line in header)
