"""Re-ID ranking metrics: mean average precision (mAP) and the CMC curve.

Every metric takes a query x gallery distance matrix and the identity and camera of each query
and gallery image. Conventions shared by all functions here:

* A gallery item is ignored for a query when it has the same identity AND the same camera.
* A query's ranking is a stable sort of its remaining gallery items by distance: equal distances
  are ordered by gallery index. The ranking is computed exactly, without a full sort.
* A query with no true match (same identity, another camera) among its remaining items is
  skipped. When no query is valid, :func:`mean_ap` returns 0.0 and :func:`cmc` a zero curve
  (with a logged warning) instead of raising.
* Distances may be a numpy array or a torch tensor of any real dtype; NaN distances raise
  ``ValueError``. Identities and cameras must be integer-valued.

:func:`evaluate_rank` is the one entry every report goes through; :func:`format_results` turns
its dict into a small text table.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from reid.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "CMC_CONFIGS",
    "SINGLE_GALLERY_SHOT_DRAWS",
    "cmc",
    "evaluate_rank",
    "format_results",
    "mean_ap",
]

CMC_CONFIGS: Dict[str, Dict[str, bool]] = {
    "market1501": dict(
        separate_camera_set=False, single_gallery_shot=False, first_match_break=True
    ),
    "cuhk03": dict(separate_camera_set=True, single_gallery_shot=True, first_match_break=False),
    "allshots": dict(
        separate_camera_set=False, single_gallery_shot=False, first_match_break=False
    ),
}

#: Number of random draws of the single-gallery-shot CMC, each weighted 1 / draws.
SINGLE_GALLERY_SHOT_DRAWS = 10

# Elements of one chunk's largest temporary: a float copy of the rows (8 bytes each), or the
# several (rows, draws, gallery) arrays of the single-gallery-shot CMC; ~256 MB in total.
_MAIN_CHUNK_ELEMENTS = 1 << 25
_SGS_CHUNK_ELEMENTS = 1 << 23

ArrayLike = Any  # numpy array, torch tensor, or sequence
RngLike = Union[None, int, np.random.Generator]


# --------------------------------------------------------------------------------------------
# Input handling


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """Return ``x`` as a numpy array (torch tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.cpu().numpy()
    return np.asarray(x)


def _float_dtype(dtype: np.dtype) -> np.dtype:
    """The float dtype distances of ``dtype`` are compared in (exact for every input value)."""
    if dtype in (np.float32, np.float64):
        return dtype
    if dtype == np.float16:
        return np.dtype(np.float32)
    if np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating):
        return np.dtype(np.float64)
    raise ValueError(f"distmat must hold real numbers, got dtype {dtype}")


def _label_array(x: Optional[ArrayLike], length: int, default: np.ndarray, name: str) -> np.ndarray:
    """Return identities or cameras as a 1-D int64 array of ``length`` (``default`` if None)."""
    if x is None:
        return default
    arr = _to_numpy(x)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise ValueError(f"{name} must be 1-D of length {length}, got shape {arr.shape}")
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")


