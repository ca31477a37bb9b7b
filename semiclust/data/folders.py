"""Datasets of image files: an ImageFolder tree, ImageNet with SimCLR subset lists, a labeled list.

Listing only: no image is opened here (decoding happens in loader workers; `semiclust data check`
decodes a sample), and folders are listed through data/listing.py, which remembers them between runs.
Files are sorted so that indices, and the subsets drawn from them, are stable; a split's names are held
as one `FileNames` (data/names.py), which loader workers share without copying.
What is wrong with the listing (a missing file, an empty class, a label outside the class set) is
collected in `Dataset.problems` rather than raised, so that `data check` can report all of it.
"""
from __future__ import annotations

import csv
import difflib
import os
from pathlib import Path

import numpy as np
import torch

from semiclust.data.datasets import DATASETS, UNLABELED, Dataset, FileSplit
from semiclust.data.decode import file_problem, is_image_file, predicate, printable
from semiclust.data.listing import list_folders, walk
from semiclust.data.names import FileNames, encode
from semiclust.errors import SemiclustError, examples

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_MEAN, GREY_STD = (0.449,), (0.226,)  # ImageNet's, averaged over the three channels


def _channels(channels: int) -> int:
    if type(channels) is not int or channels not in (1, 3):
        raise SemiclustError(f"data.options.channels is {channels!r}: image files decode to 3 channels (RGB, the "
                             "default) or 1 (grey: set channels: 1 for a folder of grey images, e.g. X-rays or scans).")
    return channels


