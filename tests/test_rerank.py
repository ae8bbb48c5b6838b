"""k-reciprocal re-ranking against a direct transcription of the paper's equations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reid.errors import ConfigError
from reid import reranking
from reid.reranking import re_ranking, rerank_distmat


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)


def reference_re_ranking(qg, qq, gg, k1, k2, lam, stats=None):
    """Zhong et al. 2017 with plain loops and sets (slow, obviously literal)."""
    nq, ng = len(qg), len(qg[0])
    n = nq + ng
    big = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if i < nq and j < nq:
                big[i][j] = qq[i][j]
            elif i < nq:
                big[i][j] = qg[i][j - nq]
            elif j < nq:
                big[i][j] = qg[j][i - nq]
            else:
                big[i][j] = gg[i - nq][j - nq]
    # Column-normalised, transposed: d[p][j] = D[j][p] / max_i D[i][p].
    d = [[big[j][p] / max(big[i][p] for i in range(n)) for j in range(n)] for p in range(n)]
    order = [sorted(range(n), key=lambda j, p=p: (d[p][j], j)) for p in range(n)]

    def nn(p, k):
        return set(order[p][: k + 1])

    def recip(p, k):
        return {g for g in nn(p, k) if p in nn(g, k)}

    half = round(k1 / 2)  # round half to even, as numpy
    r_star = []
    for p in range(n):
        r = recip(p, k1)
        expanded = set(r)
        for q in r:
            rq = recip(q, half)
            if len(rq & r) > 2.0 / 3.0 * len(rq):
                expanded |= rq
        if stats is not None and expanded != r:
            stats["expanded"] = stats.get("expanded", 0) + 1
        r_star.append(expanded)
    v = []
    for p in range(n):
        total = sum(math.exp(-d[p][g]) for g in r_star[p])
        v.append([math.exp(-d[p][g]) / total if g in r_star[p] else 0.0 for g in range(n)])
    if k2 == 1:  # no expansion (the k2 nearest would be p itself but for exact duplicates)
        v_qe = v
    else:
        v_qe = [[sum(v[g][j] for g in order[p][:k2]) / k2 for j in range(n)] for p in range(n)]
    out = np.zeros((nq, ng))
    for p in range(nq):
        for gi in range(ng):
            g = nq + gi
            num = sum(min(v_qe[p][j], v_qe[g][j]) for j in range(n))
            den = sum(max(v_qe[p][j], v_qe[g][j]) for j in range(n))
            out[p, gi] = (1 - lam) * (1 - num / den) + lam * d[p][g]
    return out


def _clustered(seed: int, nq: int = 8, ng: int = 20, dim: int = 6, ids: int = 5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, dim)) * 2.0
    q = centres[rng.integers(0, ids, nq)] + rng.normal(size=(nq, dim))
    g = centres[rng.integers(0, ids, ng)] + rng.normal(size=(ng, dim))
    return q, g


@pytest.mark.parametrize(
    "seed,k1,k2,lam",
    [(0, 20, 6, 0.3), (1, 6, 3, 0.3), (2, 4, 1, 0.0), (3, 5, 2, 0.5), (4, 8, 4, 0.8), (5, 3, 3, 0.1)],
)
def test_matches_direct_reference(seed, k1, k2, lam):
    q, g = _clustered(seed)
    qg, qq, gg = _sq_dist(q, g), _sq_dist(q, q), _sq_dist(g, g)
    stats = {}
    want = reference_re_ranking(qg.tolist(), qq.tolist(), gg.tolist(), k1, k2, lam, stats)
    got = re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
    assert got.shape == (8, 20)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    if k1 >= 6:
        # The 1/2-k1 expansion rule really was exercised by this case.
        assert stats.get("expanded", 0) > 0


def test_equal_distances_are_ranked_by_index():
    # Points on an integer grid: many exactly equal distances, so neighbour sets depend on the
    # tie rule (equal distances ordered by index, as a stable sort).
    rng = np.random.default_rng(3)
    q = rng.integers(0, 3, size=(6, 2)).astype(float)
    g = rng.integers(0, 3, size=(14, 2)).astype(float)
    qg, qq, gg = _sq_dist(q, g), _sq_dist(q, q), _sq_dist(g, g)
    for k1, k2 in ((4, 2), (6, 3), (10, 1)):
        want = reference_re_ranking(qg.tolist(), qq.tolist(), gg.tolist(), k1, k2, 0.3)
        np.testing.assert_allclose(re_ranking(qg, qq, gg, k1=k1, k2=k2), want, rtol=0, atol=1e-6)


def test_smallest_k_equals_stable_argsort():
    rng = np.random.default_rng(0)
    block = rng.integers(0, 6, size=(40, 30)).astype(float)  # heavy ties
    block[:10] = rng.random((10, 30))  # and rows without
    for k in (1, 3, 7, 30):
        want = np.argsort(block, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(reranking._smallest_k(block, k), want)


def test_blockwise_ranking_equals_one_block(monkeypatch):
    q, g = _clustered(7)
    qg, qq, gg = _sq_dist(q, g), _sq_dist(q, q), _sq_dist(g, g)
    whole = re_ranking(qg, qq, gg, k1=6, k2=3)
    monkeypatch.setattr(reranking, "_RANK_CHUNK_ELEMENTS", 50)  # one or two rows per block
    np.testing.assert_allclose(re_ranking(qg, qq, gg, k1=6, k2=3), whole, rtol=0, atol=1e-12)


def test_lambda_one_is_normalised_original_distance():
    # D = [[0, 16, 1, 4], [16, 0, 9, 2], [1, 9, 0, 9], [4, 2, 9, 0]] (q1, q2, g1, g2).
    # Column q1 has maximum 16, column q2 maximum 16: row q1 = [1, 4] / 16, row q2 = [9, 2] / 16.
    qg = np.array([[1.0, 4.0], [9.0, 2.0]])
    qq = np.array([[0.0, 16.0], [16.0, 0.0]])
    gg = np.array([[0.0, 9.0], [9.0, 0.0]])
    got = re_ranking(qg, qq, gg, k1=2, k2=1, lambda_value=1.0)
    np.testing.assert_allclose(got, [[1 / 16, 4 / 16], [9 / 16, 2 / 16]], rtol=0, atol=1e-15)
    # One query: column q1 of D = [0, 1, 4], maximum 4.
    got = re_ranking([[1.0, 4.0]], [[0.0]], [[0.0, 9.0], [9.0, 0.0]], k1=1, k2=1, lambda_value=1.0)
    np.testing.assert_allclose(got, [[0.25, 1.0]], rtol=0, atol=1e-15)


def test_rerank_fixes_top1():
    # The query (origin) has a false match g0 at squared distance 1.0 whose nearest neighbours are
    # the 4 items of its own tight cluster B (g1-g4), so the query is not among them. The true
    # matches g5-g7 (squared distances 1.10 and 1.13) have the query among their nearest
    # neighbours and share their neighbourhood with it.
    q = np.array([[0.0, 0.0]])
    g = np.array([
        [1.0, 0.0],                                               # g0: false match
        [1.5, 0.1], [1.5, -0.1], [1.6, 0.0], [1.45, 0.15],        # g1-g4: cluster B
        [-1.05, 0.0], [-0.8, 0.7], [-0.8, -0.7],                  # g5-g7: the query's identity
    ])
    qg, qq, gg = _sq_dist(q, g), _sq_dist(q, q), _sq_dist(g, g)
    assert int(np.argmin(qg[0])) == 0
    got = re_ranking(qg, qq, gg, k1=4, k2=1, lambda_value=0.3)
    assert int(np.argmin(got[0])) == 5
    # The query's identity now ranks before all of cluster B and the false match.
    assert got[0, 5:].max() < got[0, :5].min()
    np.testing.assert_allclose(
        got, reference_re_ranking(qg.tolist(), qq.tolist(), gg.tolist(), 4, 1, 0.3), rtol=0, atol=1e-6
    )


def test_rerank_distmat_uses_squared_euclidean_and_accepts_tensors():
    q, g = _clustered(11, nq=5, ng=9, dim=4)
    got = rerank_distmat(torch.from_numpy(q).float(), torch.from_numpy(g).float(), k1=4, k2=2, lambda_value=0.3)
    want = reference_re_ranking(
        _sq_dist(q, g).tolist(), _sq_dist(q, q).tolist(), _sq_dist(g, g).tolist(), 4, 2, 0.3
    )
    # float32 features: distances agree with the float64 reference to ~1e-6 relative.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # Numpy features and tensor distance matrices give the same answer.
    np.testing.assert_allclose(rerank_distmat(q.astype(np.float32), g.astype(np.float32), 4, 2, 0.3), got, atol=1e-12)
    via_tensors = re_ranking(torch.from_numpy(_sq_dist(q, g)), torch.from_numpy(_sq_dist(q, q)),
                             torch.from_numpy(_sq_dist(g, g)), k1=4, k2=2, lambda_value=0.3)
    np.testing.assert_allclose(via_tensors, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(k1=0), dict(k2=0), dict(k1=2.5), dict(lambda_value=1.5),
                                    dict(lambda_value=-0.1)])
def test_bad_parameters_raise_config_error(kwargs):
    q, g = _clustered(0, nq=2, ng=3)
    with pytest.raises(ConfigError):
        re_ranking(_sq_dist(q, g), _sq_dist(q, q), _sq_dist(g, g), **kwargs)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shapes disagree"):
        re_ranking(np.zeros((2, 3)), np.zeros((3, 3)), np.zeros((3, 3)))
