"""k-reciprocal re-ranking (Zhong et al., CVPR 2017, "Re-ranking Person Re-identification with
k-reciprocal Encoding"), an optional post-processing of a query x gallery distance matrix.

Input convention: the three distance matrices hold squared Euclidean distances, as
:func:`reid.evaluators.pairwise_distance` returns them (the convention of the widely used
implementations). The probe set is all queries and all gallery items together (N = Nq + Ng).

Steps (paper section 3 and 4):

1. ``D`` is the N x N matrix ``[[q_q, q_g], [q_g^T, g_g]]``. Each column is divided by its
   maximum and the result transposed: row ``p`` of the normalised matrix ``d`` is ``D[:, p] /
   max(D[:, p])``. For a symmetric ``D`` that is each probe's row divided by its largest distance.
2. ``N(p, k)`` is the ``k + 1`` items nearest to ``p`` under ``d`` (``p`` itself included, ties
   broken by index); ``R(p, k) = {g in N(p, k) : p in N(g, k)}`` (k-reciprocal neighbours).
3. ``R*(p, k1) = R(p, k1)`` united with ``R(q, k1/2)`` for each ``q`` in ``R(p, k1)`` whose
   overlap with ``R(p, k1)`` is more than 2/3 of ``|R(q, k1/2)|`` (``k1/2`` rounded half to
   even, as numpy does: 20 -> 10, 5 -> 2).
4. ``V[p, g] = exp(-d[p, g])`` for ``g`` in ``R*(p, k1)``, 0 elsewhere; each row normalised to
   sum 1.
5. Local query expansion: ``V[p] <- mean of V[g] over g in N(p, k2 - 1)`` (the ``k2`` nearest,
   normally ``p`` first); ``k2 = 1`` leaves ``V`` unchanged, also for a ``p`` with exact
   duplicates of lower index (ranked before ``p`` itself).
6. Jaccard distance ``1 - sum_j min(V[p, j], V[g, j]) / sum_j max(V[p, j], V[g, j])``.
7. Final distance ``(1 - lambda) * jaccard + lambda * d`` for the query rows and gallery columns.

Everything is computed in float64 (float32 inputs are read as they are, block by block). The
N x N matrices are never materialised: ``V`` is a sparse matrix and the neighbour ranks are found
block by block, so the memory beyond the inputs is O(N * k1 + nnz(V)) plus the Nq x Ng result.
"""
from __future__ import annotations

import logging
from typing import Any, List, Tuple

import numpy as np
import scipy.sparse as sp
import torch

from reid.errors import ConfigError
from reid.evaluators import pairwise_distance

logger = logging.getLogger(__name__)

__all__ = ["re_ranking", "rerank_distmat"]

# Rows of the normalised distance matrix ranked at once (each row is N float64 + N int64).
_RANK_CHUNK_ELEMENTS = 1 << 24


def _as_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    # float32 input stays float32 (the gallery x gallery matrix can be large); blocks taken from
    # it are converted to float64.
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D distance matrix, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    return arr


