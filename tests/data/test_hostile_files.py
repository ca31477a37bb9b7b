"""Hostile and unlucky files in a dataset (issue 22): FIFOs, sockets and devices with image names, file and folder
names that are not UTF-8, broken symbolic links, 32-bit float TIFFs, labels CSVs with a BOM, a misspelt header,
conflicting labels or one class spelt two ways, and a drawn labeled image that cannot be read."""
from __future__ import annotations

import copy
import csv
import io
import json
import os
import re
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from semiclust.cli import main
from semiclust.data.datasets import build_dataset
from semiclust.data.decode import UnreadableImage, decode_rgb, image_size
from semiclust.data.folders import images_under, read_label_file, scan_class_tree
from semiclust.errors import SemiclustError
from tests.data.files import corrupt, image_tree, save, stripes
from tests.helpers import TINY_RECIPE

LATIN1 = os.fsdecode(b"caf\xe9.png")  # a Latin-1 byte: not UTF-8, so Python holds it as a lone surrogate
LATIN1_CLASS = os.fsdecode(b"b\xe9e")


def finishes(call, seconds: float = 20.0):
    """call()'s result (or its exception), failing the test if it has not returned in `seconds`: a hang."""
    box: dict = {}

    def target():
        try:
            box["value"] = call()
        except BaseException as err:  # noqa: BLE001 - handed to the test's thread
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds:g} s: it blocks"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def release(fifo: Path) -> None:
    """Open the FIFO for writing and close it, so that a reader blocked on it (a test that failed) returns."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def unix_socket(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    return server


def needs_byte_names(tmp_path: Path) -> None:
    """Skip where the file system refuses names that are not UTF-8 (macOS APFS, Windows)."""
    try:
        (tmp_path / os.fsdecode(b"probe\xe9")).write_bytes(b"")
        (tmp_path / os.fsdecode(b"probe\xe9")).unlink()
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes UTF-8 file names only")


def recipe_file(tmp_path: Path, data: dict, epochs: int = 2) -> Path:
    raw = copy.deepcopy(TINY_RECIPE)
    raw["data"].update(data)
    raw["data"].update({"loader": {"workers": 0}, "cache": "off", "batch": {"unlabeled": 8, "labeled": 4}})
    raw["schedule"]["epochs"] = epochs
    raw["runtime"]["progress"] = "plain"  # the start line names the labeled subset
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return info.value.code or 0, " ".join((captured.out + captured.err).split())  # rich wraps long lines


def folder_data(root: Path, **labels) -> dict:
    return {"dataset": "imagefolder", "options": {"root": str(root)}, "labels": labels or {"per_class": 2}}


# ------------------------------------------------------------------ 10: FIFOs, sockets, devices
def test_fifos_sockets_and_devices_with_image_names_are_never_listed(tmp_path):
    from semiclust.predict import collect_images

    train = tmp_path / "train"
    image_tree(train, ["a", "b"], per_class=2)
    os.mkfifo(train / "a" / "pipe.png")
    os.mkfifo(train / "loose.png")  # not an image lying outside the class folders either
    (train / "a" / "zero.png").symlink_to("/dev/zero")
    (train / "a" / "link.png").symlink_to(train / "b" / "b_0.png")  # a link to a regular file still is an image
    server = unix_socket(train / "b" / "s.png")
    try:
        assert images_under(train / "a") == ["a_0.png", "a_1.png", "link.png"]
        assert images_under(train / "b") == ["b_0.png", "b_1.png"]
        split, classes, problems = scan_class_tree(train)
        assert classes == ["a", "b"] and problems == []
        assert split.files == ["a/a_0.png", "a/a_1.png", "a/link.png", "b/b_0.png", "b/b_1.png"]
        assert [p.name for p in collect_images([train])] == ["a_0.png", "a_1.png", "link.png", "b_0.png", "b_1.png"]
    finally:
        server.close()


def test_decoding_refuses_a_fifo_or_a_device_by_name_without_blocking(tmp_path):
    from semiclust.data.device_decode import plain_jpeg

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    try:
        for read in (decode_rgb, image_size):
            with pytest.raises(UnreadableImage, match=r": a FIFO \(named pipe\), not an image file"):
                finishes(lambda: read(fifo), 10)
        assert finishes(lambda: plain_jpeg(fifo, None), 10) is None
    finally:
        release(fifo)
    with pytest.raises(UnreadableImage, match=": a device"):
        finishes(lambda: decode_rgb("/dev/zero"), 10)
    server = unix_socket(tmp_path / "s.png")
    try:
        with pytest.raises(UnreadableImage, match=": a socket"):
            finishes(lambda: decode_rgb(tmp_path / "s.png"), 10)
    finally:
        server.close()
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(UnreadableImage, match=": a folder"):
        decode_rgb(tmp_path / "folder.png")


def test_data_check_finishes_on_a_folder_holding_a_fifo(capsys, tmp_path):
    image_tree(tmp_path / "data" / "train", ["ant", "bee"], per_class=3)
    image_tree(tmp_path / "data" / "val", ["ant", "bee"], per_class=1, start_seed=50)
    fifo = tmp_path / "data" / "train" / "ant" / "pipe.png"
    os.mkfifo(fifo)
    recipe = recipe_file(tmp_path, folder_data(tmp_path / "data"))
    try:
        code, out = finishes(lambda: cli(capsys, "data", "check", recipe, "--all"))
    finally:
        release(fifo)
    assert code == 0 and "no problems found" in out and "ant │ 2 │ 1 │ 1" in out


def test_predict_and_a_labeled_list_name_a_fifo_or_a_device_for_what_it_is(tmp_path):
    from semiclust.predict import collect_images

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(SemiclustError, match=r"'.*pipe.png' is a FIFO \(named pipe\), not an image file"):
        collect_images([fifo])
    with pytest.raises(SemiclustError, match="'/dev/zero' is a device"):
        collect_images([Path("/dev/zero")])
    save(tmp_path / "a.png", stripes(0, 1))
    (tmp_path / "labels.csv").write_text("a.png,cat\npipe.png,dog\n")
    dataset = build_dataset("labeled_list", {"labeled": str(tmp_path / "labels.csv")})
    assert any("pipe.png" in p and "FIFO" in p for p in dataset.problems), dataset.problems


def test_a_labels_file_that_is_a_fifo_or_a_device_is_named_for_what_it_is(tmp_path):
    from semiclust.data.subsets import match_list

    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    try:
        with pytest.raises(SemiclustError, match=r"labels.csv' is a FIFO \(named pipe\), not a text file"):
            finishes(lambda: build_dataset("labeled_list", {"labeled": str(fifo)}), 10)
        split = build_dataset("imagefolder", {"root": str(image_tree(tmp_path / "t", ["a"], 1)[0].parent.parent),
                                              "train_dir": ".", "eval_dir": None}).train
        for special, what in ((fifo, "a FIFO"), (Path("/dev/zero"), "a device")):
            with pytest.raises(SemiclustError, match=f"labeled list '{special}' is {what}"):
                finishes(lambda: match_list(special, split), 10)
    finally:
        release(fifo)


# ------------------------------------------------------------------ 11: names that are not UTF-8
def test_printable_shows_undecodable_bytes_and_control_characters_as_escapes():
    from semiclust.data.decode import printable

    assert printable(Path("/data/été/ant_0.png")) == "/data/été/ant_0.png"  # UTF-8 names are shown as they are
    assert printable(Path("/data") / LATIN1) == "/data/caf\\xe9.png"
    assert printable(b"/data/caf\xe9.png") == "/data/caf\\xe9.png"
    assert printable("a\nb\x1b[31m.png") == "a\\x0ab\\x1b[31m.png"  # a newline or a terminal escape, made visible
    printable(Path("/data") / LATIN1).encode("utf-8")  # never a lone surrogate


def test_a_png_with_a_latin1_name_decodes_like_any_other(tmp_path):
    needs_byte_names(tmp_path)
    pixels = stripes(1, 3)
    path = save(tmp_path / LATIN1, pixels)
    assert torch.equal(decode_rgb(path), torch.from_numpy(pixels).permute(2, 0, 1))
    assert image_size(path) == (12, 12)
    with pytest.raises(UnreadableImage) as info:
        decode_rgb(corrupt(tmp_path / os.fsdecode(b"bad\xe9.png")))
    assert info.value.path.endswith("bad\\xe9.png") and "\\udc" not in str(info.value)


def latin1_tree(root: Path) -> None:
    """An ImageFolder whose second class folder and one training image have Latin-1 (not UTF-8) names."""
    for split, per_class, seed in (("train", 3, 0), ("val", 1, 50)):
        image_tree(root / split, ["ant", LATIN1_CLASS, "cow"], per_class=per_class, start_seed=seed)
    save(root / "train" / "ant" / LATIN1, stripes(0, 77))


def test_a_latin1_named_png_and_class_folder_are_checked_and_trained_like_any_other(capsys, tmp_path):
    needs_byte_names(tmp_path)
    latin1_tree(tmp_path / "data")
    recipe = recipe_file(tmp_path, folder_data(tmp_path / "data", fraction=1.0), epochs=1)
    code, out = cli(capsys, "data", "check", recipe, "--all")
    assert code == 0 and "no problems found" in out and "b\\xe9e │ 3 │ 0 │ 1" in out and "ant │ 4 │ 0 │ 1" in out
    code, out = cli(capsys, "train", recipe, "--out", tmp_path / "run")
    assert code == 0 and "unreadable" not in out and "10 labeled" in out
    record = json.loads((tmp_path / "run" / "labeled_subset.json").read_bytes().decode("utf-8"))
    assert "ant/caf\\xe9.png" in record["files"]
    json.dumps(record, ensure_ascii=False).encode("utf-8")  # valid UTF-8 text: no lone surrogate anywhere


def test_a_subset_naming_a_latin1_file_is_saved_and_reloaded(tmp_path):
    from semiclust.data.subsets import LabeledSubset, load_subset, save_subset

    needs_byte_names(tmp_path)
    latin1_tree(tmp_path / "data")
    split = build_dataset("imagefolder", {"root": str(tmp_path / "data")}).train
    index = split.files.index(f"ant/{LATIN1}")
    subset = LabeledSubset(torch.tensor([0, index]), "two").naming(split)
    save_subset(subset, split, tmp_path / "subset.json")
    again = load_subset(tmp_path / "subset.json", split)  # the same listing: no "the data changed"
    assert again.identity == subset.identity and (tmp_path / "subset.json").read_bytes().decode("utf-8")


def test_predict_shows_a_latin1_name_escaped_in_table_csv_and_json(trained_run, tmp_path, capsys, monkeypatch):
    from semiclust.export.safetensors import export_checkpoint

    needs_byte_names(tmp_path)
    model = tmp_path / "model.safetensors"
    export_checkpoint(trained_run.checkpoint, model, "classifier")
    folder = tmp_path / "images"
    save(folder / LATIN1, stripes(0, 5, size=16))
    save(folder / "plain.png", stripes(1, 6, size=16))
    monkeypatch.chdir(tmp_path)  # short paths: the table fits the test's 80 columns
    code, out = cli(capsys, "predict", "images", "--model", model)
    assert code == 0 and "images/caf\\xe9.png" in out and "unreadable" not in out
    code, _ = cli(capsys, "predict", folder, "--model", model, "--format", "csv", "--out", tmp_path / "p.csv")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_bytes().decode("utf-8"))))
    assert code == 0 and rows[0]["path"].endswith("caf\\xe9.png") and not rows[0]["error"] and rows[0]["class_1"]
    code, _ = cli(capsys, "predict", folder, "--model", model, "--format", "json", "--out", tmp_path / "p.json")
    records = json.loads((tmp_path / "p.json").read_bytes().decode("utf-8"))
    assert code == 0 and records[0]["path"].endswith("caf\\xe9.png") and records[0]["error"] is None
    json.dumps(records, ensure_ascii=False).encode("utf-8")


def test_a_passed_over_latin1_file_is_named_printably_when_training_starts(capsys, tmp_path):
    needs_byte_names(tmp_path)
    latin1_tree(tmp_path / "data")
    corrupt(tmp_path / "data" / "train" / "ant" / LATIN1)
    recipe = recipe_file(tmp_path, folder_data(tmp_path / "data", fraction=1.0), epochs=1)
    code, out = cli(capsys, "train", recipe, "--out", tmp_path / "run")
    assert code == 0 and "passed over 1 unreadable image(s) for the next of their class: ant/caf\\xe9.png (" in out


def test_names_that_look_like_markup_are_shown_as_they_are():
    from rich.console import Console

    from semiclust.predict import Prediction
    from semiclust.render import predictions_table

    console = Console(record=True, width=200)
    console.print(predictions_table("t", [Prediction("[red]y.png", ["[bold]cat"], [1.0]),
                                          Prediction("a[/b].png", [], [], "bad [/x] data")]))
    text = console.export_text()
    assert "[red]y.png" in text and "[bold]cat" in text and "a[/b].png" in text and "bad [/x] data" in text


# ------------------------------------------------------------------ 17: labels CSV
def labels_csv(tmp_path: Path, text: str | bytes, images: tuple[str, ...] = ("a.png", "b.png", "c.png")) -> Path:
    for i, name in enumerate(images):
        save(tmp_path / name, stripes(i % 2, i))
    path = tmp_path / "labels.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_a_bom_without_a_header_is_not_glued_to_the_first_path(tmp_path):
    path = labels_csv(tmp_path, b"\xef\xbb\xbfa.png,cat\nb.png,dog\n")
    assert [row[:2] for row in read_label_file(path)] == [("a.png", "cat"), ("b.png", "dog")]
    assert build_dataset("labeled_list", {"labeled": str(path)}).problems == []
    listing = tmp_path / "labeled.txt"
    listing.write_bytes(b"\xef\xbb\xbfa.png\n")  # data.labels.list: the same BOM
    from semiclust.data.subsets import match_list

    assert match_list(listing, build_dataset("labeled_list", {"labeled": str(path)}).train).missing == []


def test_a_file_listed_with_two_labels_is_a_problem_naming_both_lines(tmp_path):
    path = labels_csv(tmp_path, "path,label\na.png,cat\nb.png,dog\n./a.png,dog\nc.png,cat\nc.png,cat\n")
    problems = build_dataset("labeled_list", {"labeled": str(path)}).problems
    assert len(problems) == 1, problems  # c.png twice with one label is harmless
    assert "'a.png'" in problems[0] and "'cat' (line 2)" in problems[0] and "'dog' (line 4)" in problems[0]


def test_class_names_differing_only_in_case_are_a_problem_naming_them(tmp_path):
    path = labels_csv(tmp_path, "a.png,Cat\nb.png,cat\nc.png,dog\n")
    problems = build_dataset("labeled_list", {"labeled": str(path)}).problems
    assert len(problems) == 1 and "'Cat' (line 1)" in problems[0] and "'cat' (line 2)" in problems[0], problems
    assert "one spelling" in problems[0]
    image_tree(tmp_path / "tree" / "train", ["Cat", "cat", "dog"], per_class=1)  # class folders, likewise
    problems = build_dataset("imagefolder", {"root": str(tmp_path / "tree"), "eval_dir": None}).problems
    assert len(problems) == 1 and "'Cat' and 'cat'" in problems[0] and "differ only in case" in problems[0], problems


@pytest.mark.parametrize("header", ["image,category", "path,lable", "FILE,species", "pth,clas", "filename,Labl"])
def test_a_misspelt_header_is_refused_with_the_header_to_write(tmp_path, header):
    path = labels_csv(tmp_path, f"{header}\na.png,cat\nb.png,dog\n")
    with pytest.raises(SemiclustError, match="path,label") as info:
        read_label_file(path)
    assert f"'{header}'" in str(info.value) and "line 1" in str(info.value)


def test_real_headers_are_skipped_and_a_first_row_naming_an_image_is_data(tmp_path):
    for header in ("Path,Label", "file,class", "image, labels"):
        path = labels_csv(tmp_path, f"{header}\na.png,cat\nb.png,dog\n")
        assert [row[0] for row in read_label_file(path)] == ["a.png", "b.png"]
    path = labels_csv(tmp_path, "x.png,glass\na.png,cat\n")  # names a missing image: data, reported as missing
    assert [row[0] for row in read_label_file(path)] == ["x.png", "a.png"]
    assert any("missing" in p and "x.png" in p for p in build_dataset("labeled_list", {"labeled": str(path)}).problems)


# ------------------------------------------------------------------ 19: reasons, float TIFFs, the subset of data check
def test_a_broken_link_names_its_missing_target_even_in_a_folder_called_loops(tmp_path):
    from semiclust.predict import collect_images

    folder = tmp_path / "loops"  # the old reason looked for 'loop' in the error text, which names the path
    folder.mkdir()
    (folder / "x.png").symlink_to("nowhere.png")
    (folder / "self.png").symlink_to(folder / "self.png")
    with pytest.raises(UnreadableImage, match="a symbolic link to a missing file 'nowhere.png'"):
        decode_rgb(folder / "x.png")
    with pytest.raises(UnreadableImage, match="a symbolic link loop"):
        decode_rgb(folder / "self.png")
    assert images_under(folder) == ["self.png", "x.png"]  # listed, so that data check and train name them
    with pytest.raises(SemiclustError, match="a symbolic link to a missing file 'nowhere.png'"):
        collect_images([folder / "x.png"])


def test_a_broken_link_in_a_folder_is_named_by_data_check(capsys, tmp_path):
    image_tree(tmp_path / "data" / "train", ["ant", "bee"], per_class=3)
    (tmp_path / "data" / "train" / "ant" / "x.png").symlink_to("nowhere.png")
    recipe = recipe_file(tmp_path, folder_data(tmp_path / "data") | {"options": {"root": str(tmp_path / "data"),
                                                                                  "eval_dir": None}})
    code, out = cli(capsys, "data", "check", recipe, "--all")
    assert code == 1 and "x.png': a symbolic link to a missing file 'nowhere.png'" in out


def float_tiff(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.float32)).save(path)
    with Image.open(path) as image:
        assert image.mode == "F"  # a real 32-bit float TIFF
    return path


def test_float32_tiffs_are_scaled_by_their_range_or_refused(tmp_path):
    ramp = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    unit = decode_rgb(float_tiff(tmp_path / "unit.tif", ramp))
    assert torch.equal(unit[0], torch.from_numpy(np.rint(ramp * 255).astype(np.uint8)))
    assert torch.equal(unit[0], unit[2]) and int(unit.max()) == 255  # not black
    bytes_range = decode_rgb(float_tiff(tmp_path / "byte.tif", ramp * 200 + 3.2))
    assert torch.equal(bytes_range[1], torch.from_numpy(np.rint(ramp * 200 + 3.2).astype(np.uint8)))
    for name, values in (("wide.tif", ramp * 4000 - 5), ("nan.tif", np.where(ramp > 0.5, np.nan, ramp))):
        with pytest.raises(UnreadableImage, match="convert it to 8 or 16 bits"):
            decode_rgb(float_tiff(tmp_path / name, values))


def test_data_check_prints_the_subset_that_train_draws_when_a_drawn_image_is_unreadable(capsys, tmp_path):
    from semiclust.data.subsets import choose_labeled
    from semiclust.config.loader import load_recipe

    image_tree(tmp_path / "data" / "train", ["ant", "bee", "cow"], per_class=5)
    image_tree(tmp_path / "data" / "val", ["ant", "bee", "cow"], per_class=1, start_seed=50)
    recipe = recipe_file(tmp_path, folder_data(tmp_path / "data"), epochs=1)
    spec = load_recipe(str(recipe))
    split = build_dataset("imagefolder", {"root": str(tmp_path / "data")}).train
    drawn = choose_labeled(split, spec.data.labels, spec.seed, 3).indices.tolist()  # blind to unreadable files
    corrupt(split.path(drawn[1]))
    code, out = cli(capsys, "data", "check", recipe)
    checked = re.search(r"labeled subset: 6 images, (.*?) image sizes", out)
    assert code == 1 and checked and f"unreadable image '{split.path(drawn[1])}'" in out
    code, trained = cli(capsys, "train", recipe, "--out", tmp_path / "run")
    assert code == 0 and f"6 labeled [{checked.group(1)}]" in trained
