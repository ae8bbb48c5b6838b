"""Ranked lists: which gallery images a re-ID model puts first for a query, in both cascade stages.

The library behind ``scripts/visualize_ranks.py``:

- :func:`rank_lists`: per query, the top-k gallery indices in distance order with their
  true-match flags, leaving out the items evaluation ignores (same identity AND same camera,
  as the release's ``reid/evaluation_metrics/ranking.py`` ``mean_ap`` / ``cmc``);
- :func:`draw_ranked_list`: one PNG per query with one labelled row per stage: the query (blue
  frame), then the ranked gallery images framed green (same identity) or red (other identity),
  with the rank, identity, camera and distance underneath; :class:`RankLayout` gives the pixel
  geometry;
- :func:`write_rank_page`: the HTML index of those PNGs (:class:`reid.utils.html.HTML`, every
  name escaped);
- :func:`visualize_ranks`: the whole run for a checkpoint and a dataset.
"""
from __future__ import annotations

import logging
import os
import random
import re
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from reid.errors import ConfigError, DatasetError
from reid.evaluators import RESCORE_TOPK, extract_features, pairwise_distance, rescore_distances
from reid.models.loading import load_siamese
from reid.pipelines.common import PROTOCOLS, load_dataset
from reid.utils.data.images import save_image, to_pil
from reid.utils.data.loaders import build_eval_loader, unique_items
from reid.utils.html import HTML
from reid.utils.osutils import PathLike, write_json
from reid.utils.runtime import resolve_device

logger = logging.getLogger(__name__)

__all__ = [
    "MATCH_COLOUR",
    "MISMATCH_COLOUR",
    "QUERY_COLOUR",
    "RankItem",
    "RankRow",
    "RankLayout",
    "rank_lists",
    "draw_ranked_list",
    "write_rank_page",
    "visualize_ranks",
]

Item = Tuple[str, int, int]  # (fname, pid, cam)
ImageLike = Union[str, os.PathLike, Image.Image]

MATCH_COLOUR: Tuple[int, int, int] = (0, 170, 0)
MISMATCH_COLOUR: Tuple[int, int, int] = (220, 0, 0)
QUERY_COLOUR: Tuple[int, int, int] = (30, 90, 220)
_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)


def rank_lists(distmat: Union[np.ndarray, torch.Tensor], query: Sequence[Item], gallery: Sequence[Item],
               topk: int = 10) -> List[List[Tuple[int, bool]]]:
    """The top-k gallery items of every query, as evaluation ranks them.

    Args:
        distmat: (num_query, num_gallery) distances; smaller is better.
        query: the queries' ``(fname, pid, cam)``.
        gallery: the gallery's ``(fname, pid, cam)``.
        topk: how many items to keep per query (fewer when the gallery runs out).

    Returns:
        Per query, a list of ``(gallery index, is_match)`` in increasing distance (ties kept in
        gallery order), with every item of the query's identity AND camera left out;
        ``is_match`` says the item has the query's identity.
    """
    dist = distmat.detach().cpu().numpy() if isinstance(distmat, torch.Tensor) else np.asarray(distmat)
    if dist.shape != (len(query), len(gallery)):
        raise ValueError(f"distmat has shape {dist.shape}, expected ({len(query)}, {len(gallery)})")
    if topk < 1:
        raise ConfigError(f"--topk must be >= 1 (got {topk})")
    g_pids = np.array([pid for _, pid, _ in gallery])
    g_cams = np.array([cam for _, _, cam in gallery])
    out = []
    for i, (_, pid, cam) in enumerate(query):
        order = np.argsort(dist[i], kind="stable")
        keep = order[~((g_pids[order] == pid) & (g_cams[order] == cam))][:topk]
        out.append([(int(j), bool(g_pids[j] == pid)) for j in keep])
    return out


class RankItem(NamedTuple):
    """One gallery image of a ranked row.

    Attributes:
        image: the image (path or PIL image).
        is_match: same identity as the query (green frame) or not (red frame).
        caption: text under the image (one or more lines separated by '\\n').
    """

    image: ImageLike
    is_match: bool
    caption: str = ""


class RankRow(NamedTuple):
    """One labelled row of a ranked-list picture.

    Attributes:
        label: the text above the row (e.g. which stage).
        items: the ranked gallery images, best first.
    """

    label: str
    items: Sequence[RankItem]


