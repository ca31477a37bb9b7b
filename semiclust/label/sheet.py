"""The contact sheet to label from: every suggested image with its path and its rank in the list, grouped by
cluster, as one HTML page that opens from disk (thumbnails embedded as PNG data, each linked to its file by a
relative path, so that no server is needed and the page survives a copy with its images) and as a PNG grid."""
from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from semiclust.storage.atomic import write_bytes, write_text

THUMBNAIL = 128  # the longer side of a thumbnail, in pixels
PNG_COLUMNS = 10
PNG_MAX_IMAGES = 200  # the PNG shows the first ones; the HTML shows every image


@dataclass
class SheetItem:
    """One suggested image: its rank in the list (1 = label first), cluster, the path shown (or the training index),
    the file's path relative to the sheet as the file system holds it (None for in-memory images: nothing to link),
    the score and the pixels (H x W x 3)."""

    rank: int
    cluster: int
    shown: str
    href: str | None
    score: float
    pixels: np.ndarray | None


def thumbnail(pixels: np.ndarray | None, side: int = THUMBNAIL) -> np.ndarray:
    """The image scaled so that its longer side is `side` (small images enlarged without blurring), H x W x 3."""
    from PIL import Image

    if pixels is None:
        return np.full((side, side, 3), 200, dtype=np.uint8)  # grey: the file could not be read
    image = Image.fromarray(np.ascontiguousarray(pixels))
    scale = side / max(image.size)
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    return np.asarray(image.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR))


def png_data(pixels: np.ndarray) -> str:
    """An image as a `data:` URI, for an `<img>` that needs no file beside the page."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def by_cluster(items: list[SheetItem]) -> list[tuple[int, list[SheetItem]]]:
    """The items grouped by cluster, clusters in the order of their first pick, items by rank."""
    groups: dict[int, list[SheetItem]] = {}
    for item in sorted(items, key=lambda i: i.rank):
        groups.setdefault(item.cluster, []).append(item)
    return list(groups.items())


STYLE = """body{font-family:sans-serif;margin:1.5em;background:#fafafa;color:#222}
section{display:inline-block;vertical-align:top;margin:0 8px 10px 0;padding:.4em;background:#fff;
border:1px solid #ddd;border-radius:6px}h2{font-size:12px;margin:.1em 0 .3em;color:#555}
figure{display:inline-block;margin:3px;width:132px;vertical-align:top}
img{width:128px;height:128px;object-fit:contain;image-rendering:pixelated;background:#eee;border:1px solid #ccc}
figcaption{font-size:11px}.path{word-break:break-all}.rank{font-weight:bold;font-size:13px}.score{color:#888}"""


def figure_html(item: SheetItem, score_name: str) -> str:
    """One image: its thumbnail (linked to the file when there is one), rank, name and score."""
    image = f'<img src="{png_data(thumbnail(item.pixels))}" alt="{html.escape(item.shown)}">'
    linked = f'<a href="{html.escape(quote(os.fsencode(item.href)))}">{image}</a>' if item.href else image
    return (f'<figure class="pick" data-rank="{item.rank}" data-path="{html.escape(item.shown)}">{linked}'
            f'<figcaption><span class="rank">#{item.rank}</span> <span class="path">{html.escape(item.shown)}</span>'
            f'<br><span class="score">{score_name} {item.score:.3g}</span></figcaption></figure>')


def render_html(items: list[SheetItem], title: str, lines: list[str], sizes: dict[int, int], score_name: str) -> str:
    """The page: a title, a few lines of context, then one section per cluster with its suggested images."""
    sections = []
    for cluster, members in by_cluster(items):
        figures = "\n".join(figure_html(item, score_name) for item in members)
        sections.append(f'<section class="cluster" id="cluster-{cluster}"><h2>cluster {cluster} '
                        f'({sizes.get(cluster, 0):,} images)</h2>\n{figures}\n</section>')
    context = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>{context}\n"
            + "\n".join(sections) + "\n</body></html>\n")


def render_png(items: list[SheetItem], title: str) -> bytes:
    """A grid of the first PNG_MAX_IMAGES suggested images, grouped by cluster, each captioned with its rank,
    cluster and the end of its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [item for _, members in by_cluster(items) for item in members][:PNG_MAX_IMAGES]
    columns = max(1, min(PNG_COLUMNS, len(shown)))
    rows = max(1, -(-len(shown) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(max(4.0, columns * 1.6), rows * 1.9 + 0.6), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, item in zip(axes.flat, shown):
        axis.imshow(thumbnail(item.pixels), interpolation="nearest")
        axis.set_title(f"#{item.rank} c{item.cluster}\n{item.shown[-22:]}", fontsize=7)
    more = f" (the first {len(shown)} of {len(items)}; the HTML shows all)" if len(shown) < len(items) else ""
    figure.suptitle(title + more, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def write_sheet(items: list[SheetItem], html_path: Path, png_path: Path, title: str, lines: list[str],
                sizes: dict[int, int], score_name: str) -> None:
    """Write the HTML page and the PNG grid (each atomically)."""
    write_text(html_path, render_html(items, title, lines, sizes, score_name))
    write_bytes(png_path, render_png(items, title))
