"""mAP and Market-1501 CMC straight from features, in bounded memory, for very large galleries.

:func:`evaluate_features_streaming` returns what
``evaluate_rank(pairwise_distance(qf, gf), ..., cmc_config='market1501')`` returns, without ever
holding the query x gallery distance matrix: the squared Euclidean distances are computed one
(query chunk x gallery chunk) block at a time and reduced at once to counts.

How the exact ranks are found. The rank of a true match m of query q among q's remaining gallery
items is 1 + (true matches of q ranked before m) + (remaining items of other identities g with
(d[q, g], g) < (d[q, m], m)). The first term needs only the same-identity pairs, which are few:
their distances are computed first, from just those gallery rows. The second is a sum over gallery chunks, and in a
chunk only items no farther than q's farthest match can count, so each query row keeps just
those, sorts them and counts with a binary search. Items of q's own identity (its matches and its
ignored same-camera items) are excluded from the chunk counts by setting their chunk distances to
+inf. Equal distances are ordered by gallery index, exactly as :mod:`reid.evaluation_metrics.ranking`.

Numerical note: the distances use the float32 formula of ``reid.evaluators.pairwise_distance``
(``||q||^2 + ||g||^2 - 2 q.g`` through ``torch.addmm``), but a BLAS may round an entry of a
small product differently from the same entry of a full-matrix product (by an ulp). The ranking
is therefore identical to ``evaluate_rank(pairwise_distance(...))`` except where an item of
another identity lies within such rounding of a true match; with features whose float32
distances are exact (e.g. small dyadic values) the results are identical.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np
import torch

from reid.errors import ConfigError
from reid.evaluation_metrics.ranking import (
    _ap_from_ranks,
    _check_positive,
    _cmc_from_ranks,
    _label_array,
    _MatchRanks,
    _same_id_pairs,
)

__all__ = ["evaluate_features_streaming"]

ArrayLike = Any  # numpy array (memmaps included), torch tensor, or nested sequence

# Gallery rows whose squared norms are computed at a time (bounds that temporary to ~32 MB at
# 2,048 dimensions).
_NORM_ROWS = 4096


def _features(x: ArrayLike, name: str) -> ArrayLike:
    """``x`` as a 2-D torch tensor or numpy array, left in place (no copy of a large gallery)."""
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (items x dimensions), got shape {tuple(x.shape)}")
    return x


def _labels(x: ArrayLike, length: int, name: str) -> np.ndarray:
    """Identities or cameras as a 1-D int64 array of ``length``."""
    if x is None:
        raise ValueError(f"{name} is required")
    return _label_array(x, length, np.zeros(0, dtype=np.int64), name)


def _as_float32(part: ArrayLike, name: str) -> torch.Tensor:
    """A float32 CPU tensor of ``part`` (no copy when it already is one); ValueError on NaN/inf."""
    if isinstance(part, torch.Tensor):
        block = part.detach().to(device="cpu", dtype=torch.float32)
    elif part.dtype == np.float32 and part.flags.writeable and part.flags.c_contiguous:
        block = torch.from_numpy(part)
    else:
        block = torch.from_numpy(np.array(part, dtype=np.float32))
    # max/min propagate NaN and expose infinities without a temporary of the block's size.
    if block.numel() and not (bool(torch.isfinite(block.max())) and bool(torch.isfinite(block.min()))):
        raise ValueError(f"{name} contains NaN or infinite values")
    return block


def _take(x: ArrayLike, index: np.ndarray, name: str) -> torch.Tensor:
    """Rows ``index`` of ``x`` as a float32 tensor."""
    part = x[torch.from_numpy(index)] if isinstance(x, torch.Tensor) else x[index]
    return _as_float32(part, name)


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    """Squared row norms (pairwise_distance's reduction), a few thousand rows at a time."""
    if x.shape[0] == 0:
        return torch.zeros(0)
    return torch.cat([x[s:s + _NORM_ROWS].pow(2).sum(1) for s in range(0, x.shape[0], _NORM_ROWS)])


def _distance_block(q: torch.Tensor, qq: torch.Tensor, g: torch.Tensor, gg: torch.Tensor) -> np.ndarray:
    """Squared Euclidean distances of ``q`` rows to ``g`` rows (pairwise_distance's formula)."""
    block = qq[:, None] + gg[None, :]
    block.addmm_(q, g.t(), beta=1.0, alpha=-2.0)
    return block.numpy()


def _match_distances(
    query_features: torch.Tensor,
    gallery_features: ArrayLike,
    query: np.ndarray,
    gal: np.ndarray,
    query_chunk: int,
    gallery_chunk: int,
) -> np.ndarray:
    """Distances of the pairs ``zip(query, gal)`` (``query`` ascending), a query chunk at a time.

    ``query_features`` is the float32 query matrix; only the gallery rows named in ``gal`` are read.
    """
    d = np.empty(len(query), dtype=np.float32)
    queries = np.unique(query)
    for c in range(0, len(queries), query_chunk):
        chunk = queries[c:c + query_chunk]
        lo = np.searchsorted(query, chunk[0], side="left")
        hi = np.searchsorted(query, chunk[-1], side="right")
        q = query_features[torch.from_numpy(chunk)]
        qq = _sq_norms(q)
        rows = np.searchsorted(chunk, query[lo:hi])
        cols, col_pos = np.unique(gal[lo:hi], return_inverse=True)
        # A handful of identities can own much of the gallery: read their columns chunk-wise too.
        for c0 in range(0, len(cols), gallery_chunk):
            g = _take(gallery_features, cols[c0:c0 + gallery_chunk], "gallery_features")
            block = _distance_block(q, qq, g, _sq_norms(g))
            sel = np.flatnonzero((col_pos >= c0) & (col_pos < c0 + gallery_chunk))
            d[lo + sel] = block[rows[sel], col_pos[sel] - c0]
    return d


def evaluate_features_streaming(
    query_features: ArrayLike,
    gallery_features: ArrayLike,
    query_ids: ArrayLike,
    gallery_ids: ArrayLike,
    query_cams: ArrayLike,
    gallery_cams: ArrayLike,
    gallery_chunk: int = 65536,
    query_chunk: int = 256,
    max_rank: int = 100,
    cmc_topk: Sequence[int] = (1, 5, 10),
) -> Dict[str, Any]:
    """mAP and first-match-break CMC of features, never forming the full distance matrix.

    Returns the same dict as ``evaluate_rank(pairwise_distance(query_features, gallery_features),
    query_ids, gallery_ids, query_cams, gallery_cams, cmc_config='market1501', cmc_topk=cmc_topk,
    max_rank=max_rank)``: squared Euclidean distances, gallery items with the query's identity
    AND camera ignored, equal distances ranked by gallery index, queries without a true match
    skipped (see the module docstring for the one float-rounding caveat). Memory beyond the
    inputs is dominated by one float32 distance block, ``4 * query_chunk * gallery_chunk`` bytes
    (64 MiB at the defaults), plus a float32 copy of one gallery chunk when ``gallery_features``
    is not already a float32 tensor or a writable C-ordered float32 array (e.g. a read-only
    ``numpy.memmap``); time is dominated by the ``num_query x num_gallery x dim`` matrix product.

    Args:
        query_features: (num_query, dim) features; torch tensor, numpy array or sequence.
        gallery_features: (num_gallery, dim) features; a tensor or any numpy array, including a
            ``numpy.memmap`` of a gallery larger than memory (read one chunk at a time).
        query_ids, gallery_ids: identity of each query / gallery item (integers).
        query_cams, gallery_cams: camera of each query / gallery item (integers).
        gallery_chunk: gallery items per distance block.
        query_chunk: queries per distance block.
        max_rank: length of the returned CMC curve.
        cmc_topk: ranks reported as ``'top{k}'``; each in 1..max_rank.

    Returns:
        ``{'mAP': float, 'top1': float, ..., 'cmc': [float] * max_rank,
        'num_valid_queries': int}``, values as fractions in [0, 1].

    Raises:
        ConfigError: a chunk size, ``max_rank`` or ``cmc_topk`` entry is not a positive integer,
            or a ``cmc_topk`` entry exceeds ``max_rank``.
        ValueError: malformed shapes or labels, or NaN / infinite features.
    """
    gallery_chunk = _check_positive(gallery_chunk, "gallery_chunk")
    query_chunk = _check_positive(query_chunk, "query_chunk")
    max_rank = _check_positive(max_rank, "max_rank")
    topks = [_check_positive(k, "cmc_topk entry") for k in cmc_topk]
    too_deep = [k for k in topks if k > max_rank]
    if too_deep:
        raise ConfigError(f"cmc_topk {too_deep} exceeds max_rank {max_rank}")
    qf = _features(query_features, "query_features")
    gf = _features(gallery_features, "gallery_features")
    num_query, num_gallery = int(qf.shape[0]), int(gf.shape[0])
    if num_query and num_gallery and qf.shape[1] != gf.shape[1]:
        raise ValueError(f"query_features have {qf.shape[1]} dimensions, gallery_features {gf.shape[1]}")
    qids = _labels(query_ids, num_query, "query_ids")
    gids = _labels(gallery_ids, num_gallery, "gallery_ids")
    qcams = _labels(query_cams, num_query, "query_cams")
    gcams = _labels(gallery_cams, num_gallery, "gallery_cams")

    ranks = _streaming_match_ranks(qf, gf, qids, gids, qcams, gcams, gallery_chunk, query_chunk)
    curve = _cmc_from_ranks(ranks, max_rank, first_match_break=True)
    results: Dict[str, Any] = {"mAP": _ap_from_ranks(ranks)}
    for k in topks:
        results[f"top{k}"] = float(curve[k - 1])
    results["cmc"] = [float(v) for v in curve]
    results["num_valid_queries"] = ranks.num_valid
    return results


def _streaming_match_ranks(
    qf: ArrayLike,
    gf: ArrayLike,
    qids: np.ndarray,
    gids: np.ndarray,
    qcams: np.ndarray,
    gcams: np.ndarray,
    gallery_chunk: int,
    query_chunk: int,
) -> _MatchRanks:
    """Exact 1-based rank of every true match, as ranking._match_ranks, from features."""
    num_query, num_gallery = len(qids), len(gids)
    same_q, same_g = _same_id_pairs(qids, gids)  # sorted by query
    is_match = gcams[same_g] != qcams[same_q]
    query, gal = same_q[is_match], same_g[is_match]
    empty = np.zeros(0, dtype=np.int64)
    if len(query) == 0:
        return _MatchRanks(empty, empty, empty, num_query)

    q_all = _as_float32(qf, "query_features")
    d = _match_distances(q_all, gf, query, gal, query_chunk, gallery_chunk)
    # Matches in ranking order within each query: (distance, gallery index).
    idx = np.lexsort((gal, d, query))
    query, gal, d = query[idx], gal[idx], d[idx]
    starts = np.searchsorted(query, np.arange(num_query + 1), side="left")
    order = np.arange(len(query)) - starts[query]

    valid = np.flatnonzero(starts[1:] > starts[:-1])  # queries with a true match, ascending
    threshold = d[starts[valid + 1] - 1]  # each valid query's farthest match
    q_valid = q_all[torch.from_numpy(valid)]
    qq_valid = _sq_norms(q_valid)
    # Same-identity items of the valid queries, by gallery index, as (row among the valid
    # queries, gallery index): the chunk counts leave them out.
    row_of = np.full(num_query, -1, dtype=np.int64)
    row_of[valid] = np.arange(len(valid))
    keep = row_of[same_q] >= 0
    excl_row, excl_col = row_of[same_q[keep]], same_g[keep]
    by_col = np.argsort(excl_col, kind="stable")
    excl_row, excl_col = excl_row[by_col], excl_col[by_col]

    before = np.zeros(len(query), dtype=np.int64)  # other-identity items ranked before each match
    for g0 in range(0, num_gallery, gallery_chunk):
        g1 = min(num_gallery, g0 + gallery_chunk)
        g = _as_float32(gf[g0:g1], "gallery_features")
        gg = _sq_norms(g)
        e_lo, e_hi = np.searchsorted(excl_col, [g0, g1], side="left")
        rows, cols = excl_row[e_lo:e_hi], excl_col[e_lo:e_hi] - g0
        for r0 in range(0, len(valid), query_chunk):
            r1 = min(len(valid), r0 + query_chunk)
            block = _distance_block(q_valid[r0:r1], qq_valid[r0:r1], g, gg)
            inside = (rows >= r0) & (rows < r1)
            block[rows[inside] - r0, cols[inside]] = np.inf
            for r in range(r1 - r0):
                q = int(valid[r0 + r])
                _count_row(block[r], threshold[r0 + r], g0, d, gal, starts[q], starts[q + 1], before)
    rank = before + order + 1
    return _MatchRanks(query, order, rank, num_query)


def _count_row(
    row: np.ndarray,
    threshold: float,
    g0: int,
    d: np.ndarray,
    gal: np.ndarray,
    s: int,
    e: int,
    before: np.ndarray,
) -> None:
    """Add to ``before[s:e]`` the items of this row's chunk that precede each match.

    ``row`` holds one query's distances to gallery items ``g0 ..``, +inf at its own identity;
    ``d[s:e]`` / ``gal[s:e]`` are its matches in ranking order. An item precedes match m when
    (distance, gallery index) < (d_m, m).
    """
    cols = np.flatnonzero(row <= threshold)
    if len(cols) == 0:
        return
    vals = row[cols]
    sorted_vals = np.sort(vals)
    dm = d[s:e]
    below = np.searchsorted(sorted_vals, dm, side="left")
    upto = np.searchsorted(sorted_vals, dm, side="right")
    before[s:e] += below
    tied = np.flatnonzero(upto > below)
    if len(tied):
        # Equal distances: only items with a smaller gallery index precede the match.
        local = gal[s + tied] - g0
        equal = vals[None, :] == dm[tied, None]
        before[s + tied] += np.count_nonzero(equal & (cols[None, :] < local[:, None]), axis=1)
