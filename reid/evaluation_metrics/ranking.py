"""Re-ID ranking metrics: mean average precision (mAP) and the CMC curve.

Every metric takes a query x gallery distance matrix and the identity and camera of each query
and gallery image. Conventions shared by all functions here:

* A gallery item is ignored for a query when it has the same identity AND the same camera.
* A query's ranking is a stable sort of its remaining gallery items by distance: equal distances
  are ordered by gallery index.
* A query with no true match (same identity, another camera) among its remaining items is
  skipped. When no query is valid, :func:`mean_ap` returns 0.0 and :func:`cmc` a zero curve
  (with a logged warning) instead of raising.
* Distances may be a numpy array or a torch tensor of any real dtype; NaN distances raise
  ``ValueError``. Identities and cameras must be integer-valued.

Each public function takes ``fast``: the per-query definitions below (``False``) or
:mod:`reid.evaluation_metrics.fast_ranking` (``True``), which counts each true match's rank
without sorting whole rows and gives the same numbers; by default matrices of 1,000 distances or
more take the fast form. :func:`_metrics` is the one place that chooses. :func:`evaluate_rank`
is the one entry every report goes through; :func:`format_results` turns its dict into a small
text table.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from reid.errors import ConfigError
from reid.evaluation_metrics import fast_ranking

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

ArrayLike = Any  # numpy array, torch tensor, or sequence
RngLike = Union[None, int, np.random.Generator]

# With fast=None, from this many distances on fast_ranking computes the metrics (2x faster here,
# 25x on Market-1501); below it both take about a millisecond and the definitions run as written.
_FAST_FROM_ELEMENTS = 1_000


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


def _check_chunk(chunk_size: Optional[int]) -> Optional[int]:
    return None if chunk_size is None else _check_positive(chunk_size, "chunk_size")


# --------------------------------------------------------------------------------------------
# The protocol, one query at a time


def _ranked_matches(row: np.ndarray, qid: int, qcam: int, gids: np.ndarray, gcams: np.ndarray,
                    separate_camera_set: bool) -> Tuple[np.ndarray, np.ndarray]:
    """One query's remaining gallery items in ranking order: (their gallery indices, whether each
    is a true match). Items with the query's identity AND camera are ignored; with
    ``separate_camera_set`` every item from the query's camera is."""
    keep = (gids != qid) | (gcams != qcam)
    if separate_camera_set:
        keep &= gcams != qcam
    items = np.flatnonzero(keep)
    items = items[np.argsort(row[items], kind="stable")]
    return items, gids[items] == qid


def _average_precision(is_match: np.ndarray) -> float:
    """Mean, over the true matches, of the precision at each one's rank."""
    ranks = np.flatnonzero(is_match) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def _plain_aps(dist, qids, gids, qcams, gcams) -> list:
    """AP of every query that has a true match."""
    aps = []
    for i in range(dist.shape[0]):
        is_match = _ranked_matches(dist[i], qids[i], qcams[i], gids, gcams, False)[1]
        if is_match.any():
            aps.append(_average_precision(is_match))
    return aps


def _plain_cmc(dist, qids, gids, qcams, gcams, topk: int, separate_camera_set: bool,
               single_gallery_shot: bool, first_match_break: bool, rng: np.random.Generator,
               draws: int) -> Tuple[np.ndarray, int]:
    """(The CMC curve as :func:`cmc` defines it, the number of valid queries), one query at a time."""
    hist = np.zeros(topk)
    num_valid = 0
    labels = np.unique(gids)
    for i in range(dist.shape[0]):
        u = rng.random((draws, len(labels))) if single_gallery_shot else None
        items, is_match = _ranked_matches(dist[i], qids[i], qcams[i], gids, gcams, separate_camera_set)
        if not is_match.any():
            continue
        num_valid += 1
        if single_gallery_shot:
            positions, weight = _single_shot_positions(items, is_match, gids, labels, u), 1.0 / len(u)
        elif first_match_break:
            positions, weight = np.flatnonzero(is_match)[:1], 1.0
        else:
            # A match with j matches before it counts at its position among the non-matches.
            hits = np.flatnonzero(is_match)
            positions, weight = hits - np.arange(len(hits)), 1.0 / len(hits)
        np.add.at(hist, positions[positions < topk], weight)
    return (np.cumsum(hist) / num_valid if num_valid else hist), num_valid


def _single_shot_positions(items: np.ndarray, is_match: np.ndarray, gids: np.ndarray, labels: np.ndarray,
                           u: np.ndarray) -> np.ndarray:
    """For each draw (row of ``u``): every identity keeps its ``floor(u * c)``-th remaining item in
    gallery index order (c: its number of remaining items); the position of the query's kept
    match among the kept items in ranking order."""
    code = np.searchsorted(labels, gids[items])
    by_index = np.lexsort((items, code))  # identity, then gallery index
    count = np.bincount(code, minlength=len(labels))
    within = np.empty(len(items), dtype=np.int64)
    within[by_index] = np.arange(len(items)) - (np.cumsum(count) - count)[code[by_index]]
    pick = np.minimum((u * count).astype(np.int64), count - 1)  # min(): u * c may round up to c
    kept = within[None, :] == pick[:, code]  # (draws, items in ranking order)
    own = np.argmax(kept & is_match[None, :], axis=1)
    return np.cumsum(kept, axis=1)[np.arange(len(u)), own] - 1


