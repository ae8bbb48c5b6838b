"""Tests of reid.evaluation_metrics: hand-computed cases and independent reference loops, each
through both forms: the per-query definitions and reid.evaluation_metrics.fast_ranking."""
import functools
import itertools
import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from reid.errors import ConfigError
from reid.evaluation_metrics import (
    CMC_CONFIGS,
    accuracy,
    cmc,
    evaluate_rank,
    format_results,
    mean_ap,
)
from reid.evaluation_metrics import ranking


@pytest.fixture(autouse=True, params=[False, True], ids=["per-query", "fast"])
def metric_form(request, monkeypatch):
    """Runs every test with each form of the metrics, whatever the matrix's size: the metric
    functions this module calls get the public ``fast`` argument bound."""
    for name in ("mean_ap", "cmc", "evaluate_rank"):
        monkeypatch.setitem(globals(), name, functools.partial(getattr(ranking, name), fast=request.param))
    return request.param

# ---------------------------------------------------------------------------------------------
# Independent references: a full stable sort and a Python loop per query, as open-reid did it.


def ref_remaining(dist, qids, gids, qcams, gcams, i, separate_camera_set):
    """Gallery indices of query i's remaining items, in stable distance order."""
    order = np.argsort(dist[i], kind="stable")
    keep = (gids[order] != qids[i]) | (gcams[order] != qcams[i])
    if separate_camera_set:
        keep &= gcams[order] != qcams[i]
    return order[keep]


def ref_mean_ap(dist, qids, gids, qcams, gcams):
    aps = []
    for i in range(dist.shape[0]):
        items = ref_remaining(dist, qids, gids, qcams, gcams, i, False)
        hits = np.flatnonzero(gids[items] == qids[i])  # 0-based positions of the true matches
        if len(hits):
            aps.append(np.mean((np.arange(len(hits)) + 1) / (hits + 1)))
    return float(np.mean(aps)) if aps else 0.0


def ref_cmc(dist, qids, gids, qcams, gcams, topk, separate_camera_set, single_gallery_shot,
            first_match_break, seed=0):
    m, n = dist.shape
    rng = np.random.default_rng(seed)
    labels = np.unique(gids)
    curve = np.zeros(topk)
    valid_queries = 0
    for i in range(m):
        u = rng.random((10, len(labels)))  # one row of draws per query, valid or not
        items = ref_remaining(dist, qids, gids, qcams, gcams, i, separate_camera_set)
        if not np.any(gids[items] == qids[i]):
            continue
        valid_queries += 1
        if not single_gallery_shot:
            hits = np.flatnonzero(gids[items] == qids[i])
            for j, k in enumerate(hits):
                if k - j >= topk:
                    break
                if first_match_break:
                    curve[k - j] += 1
                    break
                curve[k - j] += 1.0 / len(hits)
            continue
        for r in range(10):
            kept = set()
            for c, label in enumerate(labels):
                mine = sorted(g for g in items if gids[g] == label)  # gallery index order
                if mine:
                    kept.add(mine[min(int(u[r, c] * len(mine)), len(mine) - 1)])
            sampled = [g for g in items if g in kept]  # still in ranking order
            k = [gids[g] for g in sampled].index(qids[i])
            if k < topk:
                curve[k] += 0.1
    return np.cumsum(curve) / max(valid_queries, 1)


def random_problem(seed, m=12, n=40, num_ids=6, num_cams=3, ties=False):
    rng = np.random.default_rng(seed)
    qids = rng.integers(0, num_ids + 2, m)  # some query ids absent from the gallery
    gids = rng.integers(0, num_ids, n)
    qcams = rng.integers(0, num_cams, m)
    gcams = rng.integers(0, num_cams, n)
    if ties:
        dist = rng.integers(0, 4, (m, n)).astype(np.float32)
    else:
        dist = rng.permutation(m * n).reshape(m, n).astype(np.float64) / (m * n)
    return dist, qids, gids, qcams, gcams


