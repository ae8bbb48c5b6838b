"""Static HTML pages built with dominate: every page the project writes goes through :class:`HTML`.

Text placed in a page is HTML-escaped by dominate, and every ``src``/``href`` is URL-quoted
(:func:`url_for`), so a file name or caption holding markup, quotes or spaces shows up as text and
still points at its file. Torch-free: the pose estimator's environment uses it too.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple, Union
from urllib.parse import quote

import dominate
from dominate import tags

from reid.utils.osutils import PathLike, atomic_write_text, mkdir_if_missing

__all__ = ["url_for", "table_html", "HTML"]

Caption = Union[str, Sequence[str]]


def url_for(relative_path: PathLike) -> str:
    """Quote a path relative to the page's folder for use as a ``src`` or ``href`` value.

    Args:
        relative_path: a path such as ``images/epoch001_fake.png``; folder separators are kept,
            every other character outside the unreserved URL set is percent-encoded (so ``<``,
            quotes, ``%``, ``#``, ``?``, ``:`` and spaces cannot change what the attribute means).
    """
    return quote(os.fspath(relative_path).replace(os.sep, "/"), safe="/")


def _lines(caption: Caption) -> None:
    """Add a caption's lines (a string, or several separated by line breaks) to the open element."""
    parts = [caption] if isinstance(caption, str) else list(caption)
    for k, line in enumerate(parts):
        if k:
            tags.br()
        tags.span(line)


def table_html(rows: Sequence[Sequence[str]]) -> str:
    """A bare ``<table>`` of text cells (escaped), as a string (e.g. for a visdom text pane)."""
    table = tags.table()
    with table:
        for row in rows:
            with tags.tr():
                for cell in row:
                    tags.td(cell)
    return table.render(pretty=False)


class HTML:
    """One page ``<web_dir>/index.html`` of headers, paragraphs, image rows, figures and tables.

    Args:
        web_dir: the folder of the page (created); images are expected below it.
        title: the page title (escaped).
        refresh: when > 0, the browser reloads the page every ``refresh`` seconds.
        style: CSS placed in the page's head, or None.
    """

    def __init__(self, web_dir: PathLike, title: str, refresh: int = 0, style: Optional[str] = None) -> None:
        self.web_dir = os.fspath(web_dir)
        self.img_dir = os.path.join(self.web_dir, "images")
        self.title = title
        mkdir_if_missing(self.web_dir)
        self.doc = dominate.document(title=title)
        with self.doc.head:
            tags.meta(charset="utf-8")
            if refresh > 0:
                tags.meta(http_equiv="refresh", content=str(int(refresh)))
            if style:
                tags.style(style)

    def get_image_dir(self) -> str:
        """The folder the page's images usually go into, ``<web_dir>/images`` (created)."""
        mkdir_if_missing(self.img_dir)
        return self.img_dir

    def add_header(self, text: str, level: int = 3, anchor: Optional[str] = None) -> None:
        """Append a header of ``level`` (1..6) with ``text`` (escaped); ``anchor`` becomes its id."""
        if not 1 <= level <= 6:
            raise ValueError(f"add_header: level must be 1..6, got {level}")
        with self.doc:
            getattr(tags, f"h{level}")(text, **({"id": anchor} if anchor else {}))

    def add_paragraph(self, text: str) -> None:
        """Append a paragraph of ``text`` (escaped)."""
        with self.doc:
            tags.p(text)

    def add_images(
        self,
        ims: Sequence[PathLike],
        txts: Sequence[str],
        links: Sequence[PathLike],
        width: int = 256,
    ) -> None:
        """Append one table row of images, each above its caption and linking to a file.

        Args:
            ims: image paths relative to ``web_dir`` (for example ``images/epoch001_fake.png``).
            txts: one caption per image (escaped).
            links: one link target per image, relative to ``web_dir`` (usually the image itself).
            width: the displayed width of each image in CSS pixels.
        """
        if not (len(ims) == len(txts) == len(links)):
            raise ValueError(f"add_images: {len(ims)} images, {len(txts)} captions and {len(links)} links")
        table = tags.table(border=1, style="table-layout: fixed;")
        self.doc.add(table)
        with table:
            with tags.tr():
                for im, txt, link in zip(ims, txts, links):
                    with tags.td(style="word-wrap: break-word; text-align: center; vertical-align: top;"):
                        with tags.p():
                            with tags.a(href=url_for(link)):
                                tags.img(style=f"width:{int(width)}px", src=url_for(im), alt=txt)
                            tags.br()
                            tags.span(txt)

    def add_figure(self, src: PathLike, caption: Caption, alt: Optional[str] = None,
                   height: Optional[int] = None) -> None:
        """Append a figure: an image above its caption.

        Args:
            src: the image path relative to ``web_dir``.
            caption: the caption, or its lines (escaped).
            alt: the image's alternative text (default: the caption's first line).
            height: the displayed height in pixels, or None for the image's own.
        """
        first = caption if isinstance(caption, str) else (list(caption) or [""])[0]
        figure = tags.figure()
        self.doc.add(figure)
        with figure:
            attrs = {"src": url_for(src), "alt": first if alt is None else alt}
            if height is not None:
                attrs["height"] = str(int(height))
            tags.img(**attrs)
            with tags.figcaption():
                _lines(caption)

    def add_table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """Append a table with a header row and text cells (escaped)."""
        table = tags.table()
        self.doc.add(table)
        with table:
            with tags.tr():
                for cell in header:
                    tags.th(cell)
            for row in rows:
                with tags.tr():
                    for cell in row:
                        tags.td(cell)

    def add_links(self, links: Sequence[Tuple[str, PathLike]]) -> None:
        """Append a list of ``(text, target relative to web_dir)`` links."""
        items = tags.ul()
        self.doc.add(items)
        with items:
            for text, target in links:
                tags.li(tags.a(text, href=url_for(target)))

    def render(self) -> str:
        """Return the page as an HTML string."""
        return self.doc.render()

    def save(self, name: str = "index.html") -> str:
        """Write the page to ``<web_dir>/<name>`` atomically and return that path."""
        path = os.path.join(self.web_dir, name)
        atomic_write_text(path, self.render())
        return path
