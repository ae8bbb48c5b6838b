"""The metrics of :mod:`reid.evaluation_metrics.ranking` computed without sorting whole rows.

The rank of a true match m of query q among q's remaining gallery items is 1 + the number of
remaining items g with (d[q, g], g) < (d[q, m], m). Only items no farther than q's last match can
precede a match, so each query sorts just those; AP and CMC follow from the ranks. The
single-gallery-shot CMC draws exactly the random numbers the per-query definition draws, for
blocks of queries at once. :func:`metrics` has the signature of the per-query form in ranking.py, which chooses between
the two and validates the inputs first.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

# Elements of one chunk's largest temporary: a float copy of the rows (8 bytes each), or the
# several (rows, draws, gallery) arrays of the single-gallery-shot CMC; ~256 MB in total.
_MAIN_CHUNK_ELEMENTS = 1 << 25
_SGS_CHUNK_ELEMENTS = 1 << 23


def _chunk_rows(chunk_size: Optional[int], elements: int, row_elements: int) -> int:
    """Queries per chunk: ``chunk_size`` if given, else as many as fit in ``elements``."""
    if chunk_size is not None:
        return chunk_size
    return max(1, elements // max(1, row_elements))


def _check_no_nan(block: np.ndarray) -> None:
    # np.min propagates NaN, and is cheaper than np.isnan(block).any().
    if block.size and np.isnan(block.min()):
        raise ValueError("distmat contains NaN")



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


def same_id_pairs(qids: np.ndarray, gids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
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


def match_ranks(
    dist: np.ndarray,
    qids: np.ndarray,
    gids: np.ndarray,
    qcams: np.ndarray,
    gcams: np.ndarray,
    separate_camera_set: bool,
    chunk_size: Optional[int],
    fdtype: np.dtype,
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
    query, gal = same_id_pairs(qids, gids)
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


def ap_from_ranks(ranks: _MatchRanks) -> float:
    """Mean over valid queries of the mean precision at the rank of each true match."""
    valid = ranks.num_matches > 0
    if not valid.any():
        return 0.0
    precision = (ranks.order + 1) / ranks.rank
    sums = np.bincount(ranks.query, weights=precision, minlength=len(ranks.num_matches))
    return float(np.mean(sums[valid] / ranks.num_matches[valid]))


def cmc_from_ranks(ranks: _MatchRanks, topk: int, first_match_break: bool) -> np.ndarray:
    """CMC curve (length ``topk``) from the exact ranks of the true matches."""
    num_valid = ranks.num_valid
    if num_valid == 0:
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


def cmc_single_gallery_shot(
    dist: np.ndarray,
    qids: np.ndarray,
    gids: np.ndarray,
    qcams: np.ndarray,
    gcams: np.ndarray,
    separate_camera_set: bool,
    topk: int,
    rng: np.random.Generator,
    chunk_size: Optional[int],
    fdtype: np.dtype,
    draws: int,
) -> Tuple[np.ndarray, int]:
    """(CMC where each of ``draws`` draws keeps one remaining gallery item per identity (see
    :func:`reid.evaluation_metrics.ranking.cmc`), number of valid queries)."""
    m, n = dist.shape
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
        return np.zeros(topk), 0
    return np.cumsum(hist) / num_valid, num_valid


def metrics(dist: np.ndarray, qids: np.ndarray, gids: np.ndarray, qcams: np.ndarray, gcams: np.ndarray, *,
            fdtype: np.dtype, want_ap: bool, cmc_config: Optional[Dict[str, bool]], topk: int,
            rng: np.random.Generator, chunk_size: Optional[int], draws: int) -> Tuple[float, Optional[np.ndarray], int]:
    """(mAP or 0.0 if not wanted, CMC curve of length ``topk`` in ``cmc_config`` or None, number of
    valid queries), with the signature of the per-query form in ranking.py."""
    m_ap, curve, ranks = 0.0, None, None
    if want_ap:
        ranks = match_ranks(dist, qids, gids, qcams, gcams, False, chunk_size, fdtype)
        m_ap = ap_from_ranks(ranks)
    if cmc_config is None:
        return m_ap, None, ranks.num_valid
    separate, first_match_break = cmc_config["separate_camera_set"], cmc_config["first_match_break"]
    if cmc_config["single_gallery_shot"]:
        curve, num_valid = cmc_single_gallery_shot(dist, qids, gids, qcams, gcams, separate, topk, rng,
                                                   chunk_size, fdtype, draws)
        return m_ap, curve, num_valid
    if ranks is None or separate:
        ranks = match_ranks(dist, qids, gids, qcams, gcams, separate, chunk_size, fdtype, first_match_break)
    return m_ap, cmc_from_ranks(ranks, topk, first_match_break), ranks.num_valid
