"""Reading the contact sheet back in tests: an HTML parser that keeps what the tests check."""
from __future__ import annotations

from html.parser import HTMLParser


class Sheet(HTMLParser):
    """The parts of the contact sheet the tests read: sections, figures (rank, path, cluster), links, images."""

    def __init__(self):
        super().__init__()
        self.sections, self.figures, self.links, self.images, self.title = [], [], [], [], ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        elif tag == "figure":
            self.figures.append((int(attrs["data-rank"]), attrs["data-path"], self.sections[-1]))
        elif tag == "a":
            self.links.append(attrs["href"])
        elif tag == "img":
            self.images.append(attrs["src"])
        self._in_title = tag == "title"

    def handle_data(self, data):
        if self._in_title:
            self.title += data
