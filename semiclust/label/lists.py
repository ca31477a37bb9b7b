"""The list `semiclust label suggest` writes: `path,label` rows in the order to label them (label empty), under
comment lines saying where the suggestion came from (the run whose weights `recipe init --labels` starts from,
and the images), which `labeled_list` skips like any comment.

Paths are relative to the list's own folder (how `labeled_list` reads them); for an in-memory dataset (a
registered one such as fashion_mnist) the "path" is the image's index in the training split, as in a
`data.labels.list` file. The comment lines hold no comma, so a spreadsheet that saves the file keeps them whole.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from semiclust.errors import SemiclustError, examples

MARK = "# semiclust label suggest"
HEADER_FIELDS = ("path", "file", "filename", "image")


@dataclass
class Provenance:
    """Where a suggestion came from: the run directory and checkpoint it was picked with, and the images (a
    folder, or a registered dataset's name and root)."""

    run: Path | None = None
    checkpoint: Path | None = None
    images: Path | None = None
    dataset: str | None = None
    root: Path | None = None


@dataclass
class Row:
    """One line of a suggestion list: the path (or index) as written, its label ('' when not filled in yet) and
    its line number."""

    path: str
    label: str
    line: int


def provenance_lines(provenance: Provenance, rule: str) -> list[str]:
    """The comment lines at the top of a suggestion list."""
    lines = [f"{MARK}: fill in the label column of every row; then `semiclust recipe init --labels THIS_FILE --out "
             "my.yaml` writes a recipe that starts from the run below", f"# rule: {rule.replace(',', ';')}"]
    for key in ("run", "checkpoint", "images", "dataset", "root"):
        value = getattr(provenance, key)
        if value is not None:
            lines.append(f"# {key}: {value}")
    return lines


def render_list(paths: list[str], provenance: Provenance, rule: str) -> str:
    """The CSV text: the comment lines, the header, one `path,` row per image (label empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label"])
    for path in paths:
        writer.writerow([path, ""])
    return "\n".join(provenance_lines(provenance, rule)) + "\n" + buffer.getvalue()


def relative_path(image: Path, folder: Path) -> str:
    """An image's path as the list in `folder` names it: relative to that folder (`labeled_list` resolves it so)."""
    return os.path.relpath(os.path.realpath(image), os.path.realpath(folder))


def read_provenance(path: Path) -> Provenance:
    """The provenance a suggestion list carries in its comment lines (empty when it has none)."""
    found = Provenance()
    for line in read_lines(path):
        text = line.strip().rstrip(",")  # a spreadsheet pads a one-cell row with commas
        if not text.startswith("# ") or ":" not in text:
            continue
        key, value = (part.strip() for part in text[2:].split(":", 1))
        if key in ("run", "checkpoint", "images", "root") and value:
            setattr(found, key, Path(value))
        elif key == "dataset" and value:
            found.dataset = value
    return found


def read_lines(path: Path) -> list[str]:
    """The lines of a list file (UTF-8, a byte order mark allowed), or one paragraph saying why it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise SemiclustError(f"the list '{path}' does not exist; give the CSV `semiclust label suggest` wrote "
                             "(or any 'path,label' list).") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as err:
        raise SemiclustError(f"the list '{path}' cannot be read as UTF-8 text ({type(err).__name__}); give the CSV "
                             "`semiclust label suggest` wrote (or any 'path,label' list).") from None


def read_rows(path: Path) -> list[Row]:
    """Every image row of a list, filled in or not (comments, blank lines and a `path,label` header skipped)."""
    rows: list[Row] = []
    for number, line in enumerate(read_lines(path), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = next(csv.reader([text])) if "," in text else [text]
        fields = [field.strip() for field in fields]
        while len(fields) > 2 and not fields[-1]:  # a spreadsheet's empty trailing cells
            fields.pop()
        if not rows and fields[0].lower() in HEADER_FIELDS:
            continue
        if fields[0]:
            rows.append(Row(fields[0], fields[1] if len(fields) > 1 else "", number))
    return rows


def refuse_unlabeled(path: Path, rows: list[Row]) -> None:
    """One paragraph when rows still lack a label: how many, which lines, and what to do."""
    missing = [f"line {row.line} ('{row.path}')" for row in rows if not row.label]
    if missing:
        raise SemiclustError(
            f"'{path}' has {len(missing)} of {len(rows)} row(s) without a label: {examples(missing, quote=False)}. "
            "Write each image's class after its comma (path,label), or delete the rows you cannot label, then run "
            "this again.")