# ---------------------------------------------------------------------------------------------
# Hand-computed cases.

# Three queries (ids 1, 2, 3, camera 0) against six gallery items, all in camera 1.
HAND_GIDS = np.array([1, 1, 2, 2, 3, 3])
HAND_GCAMS = np.ones(6, dtype=int)
HAND_QIDS = np.array([1, 2, 3])
HAND_QCAMS = np.zeros(3, dtype=int)
HAND_DIST = np.array([
    # q0 order g2 g0* g3 g4 g5 g1*: matches at ranks 2 and 6 -> AP (1/2 + 2/6) / 2 = 5/12
    [0.3, 0.9, 0.1, 0.5, 0.7, 0.8],
    # q1 order g3* g0 g5 g2* g1 g4: ranks 1 and 4 -> AP (1 + 2/4) / 2 = 3/4
    [0.2, 0.6, 0.4, 0.1, 0.9, 0.3],
    # q2 order g4* g3 g2 g1 g0 g5*: ranks 1 and 6 -> AP (1 + 2/6) / 2 = 2/3
    [0.5, 0.4, 0.3, 0.2, 0.1, 0.6],
])
HAND_MAP = (5 / 12 + 3 / 4 + 2 / 3) / 3
# First matches at positions 1, 0, 0.
HAND_CMC_FIRST = np.array([2, 3, 3, 3, 3, 3]) / 3
# Every match at position k - j, weight 1/2: q0 -> 1, 4; q1 -> 0, 2; q2 -> 0, 4.
HAND_CMC_ALL = np.cumsum([1.0, 0.5, 0.5, 0.0, 1.0, 0.0]) / 3


def hand_args():
    return HAND_DIST, HAND_QIDS, HAND_GIDS, HAND_QCAMS, HAND_GCAMS


def test_hand_case_map_and_cmc():
    assert mean_ap(*hand_args()) == pytest.approx(HAND_MAP)
    np.testing.assert_allclose(cmc(*hand_args(), topk=6, first_match_break=True), HAND_CMC_FIRST)
    np.testing.assert_allclose(cmc(*hand_args(), topk=6), HAND_CMC_ALL)
    # Ranks past topk contribute nothing: the curve is the prefix.
    np.testing.assert_allclose(cmc(*hand_args(), topk=3), HAND_CMC_ALL[:3])


def test_same_id_same_camera_items_are_ignored():
    gcams = HAND_GCAMS.copy()
    gcams[0] = 0  # g0: q0's identity in q0's camera -> removed for q0, kept for q1 and q2
    # q0 remaining g2 g3 g4 g5 g1*: one match at rank 5 -> AP 1/5, first match at position 4.
    args = (HAND_DIST, HAND_QIDS, HAND_GIDS, HAND_QCAMS, gcams)
    assert mean_ap(*args) == pytest.approx((1 / 5 + 3 / 4 + 2 / 3) / 3)
    np.testing.assert_allclose(cmc(*args, topk=6, first_match_break=True), [2 / 3] * 4 + [1, 1])


def test_queries_without_true_match_are_skipped():
    # q3: identity 9 is not in the gallery; q4: identity 1 only in its own camera (all junk).
    dist = np.vstack([HAND_DIST, [[0.1] * 6, [0.2] * 6]])
    qids = np.array([1, 2, 3, 9, 1])
    qcams = np.array([0, 0, 0, 0, 1])
    args = (dist, qids, HAND_GIDS, qcams, HAND_GCAMS)
    assert mean_ap(*args) == pytest.approx(HAND_MAP)
    np.testing.assert_allclose(cmc(*args, topk=6, first_match_break=True), HAND_CMC_FIRST)
    np.testing.assert_allclose(cmc(*args, topk=6), HAND_CMC_ALL)
    assert evaluate_rank(*args)["num_valid_queries"] == 3


