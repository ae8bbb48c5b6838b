"""The second stage's scores for the square verification head, without running the head per pair.

:func:`reid.evaluators.score_candidates` dispatches here on the CPU. An eval-mode
``EltwiseSubEmbed('square')`` with BatchNorm and a 2-way classifier, read through the default
``softmax(logits)[:, 0]``, is ``sigmoid(sum_d v_d (q_d - g_d)^2 + c)``
(:func:`reid.models.embedding.folded_head` gives ``v`` and ``c``): one weighted squared distance
per (query, candidate) pair. :func:`folded_scores` computes those distances from sampled matrix
products over the pairs, so nothing is gathered per pair (docs/performance.md has the
measurements).
"""
from __future__ import annotations

import warnings

import torch

# A pair is scored again from its differences where the expansion's terms exceed this many times
# its distance (8: at most 3 bits more rounding than the differences).
CANCELLATION_RATIO = 8.0
_GATHER_ELEMENTS = 1 << 18  # float32 elements of one block of gathered candidates (1 MiB)


def folded_scores(qf: torch.Tensor, gf: torch.Tensor, top_idx: torch.Tensor, v: torch.Tensor, c: torch.Tensor,
                  rows: int = 256) -> torch.Tensor:
    """``sigmoid(sum_d v_d (qf[i]_d - gf[j]_d)^2 + c)`` for each query i and each candidate j in
    ``top_idx[i]``: (num_query, k), float32 CPU tensors in and out.

    The weighted distance is expanded about the queries' mean m as ``|q - m|^2_v + |g - m|^2_v -
    2 ((q - m) * v).(g - m)``; the cross terms come from ``torch.sparse.sampled_addmm`` with the
    pairs in gallery order, the gallery ``rows`` rows at a time (each block centred once into a
    cache-sized buffer). Centring keeps the terms near the distance's size for pooled ReLU
    features; a pair whose |v|-weighted terms still exceed ``CANCELLATION_RATIO`` times its
    distance is scored again from its differences, so no data makes the expansion cancel.
    """
    num_query, k = top_idx.shape
    num_gallery, dims = gf.shape
    centre = qf.mean(0)
    weights = (v, v.abs())  # the terms with v, and with |v| for their scale
    q_norms = _centred_norms(qf, centre, weights, rows)
    qv_t = torch.sub(qf, centre).mul_(v).t()
    flat = top_idx.reshape(-1)
    order = torch.argsort(flat.int(), stable=True)  # pairs in gallery order
    cand = flat[order]
    query_of = torch.div(order, k, rounding_mode="floor")
    crow = torch.cat([flat.new_zeros(1), torch.bincount(cand, minlength=num_gallery).cumsum(0)])
    bounds = crow.tolist()
    cross = torch.empty(cand.numel())
    g_norms = torch.empty(2, num_gallery)
    centred = torch.empty(min(rows, num_gallery), dims)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        for start in range(0, num_gallery, rows):
            stop = min(start + rows, num_gallery)
            first, last = bounds[start], bounds[stop]
            if first == last:
                continue  # no query has a candidate in this block
            block = torch.sub(gf[start:stop], centre, out=centred[:stop - start])
            squares = block * block
            for w, out in zip(weights, g_norms):
                torch.mv(squares, w, out=out[start:stop])
            pattern = torch.sparse_csr_tensor(crow[start:stop + 1] - first, query_of[first:last],
                                              torch.zeros(last - first), size=(stop - start, num_query),
                                              check_invariants=False)
            cross[first:last] = torch.sparse.sampled_addmm(pattern, block, qv_t, beta=0.0).values()
    dist = cross.mul_(-2.0).add_(g_norms[0, cand]).add_(q_norms[0, query_of])
    scale = q_norms[1].sqrt()[query_of].add_(g_norms[1].sqrt()[cand]).square_()
    risky = torch.nonzero(scale > CANCELLATION_RATIO * dist.abs()).squeeze(1)
    if risky.numel():
        dist[risky] = _weighted_sq_distances(qf, gf, query_of[risky], cand[risky], v)
    scores = torch.sigmoid(dist.add_(c))
    return torch.empty_like(scores).scatter_(0, order, scores).view(num_query, k)


def _centred_norms(x: torch.Tensor, centre: torch.Tensor, weights: tuple[torch.Tensor, ...],
                   rows: int) -> torch.Tensor:
    """``(x - centre)^2 @ w`` for each row of ``x`` and each ``w``: (len(weights), rows of x)."""
    out = torch.empty(len(weights), x.shape[0])
    for start in range(0, x.shape[0], rows):
        squares = (x[start:start + rows] - centre).square_()
        for w, row in zip(weights, out):
            torch.mv(squares, w, out=row[start:start + rows])
    return out


def _weighted_sq_distances(qf: torch.Tensor, gf: torch.Tensor, qi: torch.Tensor, gi: torch.Tensor,
                           v: torch.Tensor) -> torch.Tensor:
    """``sum_d v_d (qf[qi]_d - gf[gi]_d)^2`` for the pairs (qi, gi), about 1 MiB of them at a time."""
    out = torch.empty(qi.numel())
    step = max(1, _GATHER_ELEMENTS // gf.shape[1])
    for start in range(0, qi.numel(), step):
        sl = slice(start, start + step)
        diff = gf[gi[sl]].sub_(qf[qi[sl]])
        torch.mv(diff.mul_(diff), v, out=out[sl])
    return out