def _plain_metrics(dist: np.ndarray, qids: np.ndarray, gids: np.ndarray, qcams: np.ndarray,
                   gcams: np.ndarray, *, fdtype: np.dtype, want_ap: bool,
                   cmc_config: Optional[Dict[str, bool]], topk: int, rng: np.random.Generator,
                   chunk_size: Optional[int], draws: int) -> Tuple[float, Optional[np.ndarray], int]:
    """The metrics by the per-query definitions; the signature of
    :func:`reid.evaluation_metrics.fast_ranking.metrics` (``chunk_size`` is unused: one query
    at a time). Returns (mAP or 0.0 if not wanted, CMC curve or None, number of valid queries)."""
    dist = dist.astype(fdtype, copy=False)
    if np.isnan(dist).any():
        raise ValueError("distmat contains NaN")
    m_ap, curve, num_valid = 0.0, None, 0
    if want_ap:
        aps = _plain_aps(dist, qids, gids, qcams, gcams)
        m_ap, num_valid = (float(np.mean(aps)) if aps else 0.0), len(aps)
    if cmc_config is not None:
        curve, num_valid = _plain_cmc(dist, qids, gids, qcams, gcams, topk, rng=rng, draws=draws, **cmc_config)
    return m_ap, curve, num_valid


def _metrics(distmat: ArrayLike, query_ids: Optional[ArrayLike], gallery_ids: Optional[ArrayLike],
             query_cams: Optional[ArrayLike], gallery_cams: Optional[ArrayLike], *, want_ap: bool,
             cmc_config: Optional[Dict[str, bool]], topk: int, rng: RngLike,
             chunk_size: Optional[int], fast: Optional[bool]) -> Tuple[float, Optional[np.ndarray], int]:
    """The one switch between the two forms: (mAP, CMC curve, number of valid queries)."""
    dist, qids, gids, qcams, gcams = _prepare(distmat, query_ids, gallery_ids, query_cams, gallery_cams)
    chunk_size = _check_chunk(chunk_size)
    if fast is None:
        fast = dist.size >= _FAST_FROM_ELEMENTS
    form = fast_ranking.metrics if fast else _plain_metrics
    m_ap, curve, num_valid = form(dist, qids, gids, qcams, gcams, fdtype=_float_dtype(dist.dtype),
                                  want_ap=want_ap, cmc_config=cmc_config, topk=topk, rng=_make_rng(rng),
                                  chunk_size=chunk_size, draws=SINGLE_GALLERY_SHOT_DRAWS)
    if num_valid == 0:
        logger.warning("no query has a true match in the gallery; mAP and CMC are 0")
    return m_ap, curve, num_valid


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
    fast: Optional[bool] = None,
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
        fast: ``True`` for :mod:`reid.evaluation_metrics.fast_ranking`, ``False`` for the
            per-query definitions of this module, ``None`` to choose by size (fast from 1,000
            distances on). Both forms give the same numbers.

    Returns:
        mAP as a fraction in [0, 1]; 0.0 when no query has a true match.
    """
    return _metrics(distmat, query_ids, gallery_ids, query_cams, gallery_cams, want_ap=True, cmc_config=None,
                    topk=1, rng=None, chunk_size=chunk_size, fast=fast)[0]


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
    fast: Optional[bool] = None,
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
        fast: which form computes it; see :func:`mean_ap`.

    Returns:
        float64 array of length ``topk`` with values in [0, 1]; zeros when no query is valid.
    """
    topk = _check_positive(topk, "topk")
    config = dict(separate_camera_set=bool(separate_camera_set), single_gallery_shot=bool(single_gallery_shot),
                  first_match_break=bool(first_match_break))
    return _metrics(distmat, query_ids, gallery_ids, query_cams, gallery_cams, want_ap=False, cmc_config=config,
                    topk=topk, rng=rng, chunk_size=chunk_size, fast=fast)[1]


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
    fast: Optional[bool] = None,
) -> Dict[str, Any]:
    """mAP and CMC of one distance matrix: the single metric entry of every report.

    Args:
        distmat, query_ids, gallery_ids, query_cams, gallery_cams: as in :func:`mean_ap`.
        cmc_config: a key of :data:`CMC_CONFIGS` ('market1501', 'cuhk03' or 'allshots').
        cmc_topk: ranks reported as ``'top{k}'``; each in 1..max_rank.
        max_rank: length of the returned CMC curve.
        rng: random source of the single-gallery-shot CMC ('cuhk03'); see :func:`cmc`.
        chunk_size: queries processed at a time; default bounds temporaries to ~256 MB.
        fast: which form computes it; see :func:`mean_ap`.

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
    m_ap, curve, num_valid = _metrics(distmat, query_ids, gallery_ids, query_cams, gallery_cams, want_ap=True,
                                      cmc_config=CMC_CONFIGS[cmc_config], topk=max_rank, rng=rng,
                                      chunk_size=chunk_size, fast=fast)
    results: Dict[str, Any] = {"mAP": m_ap}
    for k in topks:
        results[f"top{k}"] = float(curve[k - 1])
    results["cmc"] = [float(v) for v in curve]
    results["num_valid_queries"] = num_valid
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