def test_separate_camera_set_drops_same_camera_items():
    # Query id 1, camera 0. g3 is junk (id 1, camera 0); g0 is another identity in camera 0.
    dist = np.array([[0.1, 0.2, 0.3, 0.05, 0.4]])
    gids = np.array([2, 3, 1, 1, 2])
    gcams = np.array([0, 1, 1, 0, 1])
    args = (dist, [1], gids, [0], gcams)
    # Without: remaining g0 g1 g2* g4 -> first match at position 2; mAP = 1/3.
    np.testing.assert_allclose(cmc(*args, topk=3, first_match_break=True), [0, 0, 1])
    # With: g0 dropped too -> g1 g2* g4 -> position 1.
    np.testing.assert_allclose(
        cmc(*args, topk=3, separate_camera_set=True, first_match_break=True), [0, 1, 1])
    assert mean_ap(*args) == pytest.approx(1 / 3)


def test_ties_are_broken_by_gallery_index():
    # Stable order g3* (0.2), g0 (0.5), g1* (0.5), g2 (0.5): ranks 1 and 3 -> AP (1 + 2/3) / 2.
    # scikit-learn groups the tie instead and gives 0.75; another tie order would give 1.0.
    dist = np.array([[0.5, 0.5, 0.5, 0.2]], dtype=np.float32)
    args = (dist, [1], [2, 1, 2, 1], [0], [1, 1, 1, 1])
    assert mean_ap(*args) == pytest.approx(5 / 6)
    np.testing.assert_allclose(cmc(*args, topk=3), [0.5, 1.0, 1.0])
    # Match g0 ahead of the tied g1, g2 by index: order g3* g0* g1 g2 -> AP 1.
    assert mean_ap(dist, [1], [1, 2, 2, 1], [0], [1] * 4) == pytest.approx(1.0)
    # Match g2 behind the tied g0, g1: order g3* g0 g1 g2* -> AP (1 + 2/4) / 2.
    assert mean_ap(dist, [1], [2, 2, 1, 1], [0], [1] * 4) == pytest.approx(0.75)


def test_named_configurations():
    assert CMC_CONFIGS["market1501"] == dict(
        separate_camera_set=False, single_gallery_shot=False, first_match_break=True)
    assert CMC_CONFIGS["cuhk03"] == dict(
        separate_camera_set=True, single_gallery_shot=True, first_match_break=False)
    assert CMC_CONFIGS["allshots"] == dict(
        separate_camera_set=False, single_gallery_shot=False, first_match_break=False)
    market = evaluate_rank(*hand_args(), cmc_config="market1501", cmc_topk=(1,), max_rank=6)
    allshots = evaluate_rank(*hand_args(), cmc_config="allshots", cmc_topk=(1,), max_rank=6)
    np.testing.assert_allclose(market["cmc"], HAND_CMC_FIRST)
    np.testing.assert_allclose(allshots["cmc"], HAND_CMC_ALL)


def test_cuhk03_deterministic_when_one_item_per_identity_and_camera():
    # Identities 0..3, each with one gallery item in camera 0 and one in camera 1, so after
    # dropping the query's camera each identity has exactly one item: every draw is the same.
    gids = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    gcams = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    dist = np.array([
        # q0 (id 0, camera 0) among camera 1: g5 0.4, g3 0.5, g1* 0.6, g7 0.7 -> position 2
        [0.0, 0.6, 0.1, 0.5, 0.2, 0.4, 0.3, 0.7],
        # q1 (id 2, camera 1) among camera 0: g4* 0.1 first -> position 0
        [0.3, 0.0, 0.2, 0.0, 0.1, 0.0, 0.4, 0.0],
    ])
    args = (dist, [0, 2], gids, [0, 1], gcams)
    for seed in (0, 1, 123):
        res = evaluate_rank(*args, cmc_config="cuhk03", cmc_topk=(1, 3), max_rank=4, rng=seed)
        np.testing.assert_allclose(res["cmc"], [0.5, 0.5, 1.0, 1.0])
        assert res["top1"] == pytest.approx(0.5) and res["top3"] == pytest.approx(1.0)
    # mAP ignores only junk: q0 g2 g4 g6 g5 g3 g1* -> 1/6; q1 (g5 junk) g1 g3 g7 g4* -> 1/4.
    assert res["mAP"] == pytest.approx((1 / 6 + 1 / 4) / 2)


