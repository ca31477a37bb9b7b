"""The contact sheet (semiclust/label/sheet.py) as a unit: sections per cluster in the order of their first pick,
figures by rank, text escaped, links that reach files whatever their names' bytes, and a PNG grid."""
from __future__ import annotations

import io
import os
from urllib.parse import unquote_to_bytes

import numpy as np

from semiclust.label.sheet import SheetItem, render_html, render_png, thumbnail
from tests.label.pages import Sheet


def items() -> list[SheetItem]:
    grey = np.full((10, 20, 3), 90, dtype=np.uint8)
    return [SheetItem(1, 7, "a/<b>.png", "a/<b>.png", 0.5, grey), SheetItem(2, 3, "caf\\xe9.png", "caf\udce9.png", 0.25, grey),
            SheetItem(3, 7, "12", None, 0.125, None)]


def test_the_page_groups_by_cluster_in_pick_order_and_escapes_names(tmp_path):
    page = render_html(items(), "Images <to> label", ["line & more"], {7: 40, 3: 9}, "typicality")
    sheet = Sheet()
    sheet.feed(page)
    assert sheet.title == "Images <to> label" and "line &amp; more" in page and "<b>.png" not in page
    assert sheet.sections == ["cluster-7", "cluster-3"]  # cluster 7 holds pick #1
    assert sheet.figures == [(1, "a/<b>.png", "cluster-7"), (3, "12", "cluster-7"), (2, "caf\\xe9.png", "cluster-3")]
    assert "cluster 7 (40 images)" in page and "typicality 0.125" in page
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "<b>.png").write_bytes(b"x")
    (tmp_path / os.fsdecode(b"caf\xe9.png")).write_bytes(b"x")  # a Latin-1 name: the link carries its bytes
    assert len(sheet.links) == 2 and all((tmp_path / os.fsdecode(unquote_to_bytes(link))).is_file()
                                          for link in sheet.links)
    assert len(sheet.images) == 3  # the unreadable image gets a grey tile


def test_thumbnails_keep_the_aspect_and_the_png_is_an_image():
    from PIL import Image

    assert thumbnail(np.zeros((10, 20, 3), dtype=np.uint8)).shape == (64, 128, 3)
    with Image.open(io.BytesIO(render_png(items(), "three"))) as grid:
        assert grid.format == "PNG" and grid.size[0] > 200