@dataclass(frozen=True)
class RankLayout:
    """Pixel geometry of :func:`draw_ranked_list`'s pictures.

    Each row: a label line, then tiles (a frame of ``border`` pixels around a thumbnail of
    ``thumb_height`` x ``thumb_width``), then ``caption_lines`` lines of text. Column 0 is the
    query, columns 1.. the ranks; the query is ``query_gap`` pixels away from rank 1.

    Attributes:
        thumb_height, thumb_width: thumbnail size in pixels.
        border: frame width in pixels.
        gap: horizontal space between ranked tiles.
        query_gap: horizontal space between the query and rank 1.
        margin: space around everything.
        line_height: height of one text line.
        caption_lines: text lines under each tile.
        row_gap: vertical space between rows.
        font_size: text size in pixels.
    """

    thumb_height: int = 128
    thumb_width: int = 64
    border: int = 4
    gap: int = 6
    query_gap: int = 18
    margin: int = 8
    line_height: int = 14
    caption_lines: int = 2
    row_gap: int = 10
    font_size: int = 11

    @property
    def tile_size(self) -> Tuple[int, int]:
        """(width, height) of a framed tile."""
        return self.thumb_width + 2 * self.border, self.thumb_height + 2 * self.border

    @property
    def row_height(self) -> int:
        """Height of one row: label line, tile and caption lines."""
        return self.line_height + self.tile_size[1] + self.caption_lines * self.line_height

    def tile_origin(self, row: int, col: int) -> Tuple[int, int]:
        """(x, y) of the top-left frame pixel of tile ``col`` (0 = query, k = rank k) in ``row``."""
        tile_w, _ = self.tile_size
        x = self.margin if col == 0 else self.margin + tile_w + self.query_gap + (col - 1) * (tile_w + self.gap)
        y = self.margin + self.line_height + row * (self.row_height + self.row_gap) + self.line_height
        return x, y

    def canvas_size(self, num_rows: int, num_ranks: int) -> Tuple[int, int]:
        """(width, height) of a picture with ``num_rows`` rows of up to ``num_ranks`` ranked tiles."""
        tile_w, _ = self.tile_size
        width = self.margin * 2 + tile_w + (self.query_gap + num_ranks * (tile_w + self.gap) - self.gap
                                            if num_ranks > 0 else 0)
        height = self.margin * 2 + self.line_height + num_rows * self.row_height + max(0, num_rows - 1) * self.row_gap
        return width, height


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _framed(image: ImageLike, colour: Tuple[int, int, int], layout: RankLayout) -> Image.Image:
    tile = Image.new("RGB", layout.tile_size, colour)
    thumb = to_pil(image).resize((layout.thumb_width, layout.thumb_height), Image.BILINEAR)
    tile.paste(thumb, (layout.border, layout.border))
    return tile


def draw_ranked_list(query_image: ImageLike, rows: Sequence[RankRow], title: str = "",
                     query_caption: str = "query", layout: Optional[RankLayout] = None) -> Image.Image:
    """Draw one query's ranked lists, one labelled row per list.

    Args:
        query_image: the query image (path or PIL image), shown framed in :data:`QUERY_COLOUR`
            at the start of every row.
        rows: the rows (e.g. first and second stage), each a label and its ranked items; match
            items are framed in :data:`MATCH_COLOUR`, the others in :data:`MISMATCH_COLOUR`.
        title: the line above everything (e.g. the query's file name and identity).
        query_caption: the text under the query tiles.
        layout: the geometry (default :class:`RankLayout`); frames sit at
            :meth:`RankLayout.tile_origin`.

    Returns:
        An RGB image on a white background, at least :meth:`RankLayout.canvas_size` large (wider
        when the title or a label needs it).
    """
    layout = layout or RankLayout()
    font = _font(layout.font_size)
    num_ranks = max((len(r.items) for r in rows), default=0)
    width, height = layout.canvas_size(len(rows), num_ranks)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    texts = [title] + [r.label for r in rows]
    text_w = max(measure.textlength(t, font=font) for t in texts) if texts else 0
    width = max(width, int(np.ceil(text_w)) + 2 * layout.margin)
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    tile_w, tile_h = layout.tile_size
    if title:
        draw.text((layout.margin, layout.margin), title, fill=_TEXT, font=font)
    query_tile = _framed(query_image, QUERY_COLOUR, layout)

    def caption(x: int, y: int, text: str) -> None:
        for k, line in enumerate(text.split("\n")[:layout.caption_lines]):
            draw.text((x, y + k * layout.line_height), line, fill=_TEXT, font=font)

    for r, row in enumerate(rows):
        qx, qy = layout.tile_origin(r, 0)
        draw.text((layout.margin, qy - layout.line_height), row.label, fill=_TEXT, font=font)
        canvas.paste(query_tile, (qx, qy))
        caption(qx, qy + tile_h + 1, query_caption)
        for c, item in enumerate(row.items, start=1):
            x, y = layout.tile_origin(r, c)
            canvas.paste(_framed(item.image, MATCH_COLOUR if item.is_match else MISMATCH_COLOUR, layout), (x, y))
            caption(x, y + tile_h + 1, item.caption)
    return canvas