# ---------------------------------------------------------------------------------------------
# Against independent methods on random data.


@pytest.mark.parametrize("seed", range(4))
def test_mean_ap_matches_sklearn_per_query(seed):
    dist, qids, gids, qcams, gcams = random_problem(seed, m=15, n=60)
    aps = []
    for i in range(len(qids)):
        keep = (gids != qids[i]) | (gcams != qcams[i])
        y_true = gids[keep] == qids[i]
        if y_true.any():
            aps.append(average_precision_score(y_true, -dist[i, keep]))
    assert mean_ap(dist, qids, gids, qcams, gcams) == pytest.approx(np.mean(aps), abs=1e-12)


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=3)))
@pytest.mark.parametrize("ties", [False, True])
def test_cmc_matches_reference_loop(flags, ties):
    scs, sgs, fmb = flags
    for seed in range(3):
        dist, qids, gids, qcams, gcams = random_problem(seed, ties=ties)
        want = ref_cmc(dist, qids, gids, qcams, gcams, 20, scs, sgs, fmb, seed=seed)
        got = cmc(dist, qids, gids, qcams, gcams, topk=20, separate_camera_set=scs,
                  single_gallery_shot=sgs, first_match_break=fmb, rng=seed)
        np.testing.assert_allclose(got, want, atol=1e-12)
        # Chunking must not change anything (the random stream included).
        again = cmc(dist, qids, gids, qcams, gcams, topk=20, separate_camera_set=scs,
                    single_gallery_shot=sgs, first_match_break=fmb,
                    rng=np.random.default_rng(seed), chunk_size=5)
        np.testing.assert_allclose(again, want, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_mean_ap_with_ties_matches_stable_reference(seed):
    dist, qids, gids, qcams, gcams = random_problem(seed, m=10, n=50, ties=True)
    want = ref_mean_ap(dist, qids, gids, qcams, gcams)
    assert mean_ap(dist, qids, gids, qcams, gcams) == pytest.approx(want, abs=1e-12)
    assert mean_ap(dist, qids, gids, qcams, gcams, chunk_size=3) == pytest.approx(want, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_random_small_problems_match_reference(data):
    m = data.draw(st.integers(1, 5))
    n = data.draw(st.integers(1, 8))
    ints = st.integers(0, 2)
    dist = np.array(data.draw(st.lists(st.integers(0, 3), min_size=m * n, max_size=m * n)),
                    dtype=np.float64).reshape(m, n)
    qids, qcams = (np.array(data.draw(st.lists(ints, min_size=m, max_size=m))) for _ in "ab")
    gids, gcams = (np.array(data.draw(st.lists(ints, min_size=n, max_size=n))) for _ in "ab")
    args = (dist, qids, gids, qcams, gcams)
    assert mean_ap(*args) == pytest.approx(ref_mean_ap(*args), abs=1e-12)
    for scs, fmb in itertools.product([False, True], repeat=2):
        np.testing.assert_allclose(
            cmc(*args, topk=n, separate_camera_set=scs, first_match_break=fmb),
            ref_cmc(*args, n, scs, False, fmb), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Inputs, defaults, the report entry, errors.


def test_torch_tensor_inputs_give_the_same_numbers():
    dist, qids, gids, qcams, gcams = hand_args()
    args = (torch.tensor(dist, dtype=torch.float32), torch.tensor(qids), torch.tensor(gids),
            torch.tensor(qcams), torch.tensor(gcams))
    assert mean_ap(*args) == pytest.approx(HAND_MAP)
    np.testing.assert_allclose(cmc(*args, topk=6), HAND_CMC_ALL)
    half = torch.tensor(dist, dtype=torch.float16)
    assert mean_ap(half, *args[1:]) == pytest.approx(HAND_MAP)


def test_open_reid_defaults():
    # ids default to arange and cameras to 0 (query) / 1 (gallery): query i matches gallery i.
    dist = np.array([[0.2, 0.1, 0.3], [0.1, 0.2, 0.3]])
    # q0: g1 g0* g2 -> rank 2; q1: g0 g1* g2 -> rank 2.
    assert mean_ap(dist) == pytest.approx(0.5)
    np.testing.assert_allclose(cmc(dist, topk=3, first_match_break=True), [0, 1, 1])


def test_evaluate_rank_keys_values_and_table():
    res = evaluate_rank(*hand_args(), cmc_topk=(1, 2, 5), max_rank=10)
    assert set(res) == {"mAP", "top1", "top2", "top5", "cmc", "num_valid_queries"}
    assert isinstance(res["mAP"], float) and isinstance(res["cmc"], list)
    assert res["mAP"] == pytest.approx(HAND_MAP)
    assert (res["top1"], res["top2"], res["top5"]) == pytest.approx((2 / 3, 1.0, 1.0))
    assert len(res["cmc"]) == 10 and res["num_valid_queries"] == 3
    table = format_results(res, "hand case")
    lines = table.splitlines()
    assert lines[0] == "hand case"
    assert "61.1%" in lines[1] and lines[1].split()[0] == "mAP"
    assert [ln.split()[0] for ln in lines[2:5]] == ["top-1", "top-2", "top-5"]
    assert "66.7%" in lines[2]
    assert len({len(ln) for ln in lines[1:]}) == 1  # aligned columns


def test_no_valid_query_gives_zeros():
    dist = np.array([[0.1, 0.2]])
    res = evaluate_rank(dist, [5], [1, 2], [0], [1, 1], cmc_topk=(1,), max_rank=3)
    assert res["mAP"] == 0.0 and res["cmc"] == [0.0, 0.0, 0.0] and res["num_valid_queries"] == 0
    assert mean_ap(np.zeros((0, 4))) == 0.0
    np.testing.assert_array_equal(
        cmc(dist, [5], [1, 2], [0], [1, 1], topk=2, single_gallery_shot=True), [0, 0])


def test_no_valid_query_warns_once(caplog):
    dist = np.array([[0.1, 0.2]])
    with caplog.at_level(logging.WARNING, logger="reid.evaluation_metrics.ranking"):
        evaluate_rank(dist, [5], [1, 2], [0], [1, 1], cmc_topk=(1,), max_rank=3)
    assert [r.getMessage() for r in caplog.records] == [
        "no query has a true match in the gallery; mAP and CMC are 0"]


def test_bad_inputs_raise():
    with pytest.raises(ConfigError):
        evaluate_rank(*hand_args(), cmc_config="viper")
    with pytest.raises(ConfigError):
        evaluate_rank(*hand_args(), cmc_topk=(1, 200), max_rank=100)
    with pytest.raises(ValueError):
        mean_ap(np.zeros(3))
    with pytest.raises(ValueError):
        mean_ap(HAND_DIST, [1, 2], HAND_GIDS, HAND_QCAMS, HAND_GCAMS)
    nan = HAND_DIST.copy()
    nan[1, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mean_ap(nan, HAND_QIDS, HAND_GIDS, HAND_QCAMS, HAND_GCAMS)


def test_accuracy_hand_case():
    output = torch.tensor([
        [0.1, 0.7, 0.2],  # target 1: top-1 hit
        [0.5, 0.3, 0.2],  # target 1: second -> top-2 hit
        [0.2, 0.3, 0.5],  # target 0: third -> top-3 hit only
        [0.6, 0.1, 0.3],  # target 0: top-1 hit
    ])
    target = torch.tensor([1, 1, 0, 0])
    assert accuracy(output, target, topk=(1, 2, 3)) == pytest.approx([0.5, 0.75, 1.0])
    assert accuracy(output.numpy(), target.numpy()) == pytest.approx([0.5])