def _check_params(k1: int, k2: int, lambda_value: float) -> None:
    if isinstance(k1, bool) or not isinstance(k1, (int, np.integer)) or k1 < 1:
        raise ConfigError(f"re-ranking k1 must be a positive integer, got {k1!r}")
    if isinstance(k2, bool) or not isinstance(k2, (int, np.integer)) or k2 < 1:
        raise ConfigError(f"re-ranking k2 must be a positive integer, got {k2!r}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ConfigError(f"re-ranking lambda_value must be in [0, 1], got {lambda_value!r}")


class _NormalisedDistances:
    """Row access to the normalised N x N matrix ``d`` (step 1) without building it."""

    def __init__(self, q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray) -> None:
        self.q_g = q_g
        self.q_q = q_q
        self.g_g = g_g
        self.num_query, self.num_gallery = q_g.shape
        self.num_all = self.num_query + self.num_gallery
        # Maximum of each column of D: query column i is [q_q[:, i]; q_g[i, :]], gallery column j
        # is [q_g[:, j]; g_g[:, j]].
        col_max = np.empty(self.num_all)
        col_max[: self.num_query] = _max_or_zero(self.q_q, 0, self.num_query)
        col_max[: self.num_query] = np.maximum(col_max[: self.num_query], _max_or_zero(self.q_g, 1, self.num_query))
        col_max[self.num_query:] = np.maximum(
            _max_or_zero(self.q_g, 0, self.num_gallery), _max_or_zero(self.g_g, 0, self.num_gallery)
        )
        # An all-zero column (every item identical) stays zero instead of becoming NaN.
        col_max[col_max <= 0] = 1.0
        self.col_max = col_max

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of ``d`` (row p = column p of D divided by its maximum)."""
        nq = self.num_query
        parts = []
        if start < nq:
            a, b = start, min(stop, nq)
            parts.append(np.concatenate([self.q_q[:, a:b].T, self.q_g[a:b, :]], axis=1))
        if stop > nq:
            a, b = max(start, nq) - nq, stop - nq
            parts.append(np.concatenate([self.q_g[:, a:b].T, self.g_g[:, a:b].T], axis=1))
        block = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return _clip(block) / self.col_max[start:stop, None]

    def entries(self, p: int, cols: np.ndarray) -> np.ndarray:
        """``d[p, cols]``, i.e. ``D[cols, p] / max(D[:, p])``."""
        nq = self.num_query
        out = np.empty(len(cols))
        is_q = cols < nq
        if p < nq:
            out[is_q] = self.q_q[cols[is_q], p]
            out[~is_q] = self.q_g[p, cols[~is_q] - nq]
        else:
            out[is_q] = self.q_g[cols[is_q], p - nq]
            out[~is_q] = self.g_g[cols[~is_q] - nq, p - nq]
        return _clip(out) / self.col_max[p]


def _clip(a: np.ndarray) -> np.ndarray:
    # Rounding can leave squared distances a hair below 0; a distance is never negative.
    return np.maximum(a.astype(np.float64, copy=False), 0.0)


def _max_or_zero(a: np.ndarray, axis: int, length: int) -> np.ndarray:
    return a.max(axis=axis).astype(np.float64) if a.shape[axis] > 0 else np.zeros(length)


def _nearest(dist: _NormalisedDistances, k: int) -> np.ndarray:
    """N x min(k, N) indices of each row's nearest items, by distance then index."""
    n = dist.num_all
    k = min(k, n)
    out = np.empty((n, k), dtype=np.int64)
    chunk = max(1, _RANK_CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        out[start:stop] = _smallest_k(dist.rows(start, stop), k)
    return out


def _smallest_k(block: np.ndarray, k: int) -> np.ndarray:
    """Per row, the indices of the k smallest values in ascending order, equal values by index:
    the first k of a stable argsort, in O(row length) per row instead of a full sort."""
    if k >= block.shape[1]:
        return np.argsort(block, axis=1, kind="stable")[:, :k]
    part = np.argpartition(block, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(block, part, axis=1)
    # argpartition picks arbitrarily among values equal to the k-th smallest; only rows without
    # such a tie at the boundary can use its choice.
    kth = vals.max(axis=1)
    unique_cut = (block <= kth[:, None]).sum(axis=1) == k
    order = np.lexsort((part, vals), axis=-1)
    out = np.take_along_axis(part, order, axis=1)
    for r in np.flatnonzero(~unique_cut):
        out[r] = np.argsort(block[r], kind="stable")[:k]
    return out


def _reciprocal_masks(ranks: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """``R(p, k)`` for every p as ``(forward, mask)``: ``forward[p]`` is N(p, k) (the first
    k + 1 ranks) and ``mask[p, a]`` says whether p is among the first k + 1 ranks of
    ``forward[p, a]``, so ``R(p, k) = forward[p, mask[p]]``."""
    n = ranks.shape[0]
    forward = ranks[:, : k + 1]
    mask = np.empty(forward.shape, dtype=bool)
    chunk = max(1, _RANK_CHUNK_ELEMENTS // max(forward.shape[1] ** 2, 1))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        backward = ranks[forward[start:stop], : k + 1]
        mask[start:stop] = (backward == np.arange(start, stop)[:, None, None]).any(axis=2)
    return forward, mask


def _expanded_sets(ranks: np.ndarray, k1: int) -> List[np.ndarray]:
    """``R*(p, k1)`` for every p, each sorted (step 3)."""
    n = ranks.shape[0]
    half = int(np.around(k1 / 2.0))
    forward, mask = _reciprocal_masks(ranks, k1)
    half_forward, half_mask = _reciprocal_masks(ranks, half)
    in_r = np.zeros(n, dtype=bool)
    expanded = []
    for p in range(n):
        members = forward[p, mask[p]]
        # Row a of cand / cand_mask is R(members[a], k1 / 2), padded.
        cand = half_forward[members]
        cand_mask = half_mask[members]
        in_r[members] = True
        overlap = (in_r[cand] & cand_mask).sum(axis=1)
        in_r[members] = False
        # overlap > 2/3 |R(q, k1/2)|, in integers.
        accepted = 3 * overlap > 2 * cand_mask.sum(axis=1)
        extra = cand[accepted][cand_mask[accepted]]
        expanded.append(np.unique(np.concatenate([members, extra])))
    return expanded


def re_ranking(
    q_g_dist: Any,
    q_q_dist: Any,
    g_g_dist: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-rank a query x gallery distance matrix with k-reciprocal encoding (see module doc).

    Args:
        q_g_dist: Nq x Ng squared Euclidean distances between queries and gallery items (numpy
            array or torch tensor), e.g. ``pairwise_distance(qf, gf)``.
        q_q_dist: Nq x Nq squared Euclidean distances among the queries.
        g_g_dist: Ng x Ng squared Euclidean distances among the gallery items.
        k1: size of the k-reciprocal neighbourhood (paper: 20).
        k2: size of the local query expansion; 1 disables it (paper: 6).
        lambda_value: weight of the normalised original distance in the result; 0 gives the
            pure Jaccard distance, 1 the normalised original distance (paper: 0.3).

    Returns:
        Nq x Ng float64 array of final distances (smaller = more similar).

    Raises:
        ConfigError: k1 or k2 not a positive integer, or lambda_value outside [0, 1].
        ValueError: matrices that are not 2-D, whose shapes disagree, or that hold NaN.
    """
    _check_params(k1, k2, lambda_value)
    q_g = _as_array(q_g_dist, "q_g_dist")
    q_q = _as_array(q_q_dist, "q_q_dist")
    g_g = _as_array(g_g_dist, "g_g_dist")
    nq, ng = q_g.shape
    if q_q.shape != (nq, nq) or g_g.shape != (ng, ng):
        raise ValueError(
            f"distance matrix shapes disagree: q_g {q_g.shape}, q_q {q_q.shape}, g_g {g_g.shape} "
            f"(expected ({nq}, {nq}) and ({ng}, {ng}))"
        )
    if nq == 0 or ng == 0:
        return np.zeros((nq, ng))
    lam = float(lambda_value)
    dist = _NormalisedDistances(q_g, q_q, g_g)
    n = dist.num_all
    original = dist.rows(0, nq)[:, nq:]
    if lam == 1.0:
        return original

    ranks = _nearest(dist, max(k1, k2) + 1)
    expanded = _expanded_sets(ranks, k1)

    # Step 4: sparse V, one row per probe.
    indptr = np.zeros(n + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(s) for s in expanded])
    indices = np.concatenate(expanded).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    data = np.empty(len(indices))
    for p, cols in enumerate(expanded):
        w = np.exp(-dist.entries(p, cols))
        data[indptr[p]:indptr[p + 1]] = w / w.sum()
    v = sp.csr_matrix((data, indices, indptr), shape=(n, n))

    # Step 5: V <- A V with A[p, N(p, k2 - 1)] = 1 / k2.
    if k2 > 1:
        k2_eff = min(k2, n)
        rows = np.repeat(np.arange(n), k2_eff)
        avg = sp.csr_matrix(
            (np.full(n * k2_eff, 1.0 / k2_eff), (rows, ranks[:, :k2_eff].ravel())), shape=(n, n)
        )
        v = (avg @ v).tocsr()
    v.eliminate_zeros()
    row_sums = np.asarray(v.sum(axis=1)).ravel()

    # Step 6: for each query p, sum_j min(V[p, j], V[g, j]) over the columns j where V[p] is
    # non-zero, gathered from V's columns; sum max = sum V[p] + sum V[g] - sum min.
    v_csc = v.tocsc()
    col_len = np.diff(v_csc.indptr)
    jaccard = np.empty((nq, ng))
    for p in range(nq):
        cols = v.indices[v.indptr[p]:v.indptr[p + 1]]
        vals = v.data[v.indptr[p]:v.indptr[p + 1]]
        lengths = col_len[cols]
        starts = v_csc.indptr[cols]
        # Positions of every stored entry of the selected columns, in one flat index array.
        pos = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        mins = np.minimum(np.repeat(vals, lengths), v_csc.data[pos])
        inter = np.bincount(v_csc.indices[pos], weights=mins, minlength=n)[nq:]
        union = row_sums[p] + row_sums[nq:] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            jaccard[p] = np.where(union > 0, 1.0 - inter / union, 1.0)
    return (1.0 - lam) * jaccard + lam * original


def rerank_distmat(
    query_features: Any,
    gallery_features: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-ranked query x gallery distances straight from features.

    Builds the three squared Euclidean distance matrices with
    :func:`reid.evaluators.pairwise_distance` and calls :func:`re_ranking`.

    Args:
        query_features: Nq x D query features (torch tensor or numpy array).
        gallery_features: Ng x D gallery features.
        k1, k2, lambda_value: as :func:`re_ranking`.

    Returns:
        Nq x Ng float64 array of re-ranked distances.
    """
    qf = torch.as_tensor(np.asarray(query_features) if not hasattr(query_features, "detach") else query_features)
    gf = torch.as_tensor(np.asarray(gallery_features) if not hasattr(gallery_features, "detach") else gallery_features)
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"features must be N x D with equal D, got {tuple(qf.shape)} and {tuple(gf.shape)}")
    qf = qf.detach().cpu()
    gf = gf.detach().cpu()
    logger.info("k-reciprocal re-ranking: %d queries, %d gallery items (k1=%d, k2=%d, lambda=%g)",
                qf.shape[0], gf.shape[0], k1, k2, lambda_value)
    return re_ranking(
        pairwise_distance(qf, gf).numpy(),
        pairwise_distance(qf, qf).numpy(),
        pairwise_distance(gf, gf).numpy(),
        k1=k1, k2=k2, lambda_value=lambda_value,
    )