def _stats(mean, std, channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    grey = _channels(channels) == 1
    mean = tuple(mean or (GREY_MEAN if grey else IMAGENET_MEAN))
    std = tuple(std or (GREY_STD if grey else IMAGENET_STD))
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        what = "one value each (grey, channels: 1)" if grey else "three values each (RGB)"
        raise SemiclustError(f"data.options mean and std need {what}, std > 0; they are {list(mean)} and {list(std)}.")
    return mean, std


def images_under(folder: Path) -> list[str]:
    """Image files anywhere under `folder`, as sorted POSIX paths relative to it (hidden entries skipped; links
    followed, each folder listed once). Names are kept as the file system holds them (not UTF-8 bytes included)."""
    return walk(folder).found


def _case_twins(names: dict[str, str]) -> list[str]:
    """Class names that differ only in case, grouped: "'Cat' (line 1) and 'cat' (line 2)" (name -> where it is)."""
    groups: dict[str, list[str]] = {}
    for name, where in names.items():
        groups.setdefault(name.casefold(), []).append(f"'{name}' ({where})" if where else f"'{name}'")
    return [" and ".join(group) for group in groups.values() if len(group) > 1]


MOVED = "If the data moved, point the recipe at its new place with --set data.options.root=NEW_PLACE."


def _require_dir(path: Path, what: str, fix: str) -> None:
    if not path.is_dir():
        raise SemiclustError(f"{what} '{path}' is not a directory. {MOVED} Otherwise: {fix}")


def scan_class_tree(root: Path, classes: list[str] | None = None,
                    channels: int = 3) -> tuple[FileSplit, list[str], list[str]]:
    """`root/<class>/**/image`: a FileSplit labelled by folder, the class names (sorted folder names,
    or the given `classes`; a folder name that is not UTF-8 gives a printable class name), and problems (empty
    classes, folders whose class is not in `classes`, class folders differing only in case, images lying directly
    in `root` outside any class folder)."""
    folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    names = [printable(folder) for folder in folders] if classes is None else classes  # a class name is shown
    index = {name: i for i, name in enumerate(names)}
    problems = []
    loose = [e.name for e in os.scandir(root) if e.is_file() and is_image_file(e.name)]
    if loose:
        problems.append(f"{len(loose)} image(s) lie directly in '{printable(root)}' outside any class folder (e.g. "
                        f"'{printable(loose[0])}'); move them into a folder named after their class")
    if classes is None:
        problems += [f"class folders {twins} of '{printable(root)}' differ only in case: they would train as separate "
                     "classes; merge them into one folder" for twins in _case_twins(dict.fromkeys(names, ""))]
    listed = list_folders(root, folders)
    ends, included, labels = np.cumsum(listed.counts), [], []
    for k, (folder, count) in enumerate(zip(folders, listed.counts)):
        name, where = printable(folder), printable(root / folder)
        if name not in index:
            problems.append(f"'{where}' holds {count} image(s) of class '{name}', which is not one of "
                            "the training classes (a label outside the class set)")
            continue
        if not count:
            problems.append(f"class '{name}' has no images in '{where}' (an empty class)")
        included.append(k)
        labels.append(np.full(count, index[name], dtype=np.int64))
    files = listed.files
    if len(included) < len(folders):  # folders of classes outside the class set are left out
        files = FileNames.join([files.slice(int(ends[k] - listed.counts[k]), int(ends[k])) for k in included])
    labels = torch.from_numpy(np.concatenate(labels)) if labels else torch.zeros(0, dtype=torch.long)
    return FileSplit(root, files, labels, channels=channels), names, problems


def _folder_dataset(name: str, train_root: Path, eval_root: Path | None, mean, std, fix: str,
                    channels: int = 3) -> Dataset:
    mean, std = _stats(mean, std, channels)
    _require_dir(train_root, f"{name}: the training folder", fix)
    train, classes, problems = scan_class_tree(train_root, channels=channels)
    if not classes:
        raise SemiclustError(f"{name}: '{train_root}' has no class folders; it must hold one folder of images per "
                             f"class. {fix}")
    test = None
    if eval_root is not None:
        _require_dir(eval_root, f"{name}: the evaluation folder", fix)
        test, _, eval_problems = scan_class_tree(eval_root, classes, channels)
        problems += [p.replace("(an empty class)", "(no evaluation images)") for p in eval_problems]
    return Dataset(name, train, test, classes, mean, std, test_split_name=eval_root.name if eval_root else "none",
                   problems=problems)


@DATASETS.register("imagefolder")
def imagefolder(root: str, train_dir: str = "train", eval_dir: str | None = "val", eval_root: str | None = None,
                mean: list[float] | None = None, std: list[float] | None = None, channels: int = 3) -> Dataset:
    """`root/<train_dir>/<class>/*` for training and `root/<eval_dir>/<class>/*` (or `eval_root/<class>/*`)
    for evaluation; eval_dir null = no evaluation set. Normalisation defaults to ImageNet's (averaged for
    grey images, `channels: 1`, which trains a 1-channel network on the images' luma)."""
    base = Path(root).expanduser()
    evaluation = Path(eval_root).expanduser() if eval_root else (base / eval_dir if eval_dir else None)
    fix = ("Lay the images out as ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (torchvision's "
           "ImageFolder layout), or set data.options train_dir / eval_dir / eval_root.")
    return _folder_dataset("imagefolder", base / train_dir, evaluation, mean, std, fix, channels)


@DATASETS.register("imagenet")
def imagenet(root: str, mean: list[float] | None = None, std: list[float] | None = None) -> Dataset:
    """ILSVRC-2012 as `root/train/<wnid>/*.JPEG` and `root/val/<wnid>/*.JPEG`. The labeled subset is
    usually a SimCLR list (data.labels.list: 1percent.txt or 10percent.txt, one file name per line)."""
    base = Path(root).expanduser()
    fix = ("Extract ILSVRC2012_img_train.tar into ROOT/train/<wnid>/ and sort the validation images into "
           "ROOT/val/<wnid>/ (e.g. with the widely used valprep.sh); semiclust never downloads data.")
    dataset = _folder_dataset("imagenet", base / "train", base / "val", mean, std, fix)
    if dataset.test is not None and len(dataset.test) == 0:
        dataset.problems.append(f"'{base / 'val'}' has no images in class folders: sort the validation images into "
                                "val/<wnid>/ (e.g. with valprep.sh)")
    return dataset


# ---------------------------------------------------------------- labeled_list
HEADER_LABELS = ("label", "labels", "class", "classes")  # a first row with one of these labels is the header
HEADER_PATHS = ("path", "paths", "file", "files", "filename", "filenames", "file_name", "filepath", "file_path",
                "image", "images", "image_path", "img", "name")


def _header_fault(file: str, label: str, base: Path) -> str | None:
    """Why a first row that is not a header semiclust reads looks like one (None when it looks like data): its
    path field names no file and is a header word, or its label is a near-miss of 'label' or 'class'."""
    if is_image_file(file) or _resolve(base, file).exists():
        return None
    near = difflib.get_close_matches(label.lower(), HEADER_LABELS, n=1, cutoff=0.75)
    if near:
        return f"'{label}' looks like a misspelt '{near[0]}'"
    return f"'{file}' is a column name, not an image" if file.lower() in HEADER_PATHS else None


def _label_lines(path: Path) -> list[str]:
    problem = file_problem(path, "a text file")
    if problem:
        raise SemiclustError(f"labeled_list: the list '{printable(path)}' {predicate(problem)}; data.options must "
                             "name a CSV or text file with one 'path,label' line per image.")
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a byte order mark is not part of a path
    except UnicodeDecodeError as err:
        raise SemiclustError(f"labeled_list: '{printable(path)}' is not UTF-8 text ({err.reason} at byte {err.start}); "
                             "save it as UTF-8 (one 'path,label' line per image).") from None


def read_label_file(path: Path, base: Path | None = None) -> list[tuple[str, str, int]]:
    """(file, label, line number) rows of a `path,label` CSV or whitespace-separated text file. A first row whose
    label is 'label' or 'class' (any case, or plural) is a header and skipped; a first row that looks like another
    header (see `_header_fault`; relative paths are against `base`, default the list's folder) is refused."""
    base = path.parent if base is None else base
    rows, first = [], True
    for number, line in enumerate(_label_lines(path), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = next(csv.reader([text])) if "," in text else text.rsplit(None, 1)
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise SemiclustError(f"labeled_list: '{printable(path)}' line {number} ('{text[:80]}') is not "
                                 "'path,label'; write one image path and its class per line.")
        file, label = fields[0].strip(), fields[1].strip()
        if first:
            first = False
            if label.lower() in HEADER_LABELS:  # the header
                continue
            fault = _header_fault(file, label, base)
            if fault:
                raise SemiclustError(f"labeled_list: '{printable(path)}' line {number} ('{text[:80]}') looks like a "
                                     f"header ({fault}), but it is not one semiclust reads: write the header as "
                                     "'path,label' (or leave it out), then one 'path,label' line per image.")
        rows.append((file, label, number))
    if not rows:
        raise SemiclustError(f"labeled_list: '{printable(path)}' lists no images; write one 'path,label' line per image.")
    return rows


def _class_names(labels: list[str]) -> list[str]:
    """Sorted class names; numerically when every name is an integer (so '10' follows '9')."""
    unique = set(labels)
    if all(label.lstrip("-").isdigit() for label in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def _resolve(base: Path, file: str) -> Path:
    """The file's real absolute path (symbolic links and `..` resolved): labeled lists store files so, so
    that runs do not depend on the cwd and one image is one image however its path is written."""
    path = Path(file).expanduser()
    return Path(os.path.realpath(path if path.is_absolute() else base / path))


def _listed_split(rows, base: Path, classes: dict[str, int], what: str, problems: list[str],
                  channels: int = 3) -> FileSplit:
    """The rows whose file is an image file and whose label is a known class; the others become problems, and so
    does a file given two labels (one image named twice with one label counts once)."""
    files, labels, missing, unusable, unknown, conflicts = [], [], [], [], [], []
    first: dict[str, tuple[str, str, int]] = {}  # resolved path -> the file, label and line of its first row
    for file, label, number in rows:
        path = _resolve(base, file)
        problem = file_problem(path) if label in classes else None
        if label not in classes:
            unknown.append(f"'{label}' (line {number})")
        elif problem == "file not found" or (problem or "").startswith("a symbolic link"):
            missing.append(f"'{printable(file)}'" + ("" if problem == "file not found" else f" ({problem})"))
        elif problem:
            unusable.append(f"'{printable(file)}' ({problem})")
        elif str(path) in first:  # the same image named twice (two spellings of its path)
            file_before, label_before, line_before = first[str(path)]
            if label_before != label:
                conflicts.append(f"'{printable(file_before)}' is '{label_before}' (line {line_before}) and '{label}' "
                                 f"(line {number})")
        else:
            first[str(path)] = (file, label, number)
            files.append(str(path))
            labels.append(classes[label])
    if missing:
        problems.append(f"the {what} names {len(missing)} missing file(s) (relative to '{printable(base)}'): "
                        f"{examples(missing, quote=False)}")
    if unusable:
        problems.append(f"the {what} names {len(unusable)} file(s) that are not image files: "
                        f"{examples(unusable, quote=False)}")
    if unknown:
        problems.append(f"the {what} has {len(unknown)} label(s) outside the class set of the labeled list: "
                        f"{examples(unknown, quote=False)}")
    if conflicts:
        problems.append(f"the {what} gives {len(conflicts)} image(s) two labels: {examples(conflicts, quote=False)}; "
                        "keep the one right line for each image")
    return FileSplit(Path("/"), files, torch.tensor(labels, dtype=torch.long), channels=channels)


def _case_problems(rows, what: str) -> list[str]:
    """Class names of a list that differ only in case ('Cat' and 'cat' would be two classes)."""
    first_line: dict[str, str] = {}
    for _, label, number in rows:
        first_line.setdefault(label, f"line {number}")
    return [f"the {what} spells one class in ways that differ only in case: {twins}; they would train as separate "
            "classes: pick one spelling and use it on every line" for twins in _case_twins(first_line)]


def _unlabeled_files(folder: Path) -> FileNames:
    """The real absolute paths of the images under `folder` (itself a real path), each once: with no symbolic link
    in the folder they are the folder's path and the listed ones; otherwise each is resolved."""
    listed = list_folders(folder, [""])
    if listed.linked[0]:
        return FileNames.of(dict.fromkeys(os.path.realpath(folder / f) for f in listed.files))
    return listed.files.prefixed(os.fspath(folder).rstrip("/") + "/")


@DATASETS.register("labeled_list")
def labeled_list(labeled: str, unlabeled: list[str] | str | None = None, eval: str | None = None,
                 root: str | None = None, mean: list[float] | None = None, std: list[float] | None = None,
                 channels: int = 3) -> Dataset:
    """A few labeled images named in a `path,label` file, many unlabeled images in one or more folders
    (any layout, searched recursively), and an optional labeled evaluation list. Relative paths are
    resolved against `root` (default: the list file's folder). Classes are the labels of the labeled list.

    The training split is the labeled images followed by the unlabeled ones (label -1); the whole of it
    feeds the unlabeled stream; use data.labels {fraction: 1.0} to train with every listed label.
    `channels: 1` decodes every image to grey (its luma), as for `imagefolder`.
    """
    mean, std = _stats(mean, std, channels)
    labeled_path = Path(labeled).expanduser()
    base = Path(root).expanduser() if root else labeled_path.parent
    rows = read_label_file(labeled_path, base)
    names = _class_names([label for _, label, _ in rows])
    classes = {name: i for i, name in enumerate(names)}
    problems = _case_problems(rows, f"labeled list '{printable(labeled_path)}'")
    train = _listed_split(rows, base, classes, f"labeled list '{printable(labeled_path)}'", problems, channels)
    folders = [unlabeled] if isinstance(unlabeled, str) else list(unlabeled or [])
    extra = []
    for folder in map(lambda f: _resolve(base, f), folders):
        _require_dir(folder, "labeled_list: the unlabeled folder", "data.options.unlabeled lists folders of images.")
        found = _unlabeled_files(folder)
        if not len(found):
            problems.append(f"the unlabeled folder '{printable(folder)}' holds no images")
        extra.append(found)
    labeled_set = {encode(f) for f in train.files}
    extra = FileNames.join(extra) if extra else FileNames.of([])
    kept = [i for i, name in enumerate(extra.raw_names()) if name not in labeled_set]
    extra = extra if len(kept) == len(extra) else extra.take(kept)  # a labeled image inside an unlabeled folder counts once
    train = FileSplit(Path("/"), FileNames.join([train.files, extra]),
                      torch.cat([train.labels, torch.full((len(extra),), UNLABELED, dtype=torch.long)]),
                      channels=channels)
    present = torch.bincount(train.labels[train.labels >= 0], minlength=len(names))
    for name, count in zip(names, present.tolist()):
        if count == 0:
            problems.append(f"class '{name}' has no readable labeled image in the list (an empty class)")
    test = None
    if eval is not None:
        eval_path = Path(eval).expanduser()
        eval_base = Path(root).expanduser() if root else eval_path.parent
        test = _listed_split(read_label_file(eval_path, eval_base), eval_base, classes,
                             f"evaluation list '{printable(eval_path)}'", problems, channels)
    return Dataset("labeled_list", train, test, names, mean, std,
                   test_split_name="eval list" if test is not None else "none", problems=problems)