def write_rank_page(output_dir: PathLike, entries: Sequence[Tuple[str, str, int]], title: str,
                    notes: Sequence[str] = ()) -> str:
    """Write ``<output_dir>/index.html`` showing ranked-list pictures.

    Args:
        output_dir: the page's folder; the pictures are expected under it.
        entries: ``(relative picture path, caption, display width in pixels)`` per query, in
            page order.
        title: the page title (escaped).
        notes: lines shown as headers above the pictures (escaped).

    Returns:
        The page's path.
    """
    page = HTML(output_dir, title)
    page.add_header(title)
    for note in notes:
        page.add_header(note)
    for rel, text, width in entries:
        page.add_images([rel], [text], [rel], width=int(width))
    return page.save()


def _safe_stem(fname: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", os.path.splitext(os.path.basename(fname))[0])[:60] or "query"


def _select_queries(query: Sequence[Item], names: Optional[Sequence[str]], num_queries: int, seed: int,
                    dataset: str, protocol: str) -> List[int]:
    if names:
        index = {fname: i for i, (fname, _, _) in enumerate(query)}
        chosen = []
        for name in names:
            if name not in index:
                raise DatasetError(f"--queries {name}: not a query image of {dataset} ({protocol} protocol)")
            chosen.append(index[name])
        return chosen
    if num_queries < 1:
        raise ConfigError(f"--num-queries must be >= 1 (got {num_queries})")
    return sorted(random.Random(seed).sample(range(len(query)), min(num_queries, len(query))))


def visualize_ranks(
    checkpoint: PathLike,
    dataset_name: str,
    data_dir: PathLike,
    output_dir: PathLike,
    queries: Optional[Sequence[str]] = None,
    num_queries: int = 10,
    seed: int = 0,
    topk: int = 10,
    rerank_topk: int = RESCORE_TOPK,
    protocol: str = "openreid",
    split_id: int = 0,
    height: int = 256,
    width: int = 128,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "cpu",
    layout: Optional[RankLayout] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """Draw the first- and second-stage ranked lists of some queries and index them in a page.

    Args:
        checkpoint: E's weights (``--checkpoint``; see :func:`reid.models.loading.load_siamese`).
        dataset_name: ``-d``, e.g. ``market1501``; the data is ``<data_dir>/<dataset_name>``.
        data_dir: ``--data-dir``.
        output_dir: ``--output``: receives ``images/query_XXX_<stem>.png``, ``index.html`` and
            ``ranks.json``.
        queries: query file names (``--queries``); None: ``num_queries`` random queries.
        num_queries: how many random queries (``--num-queries``).
        seed: seed of the random choice (``--seed``).
        topk: gallery items shown per row (``--topk``).
        rerank_topk: first-stage candidates the verification head re-scores (``--rerank-topk``).
        protocol: ``'openreid'`` or ``'official'`` query/gallery lists (``--protocol``).
        split_id: which split (``--split``).
        height, width: input size of the network (``--height``/``--width``).
        batch_size: feature-extraction batch size.
        workers: DataLoader worker processes.
        device: ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'auto'``.
        layout: picture geometry (default :class:`RankLayout`).
        progress: show a progress bar while extracting features.

    Returns:
        ``{'page': index.html path, 'images': picture paths in query order, 'ranks': path of
        ranks.json, 'queries': the chosen query items}``.

    Raises:
        ConfigError: a bad option value. DatasetError / CheckpointError: bad data or weights.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol}: expected one of {', '.join(PROTOCOLS)}")
    if topk < 1:
        raise ConfigError(f"--topk must be >= 1 (got {topk})")
    if rerank_topk < 1:
        raise ConfigError(f"--rerank-topk must be >= 1 (got {rerank_topk})")
    dev = resolve_device(device)
    dataset = load_dataset(dataset_name, os.fspath(data_dir), split_id, protocol=protocol)
    chosen = _select_queries(dataset.query, queries, num_queries, seed, dataset_name, protocol)
    query = [dataset.query[i] for i in chosen]
    gallery = dataset.gallery
    model = load_siamese(checkpoint).to(dev)

    loader = build_eval_loader(unique_items(query, gallery), dataset.images_dir, height, width, batch_size, workers)
    features = extract_features(model.base_model, loader, dev, desc="Extract features", progress=progress)
    qf = torch.stack([features[f] for f, _, _ in query])
    gf = torch.stack([features[f] for f, _, _ in gallery])
    dist1 = pairwise_distance(qf, gf)
    dist2 = rescore_distances(dist1, qf, gf, model.embed_model, topk=rerank_topk, device=dev)
    stages = [
        ("first stage: Euclidean distance of the pooled features", dist1, rank_lists(dist1, query, gallery, topk)),
        (f"second stage: top {min(rerank_topk, len(gallery))} re-scored by the verification head (P(different))", dist2,
         rank_lists(dist2, query, gallery, topk)),
    ]

    out_dir = os.fspath(output_dir)
    entries = []
    image_paths = []
    record = []
    for qi, (fname, pid, cam) in enumerate(query):
        rows = []
        lists = {}
        for label, dist, ranked in stages:
            items = []
            listed = []
            for rank, (g, match) in enumerate(ranked[qi], start=1):
                g_fname, g_pid, g_cam = gallery[g]
                d = float(dist[qi, g])
                items.append(RankItem(os.path.join(dataset.images_dir, g_fname), match,
                                      f"#{rank} id {g_pid}\nc{g_cam} d={d:.3g}"))
                listed.append({"rank": rank, "fname": g_fname, "pid": g_pid, "cam": g_cam, "distance": d,
                               "match": match})
            rows.append(RankRow(label, items))
            lists["first_stage" if not lists else "second_stage"] = listed
        title = f"query {fname} (id {pid}, cam {cam})"
        picture = draw_ranked_list(os.path.join(dataset.images_dir, fname), rows, title=title,
                                   query_caption=f"query\nid {pid} cam {cam}", layout=layout)
        rel = f"images/query_{qi:03d}_{_safe_stem(fname)}.png"
        save_image(np.asarray(picture), os.path.join(out_dir, rel))
        image_paths.append(os.path.join(out_dir, rel))
        top1 = ["match" if r[qi] and r[qi][0][1] else "no match" for _, _, r in stages]
        entries.append((rel, f"{title}: rank 1 {top1[0]} (first stage), {top1[1]} (second stage)", picture.width))
        record.append({"query": {"fname": fname, "pid": pid, "cam": cam}, "picture": rel, **lists})

    notes = [
        f"checkpoint: {os.fspath(checkpoint)}",
        f"dataset: {dataset_name} split {split_id}, {protocol} protocol, {len(gallery)} gallery images; "
        "same-identity same-camera gallery images are left out, as in evaluation",
        "frames: blue = query, green = same identity, red = other identity; "
        "under each image: rank, identity, camera (c) and distance (d)",
    ]
    page = write_rank_page(out_dir, entries, f"Ranked lists: {dataset_name}", notes)
    ranks_path = os.path.join(out_dir, "ranks.json")
    write_json({"checkpoint": os.fspath(checkpoint), "dataset": dataset_name, "split": split_id,
                "protocol": protocol, "topk": topk, "rerank_topk": rerank_topk, "queries": record}, ranks_path)
    return {"page": page, "images": image_paths, "ranks": ranks_path, "queries": query}