def _prepare(
    distmat: ArrayLike,
    query_ids: Optional[ArrayLike],
    gallery_ids: Optional[ArrayLike],
    query_cams: Optional[ArrayLike],
    gallery_cams: Optional[ArrayLike],
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate the inputs and fill the open-reid defaults for missing ids and cameras."""
    dist = _to_numpy(distmat)
    if dist.ndim != 2:
        raise ValueError(f"distmat must be 2-D (queries x gallery), got shape {dist.shape}")
    _float_dtype(dist.dtype)
    m, n = dist.shape
    qids = _label_array(query_ids, m, np.arange(m, dtype=np.int64), "query_ids")
    gids = _label_array(gallery_ids, n, np.arange(n, dtype=np.int64), "gallery_ids")
    qcams = _label_array(query_cams, m, np.zeros(m, dtype=np.int64), "query_cams")
    gcams = _label_array(gallery_cams, n, np.ones(n, dtype=np.int64), "gallery_cams")
    return dist, qids, gids, qcams, gcams


def _make_rng(rng: RngLike) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be None, an int seed or a numpy Generator: {type(rng).__name__}")


def _check_positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _chunk_rows(chunk_size: Optional[int], elements: int, row_elements: int) -> int:
    """Queries per chunk: ``chunk_size`` if given, else as many as fit in ``elements``."""
    if chunk_size is not None:
        return _check_positive(chunk_size, "chunk_size")
    return max(1, elements // max(1, row_elements))


def _check_no_nan(block: np.ndarray) -> None:
    # np.min propagates NaN, and is cheaper than np.isnan(block).any().
    if block.size and np.isnan(block.min()):
        raise ValueError("distmat contains NaN")


# --------------------------------------------------------------------------------------------
# Exact ranks of the true matches


class _MatchRanks:
    """Ranks of every true match of every query, grouped by query in ranking order.

    Attributes:
        query: (T,) query index of each true match.
        order: (T,) 0-based position of the match among its query's true matches.
        rank: (T,) 1-based rank of the match among its query's remaining gallery items.
        num_matches: (num_queries,) ranked matches per query (0 for invalid queries): all true
            matches, or 1 per valid query when only first matches were ranked.
    """

    def __init__(self, query: np.ndarray, order: np.ndarray, rank: np.ndarray, num_queries: int):
        self.query = query
        self.order = order
        self.rank = rank
        self.num_matches = np.bincount(query, minlength=num_queries)

    @property
    def num_valid(self) -> int:
        return int(np.count_nonzero(self.num_matches))


def _same_id_pairs(qids: np.ndarray, gids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """All (query, gallery) index pairs with the same identity, without an m x n comparison."""
    order = np.argsort(gids, kind="stable")
    sorted_ids = gids[order]
    lo = np.searchsorted(sorted_ids, qids, side="left")
    hi = np.searchsorted(sorted_ids, qids, side="right")
    counts = hi - lo
    total = int(counts.sum())
    query = np.repeat(np.arange(len(qids)), counts)
    first = np.cumsum(counts) - counts
    pos = np.arange(total) - np.repeat(first, counts) + np.repeat(lo, counts)
    return query, order[pos]


def _match_ranks(
    dist: np.ndarray,
    qids: np.ndarray,
    gids: np.ndarray,
    qcams: np.ndarray,
    gcams: np.ndarray,
    separate_camera_set: bool,
    chunk_size: Optional[int],
    first_only: bool = False,
) -> _MatchRanks:
    """Exact 1-based rank of every true match among the remaining gallery items of its query.

    With ``first_only`` just the first true match of each query is ranked (enough for a
    first-match-break CMC, and cheaper).

    The rank of a match m of query q is 1 + the number of remaining items g with
    (d[q, g], g) < (d[q, m], m). Only items no farther than the query's last match can precede
    a match, so each query sorts just those, and same-identity same-camera items (few) are
    subtracted afterwards from the identity group's own order.
    """
    m, n = dist.shape
    fdtype = _float_dtype(dist.dtype)
    query, gal = _same_id_pairs(qids, gids)
    is_match = gcams[gal] != qcams[query]
    if separate_camera_set:
        # Every same-camera item is dropped below, junk included: keep the matches only.
        query, gal, is_match = query[is_match], gal[is_match], is_match[is_match]
    d = dist[query, gal].astype(fdtype, copy=False)
    if np.isnan(d).any():
        raise ValueError("distmat contains NaN")

    # Order each query's same-identity items by (distance, gallery index).
    idx = np.lexsort((gal, d, query))
    query, gal, d, is_match = query[idx], gal[idx], d[idx], is_match[idx]
    group_start = np.searchsorted(query, np.arange(m), side="left")
    pos_in_group = np.arange(len(query)) - group_start[query]
    matches_before = np.cumsum(is_match) - is_match
    matches_before -= matches_before[group_start[query]] if len(query) else 0
    junk_before = pos_in_group - matches_before

    if first_only:
        is_match &= matches_before == 0
    query, gal, d = query[is_match], gal[is_match], d[is_match]
    order, junk_before = matches_before[is_match], junk_before[is_match]
    starts = np.searchsorted(query, np.arange(m + 1), side="left")
    cam_keep: Dict[int, np.ndarray] = {}
    if separate_camera_set:
        for cam in np.unique(qcams[query]):
            cam_keep[int(cam)] = gcams != cam

    below = np.empty(len(query), dtype=np.int64)  # remaining items strictly closer
    upto = np.empty(len(query), dtype=np.int64)  # remaining items closer or equal
    rows_per_chunk = _chunk_rows(chunk_size, _MAIN_CHUNK_ELEMENTS, n)
    for lo in range(0, m, rows_per_chunk):
        hi = min(m, lo + rows_per_chunk)
        block = dist[lo:hi].astype(fdtype, copy=False)
        _check_no_nan(block)
        for q in np.flatnonzero(starts[lo + 1:hi + 1] > starts[lo:hi]).tolist():
            row = block[q]
            s, e = starts[lo + q], starts[lo + q + 1]
            keep = row <= d[e - 1]  # farther items cannot precede any match
            if separate_camera_set:
                keep &= cam_keep[int(qcams[lo + q])]
            closer = row[keep]
            closer.sort()
            below[s:e] = np.searchsorted(closer, d[s:e], side="left")
            upto[s:e] = np.searchsorted(closer, d[s:e], side="right")

    before = below
    tied = np.flatnonzero(upto - below > 1)  # another remaining item has exactly this distance
    if len(tied):
        before = below.copy()
        cols = np.arange(n)
        step = max(1, _SGS_CHUNK_ELEMENTS // max(1, n))
        for t0 in range(0, len(tied), step):
            t = tied[t0:t0 + step]
            rows = dist[query[t]].astype(fdtype, copy=False)
            earlier_equal = (rows == d[t, None]) & (cols[None, :] < gal[t, None])
            if separate_camera_set:
                earlier_equal &= gcams[None, :] != qcams[query[t], None]
            before[t] += np.count_nonzero(earlier_equal, axis=1)

    rank = before - junk_before + 1
    return _MatchRanks(query, order, rank, m)


def _ap_from_ranks(ranks: _MatchRanks) -> float:
    """Mean over valid queries of the mean precision at the rank of each true match."""
    valid = ranks.num_matches > 0
    if not valid.any():
        logger.warning("mean_ap: no query has a true match in the gallery; returning 0.0")
        return 0.0
    precision = (ranks.order + 1) / ranks.rank
    sums = np.bincount(ranks.query, weights=precision, minlength=len(ranks.num_matches))
    return float(np.mean(sums[valid] / ranks.num_matches[valid]))


def _cmc_from_ranks(ranks: _MatchRanks, topk: int, first_match_break: bool) -> np.ndarray:
    """CMC curve (length ``topk``) from the exact ranks of the true matches."""
    num_valid = ranks.num_valid
    if num_valid == 0:
        logger.warning("cmc: no query has a true match in the gallery; returning zeros")
        return np.zeros(topk)
    if first_match_break:
        first = ranks.order == 0
        position = ranks.rank[first] - 1
        weight = np.ones(len(position))
    else:
        # A match with j matches before it counts at its position among the non-matches.
        position = ranks.rank - 1 - ranks.order
        weight = 1.0 / ranks.num_matches[ranks.query]
    inside = position < topk
    hist = np.bincount(position[inside], weights=weight[inside], minlength=topk)
    return np.cumsum(hist) / num_valid


# --------------------------------------------------------------------------------------------
# Single-gallery-shot CMC


def _cmc_single_gallery_shot(
    dist: np.ndarray,
    qids: np.ndarray,
    gids: np.ndarray,
    qcams: np.ndarray,
    gcams: np.ndarray,
    separate_camera_set: bool,
    topk: int,
    rng: np.random.Generator,
    chunk_size: Optional[int],
) -> np.ndarray:
    """CMC where each draw keeps one remaining gallery item per identity (see :func:`cmc`)."""
    m, n = dist.shape
    draws = SINGLE_GALLERY_SHOT_DRAWS
    fdtype = _float_dtype(dist.dtype)
    labels, gcode = np.unique(gids, return_inverse=True)
    num_ids = len(labels)
    # Gallery in identity order (ties by index): each identity is one contiguous segment.
    perm = np.argsort(gcode, kind="stable")
    seg = gcode[perm].astype(np.intp)
    seg_end = np.searchsorted(seg, np.arange(num_ids), side="right") - 1
    seg_start = np.searchsorted(seg, np.arange(num_ids), side="left")
    cam_p = gcams[perm]
    qcode = np.full(m, -1, dtype=np.int64)
    if num_ids:
        pos = np.minimum(np.searchsorted(labels, qids), num_ids - 1)
        qcode = np.where(labels[pos] == qids, pos, -1)

    hist = np.zeros(topk)
    num_valid = 0
    rows_per_chunk = _chunk_rows(chunk_size, _SGS_CHUNK_ELEMENTS, draws * n)
    for lo in range(0, m, rows_per_chunk):
        hi = min(m, lo + rows_per_chunk)
        # Drawn for every query, valid or not, so the stream does not depend on chunking.
        u = rng.random((hi - lo, draws, num_ids))
        if n == 0:
            continue
        block = dist[lo:hi][:, perm].astype(fdtype, copy=False)
        _check_no_nan(block)
        qc = qcode[lo:hi, None]
        same_cam = cam_p[None, :] == qcams[lo:hi, None]
        if separate_camera_set:
            keep = ~same_cam
        else:
            keep = ~((seg[None, :] == qc) & same_cam)
        match = keep & (seg[None, :] == qc)
        valid = match.any(axis=1)
        if not valid.any():
            continue
        rows = np.flatnonzero(valid)
        keep, block, u, qc = keep[rows], block[rows], u[rows], qcode[lo:hi][rows]
        num_valid += len(rows)

        # Rank of each remaining item within its identity, and remaining items per identity.
        cum = np.cumsum(keep, axis=1, dtype=np.int32)
        before_seg = np.where(seg_start > 0, cum[:, seg_start - 1], 0)
        count = cum[:, seg_end] - before_seg
        within = cum - 1 - before_seg[:, seg]
        # min() guards against u * count rounding up to count.
        last = np.maximum(count - 1, 0)[:, None, :]
        pick = np.minimum((u * count[:, None, :]).astype(np.int32), last)
        chosen = keep[:, None, :] & (within[:, None, :] == pick[:, :, seg])

        # The kept true match of each draw: the pick of the query's own identity.
        ar = np.arange(len(rows))
        own = np.argmax(chosen & (seg[None, None, :] == qc[:, None, None]), axis=2)
        d_own = block[ar[:, None], own]
        g_own = perm[own]
        closer = (block[:, None, :] < d_own[:, :, None]) | (
            (block[:, None, :] == d_own[:, :, None]) & (perm[None, None, :] < g_own[:, :, None])
        )
        position = np.count_nonzero(chosen & closer, axis=2).ravel()
        hist += np.bincount(position[position < topk], minlength=topk)[:topk] / draws

    if num_valid == 0:
        logger.warning("cmc: no query has a true match in the gallery; returning zeros")
        return np.zeros(topk)
    return np.cumsum(hist) / num_valid


# --------------------------------------------------------------------------------------------
# Public API


def mean_ap(
    distmat: ArrayLike,
    query_ids: Optional[ArrayLike] = None,
    gallery_ids: Optional[ArrayLike] = None,
    query_cams: Optional[ArrayLike] = None,
    gallery_cams: Optional[ArrayLike] = None,
    *,
    chunk_size: Optional[int] = None,
) -> float:
    """Mean average precision over the queries that have a true match.

    AP of a query is the mean, over its true matches, of the precision at the match's rank
    (non-interpolated; equal to scikit-learn's ``average_precision_score`` with scores
    ``-distance`` when no distances tie; ties follow the stable ranking instead).

    Args:
        distmat: (num_queries, num_gallery) distances, smaller is closer.
        query_ids: identity of each query; default ``arange(num_queries)``.
        gallery_ids: identity of each gallery item; default ``arange(num_gallery)``.
        query_cams: camera of each query; default all 0.
        gallery_cams: camera of each gallery item; default all 1.
        chunk_size: queries processed at a time; default bounds temporaries to ~256 MB.

    Returns:
        mAP as a fraction in [0, 1]; 0.0 when no query has a true match.
    """
    dist, qids, gids, qcams, gcams = _prepare(
        distmat, query_ids, gallery_ids, query_cams, gallery_cams
    )
    return _ap_from_ranks(_match_ranks(dist, qids, gids, qcams, gcams, False, chunk_size))


def cmc(
    distmat: ArrayLike,
    query_ids: Optional[ArrayLike] = None,
    gallery_ids: Optional[ArrayLike] = None,
    query_cams: Optional[ArrayLike] = None,
    gallery_cams: Optional[ArrayLike] = None,
    topk: int = 100,
    separate_camera_set: bool = False,
    single_gallery_shot: bool = False,
    first_match_break: bool = False,
    rng: RngLike = None,
    *,
    chunk_size: Optional[int] = None,
) -> np.ndarray:
    """Cumulative match characteristic: fraction of valid queries matched within each rank.

    Per valid query, among its remaining gallery items in ranking order: with
    ``first_match_break`` the first true match adds 1 at its position; otherwise each true match
    with j true matches before it, at position k, adds 1 / (number of true matches) at k - j.
    Positions >= ``topk`` add nothing. The result is the cumulative sum divided by the number of
    valid queries.

    Args:
        distmat, query_ids, gallery_ids, query_cams, gallery_cams: as in :func:`mean_ap`.
        topk: length of the returned curve.
        separate_camera_set: also ignore every gallery item from the query's camera.
        single_gallery_shot: average over ``SINGLE_GALLERY_SHOT_DRAWS`` (10) draws, each keeping
            one remaining gallery item per identity, each weighted 1/10. The single kept true
            match then adds 1/10 at its position, whatever ``first_match_break`` says.
        first_match_break: count only the first true match (see above).
        rng: the random source of ``single_gallery_shot``: a ``numpy.random.Generator``, an int
            seed, or None for seed 0. Exactly ``rng.random((num_queries, 10, num_ids))`` is drawn
            (in query order, one query chunk at a time, so chunking does not change it), where
            ``num_ids`` counts the distinct gallery identities in ascending order; in draw r of
            query q, identity k keeps its ``floor(u * c)``-th remaining item in gallery index
            order, with ``u = U[q, r, k]`` and c its number of remaining items.
        chunk_size: queries processed at a time; default bounds temporaries to ~256 MB.

    Returns:
        float64 array of length ``topk`` with values in [0, 1]; zeros when no query is valid.
    """
    topk = _check_positive(topk, "topk")
    dist, qids, gids, qcams, gcams = _prepare(
        distmat, query_ids, gallery_ids, query_cams, gallery_cams
    )
    if single_gallery_shot:
        return _cmc_single_gallery_shot(
            dist, qids, gids, qcams, gcams, bool(separate_camera_set), topk, _make_rng(rng),
            chunk_size,
        )
    ranks = _match_ranks(
        dist, qids, gids, qcams, gcams, bool(separate_camera_set), chunk_size,
        bool(first_match_break),
    )
    return _cmc_from_ranks(ranks, topk, bool(first_match_break))


def evaluate_rank(
    distmat: ArrayLike,
    query_ids: ArrayLike,
    gallery_ids: ArrayLike,
    query_cams: ArrayLike,
    gallery_cams: ArrayLike,
    cmc_config: str = "market1501",
    cmc_topk: Sequence[int] = (1, 5, 10),
    max_rank: int = 100,
    *,
    rng: RngLike = None,
    chunk_size: Optional[int] = None,
) -> Dict[str, Any]:
    """mAP and CMC of one distance matrix: the single metric entry of every report.

    Args:
        distmat, query_ids, gallery_ids, query_cams, gallery_cams: as in :func:`mean_ap`.
        cmc_config: a key of :data:`CMC_CONFIGS` ('market1501', 'cuhk03' or 'allshots').
        cmc_topk: ranks reported as ``'top{k}'``; each in 1..max_rank.
        max_rank: length of the returned CMC curve.
        rng: random source of the single-gallery-shot CMC ('cuhk03'); see :func:`cmc`.
        chunk_size: queries processed at a time; default bounds temporaries to ~256 MB.

    Returns:
        ``{'mAP': float, 'top1': float, ..., 'cmc': [float] * max_rank,
        'num_valid_queries': int}``, values as fractions in [0, 1]. With no valid query, mAP and
        the curve are 0 and ``num_valid_queries`` is 0.
    """
    if cmc_config not in CMC_CONFIGS:
        raise ConfigError(f"unknown cmc_config {cmc_config!r}; choose from {sorted(CMC_CONFIGS)}")
    max_rank = _check_positive(max_rank, "max_rank")
    topks = [_check_positive(k, "cmc_topk entry") for k in cmc_topk]
    too_deep = [k for k in topks if k > max_rank]
    if too_deep:
        raise ConfigError(f"cmc_topk {too_deep} exceeds max_rank {max_rank}")
    config = CMC_CONFIGS[cmc_config]
    dist, qids, gids, qcams, gcams = _prepare(
        distmat, query_ids, gallery_ids, query_cams, gallery_cams
    )

    ranks = _match_ranks(dist, qids, gids, qcams, gcams, False, chunk_size)
    m_ap = _ap_from_ranks(ranks)
    if config["single_gallery_shot"]:
        curve = _cmc_single_gallery_shot(
            dist, qids, gids, qcams, gcams, config["separate_camera_set"], max_rank,
            _make_rng(rng), chunk_size,
        )
    else:
        if config["separate_camera_set"]:
            ranks = _match_ranks(
                dist, qids, gids, qcams, gcams, True, chunk_size, config["first_match_break"]
            )
        curve = _cmc_from_ranks(ranks, max_rank, config["first_match_break"])

    results: Dict[str, Any] = {"mAP": m_ap}
    for k in topks:
        results[f"top{k}"] = float(curve[k - 1])
    results["cmc"] = [float(v) for v in curve]
    results["num_valid_queries"] = ranks.num_valid
    return results


def format_results(results: Dict[str, Any], title: str) -> str:
    """An aligned text table of mAP and the top-k values (percent, 1 decimal) for logs.

    Args:
        results: a dict as returned by :func:`evaluate_rank`.
        title: first line of the table, e.g. ``'Market-1501, first stage'``.
    """
    rows = []
    if "mAP" in results:
        rows.append(("mAP", f"{100.0 * results['mAP']:.1f}%"))
    topk_keys = sorted(
        (k for k in results if k.startswith("top") and k[3:].isdigit()), key=lambda k: int(k[3:])
    )
    rows.extend((f"top-{k[3:]}", f"{100.0 * results[k]:.1f}%") for k in topk_keys)
    if "num_valid_queries" in results:
        rows.append(("queries", str(results["num_valid_queries"])))
    name_width = max((len(name) for name, _ in rows), default=0)
    value_width = max((len(value) for _, value in rows), default=0)
    lines = [title] + [f"  {name:<{name_width}}  {value:>{value_width}}" for name, value in rows]
    return "\n".join(lines)
