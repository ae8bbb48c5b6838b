"""A static HTML page of image tables, built with dominate (the offline gallery of the visuals).

Text placed in the page is HTML-escaped by dominate, and every ``src``/``href`` is URL-quoted, so a
file name or caption holding markup, quotes or spaces shows up as text and still points at its file.
"""
from __future__ import annotations

import os
from typing import Sequence, Union
from urllib.parse import quote

import dominate
from dominate import tags

from reid.utils.osutils import atomic_write_text, mkdir_if_missing

PathLike = Union[str, os.PathLike]


def url_for(relative_path: PathLike) -> str:
    """Quote a path relative to the page's folder for use as a ``src`` or ``href`` value.

    Args:
        relative_path: a path such as ``images/epoch001_fake.png``; folder separators are kept,
            every other character outside the unreserved URL set is percent-encoded (so ``<``,
            quotes, ``%``, ``#``, ``?``, ``:`` and spaces cannot change what the attribute means).
    """
    return quote(os.fspath(relative_path).replace(os.sep, "/"), safe="/")


class HTML:
    """One page ``<web_dir>/index.html`` with headers and rows of captioned, linked images.

    Args:
        web_dir: the folder of the page; images go into ``<web_dir>/images/`` (both created).
        title: the page title (escaped).
        refresh: when > 0, the browser reloads the page every ``refresh`` seconds.
    """

    def __init__(self, web_dir: PathLike, title: str, refresh: int = 0) -> None:
        self.web_dir = os.fspath(web_dir)
        self.img_dir = os.path.join(self.web_dir, "images")
        self.title = title
        mkdir_if_missing(self.img_dir)
        self.doc = dominate.document(title=title)
        with self.doc.head:
            tags.meta(charset="utf-8")
            if refresh > 0:
                tags.meta(http_equiv="refresh", content=str(int(refresh)))

    def get_image_dir(self) -> str:
        """Return the folder the page's images are expected in (``<web_dir>/images``)."""
        return self.img_dir

    def add_header(self, text: str) -> None:
        """Append a level-3 header with ``text`` (escaped) to the page."""
        with self.doc:
            tags.h3(text)

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
            raise ValueError(
                f"add_images: {len(ims)} images, {len(txts)} captions and {len(links)} links"
            )
        table = tags.table(border=1, style="table-layout: fixed;")
        self.doc.add(table)
        with table:
            with tags.tr():
                for im, txt, link in zip(ims, txts, links):
                    with tags.td(
                        style="word-wrap: break-word; text-align: center; vertical-align: top;"
                    ):
                        with tags.p():
                            with tags.a(href=url_for(link)):
                                tags.img(style=f"width:{int(width)}px", src=url_for(im), alt=txt)
                            tags.br()
                            tags.span(txt)

    def render(self) -> str:
        """Return the page as an HTML string."""
        return self.doc.render()

    def save(self) -> str:
        """Write the page to ``<web_dir>/index.html`` atomically and return that path."""
        path = os.path.join(self.web_dir, "index.html")
        atomic_write_text(path, self.render())
        return path
