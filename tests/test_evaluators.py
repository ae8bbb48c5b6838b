"""The cascade evaluation: distances, batched second stage against a per-query reference loop."""
import copy
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from reid import fast_rescoring
from reid.evaluation_metrics import evaluate_rank
from reid.evaluators import CascadeEvaluator, _smallest_k, pairwise_distance, rescore_distances, score_candidates
from reid.fast_rescoring import folded_scores
from reid.models.embedding import EltwiseSubEmbed, default_embed_dist_fn, folded_head

def _head(nonlinearity: str, dims: int, seed: int = 0) -> EltwiseSubEmbed:
    torch.manual_seed(seed)
    head = EltwiseSubEmbed(nonlinearity=nonlinearity, use_batch_norm=True, use_classifier=True,
                           num_features=dims, num_classes=2)
    with torch.no_grad():
        head.bn.running_mean.uniform_(0.0, 0.5)
        head.bn.running_var.uniform_(0.5, 2.0)
        head.bn.weight.uniform_(0.5, 1.5)
        head.bn.bias.uniform_(-0.2, 0.2)
        head.classifier.weight.normal_(0, 0.3)
        head.classifier.bias.normal_(0, 0.1)
    return head.eval()


def _reference_rerank(distmat, qf, gf, head, topk):
    """The release's algorithm: one query at a time, full sort, score the top-k, shift the rest."""
    out = distmat.clone()
    n_gallery = distmat.shape[1]
    for i in range(distmat.shape[0]):
        order = torch.argsort(distmat[i])
        k = min(topk, n_gallery)
        idx = order[:k]
        with torch.no_grad():
            logits = head(qf[i].unsqueeze(0).expand(k, -1), gf[idx])
        scores = F.softmax(logits, dim=1)[:, 0]
        if k < n_gallery:
            bar = scores.max()
            d_next = distmat[i, order[k]]
            out[i] += torch.clamp(bar + 1 - d_next, min=0)
        out[i, idx] = scores
    return out


def test_pairwise_distance_is_squared_euclidean():
    q = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    g = torch.tensor([[3.0, 4.0], [1.0, 0.0], [1.0, 2.0]])
    expected = torch.tensor([[25.0, 1.0, 5.0], [8.0, 4.0, 0.0]])
    assert torch.allclose(pairwise_distance(q, g), expected, atol=1e-5)


def _problem(seed=1, nq=23, ng=57, dims=16, ids=9):
    g = torch.Generator().manual_seed(seed)
    qf = torch.rand(nq, dims, generator=g)
    gf = torch.rand(ng, dims, generator=g)
    q_ids = torch.randint(0, ids, (nq,), generator=g)
    g_ids = torch.randint(0, ids, (ng,), generator=g)
    q_cams = torch.randint(0, 3, (nq,), generator=g)
    g_cams = torch.randint(0, 3, (ng,), generator=g)
    return qf, gf, q_ids, g_ids, q_cams, g_cams


def test_second_stage_square_head_matches_per_query_loop():
    qf, gf, q_ids, g_ids, q_cams, g_cams = _problem()
    head = _head("square", qf.shape[1])
    distmat = pairwise_distance(qf, gf)
    for topk in (1, 10, 57, 100):
        ours = rescore_distances(distmat, qf, gf, head, topk=topk, chunk_size=5)
        ref = _reference_rerank(distmat, qf, gf, head, topk)
        assert torch.allclose(ours, ref, atol=1e-5), topk
        a = evaluate_rank(ours, q_ids, g_ids, q_cams, g_cams)
        b = evaluate_rank(ref, q_ids, g_ids, q_cams, g_cams)
        assert a["mAP"] == b["mAP"] and a["cmc"] == b["cmc"]


@pytest.mark.parametrize("topk", [0, 6, 57, 80])
def test_second_stage_can_overwrite_the_distance_matrix(topk):
    # The same values as a fresh matrix, written into the first stage's (k >= gallery size: no
    # offset; k = 0: nothing re-scored).
    qf, gf, *_ = _problem(seed=17)
    head = _head("square", qf.shape[1], seed=18)
    distmat = pairwise_distance(qf, gf)
    fresh = rescore_distances(distmat, qf, gf, head, topk=topk)
    assert not torch.equal(fresh, distmat) or topk == 0
    result = rescore_distances(distmat, qf, gf, head, topk=topk, overwrite=True)
    assert result.data_ptr() == distmat.data_ptr() and torch.equal(distmat, fresh)
    with pytest.raises(ValueError, match="overwrite needs a float32 distance matrix, not torch.float64"):
        rescore_distances(distmat.double(), qf, gf, head, topk=topk, overwrite=True)


def test_second_stage_generic_head_matches_per_query_loop():
    qf, gf, *_ = _problem(seed=3)
    head = _head("abs", qf.shape[1], seed=2)
    distmat = pairwise_distance(qf, gf)
    ours = rescore_distances(distmat, qf, gf, head, topk=7, chunk_size=4)
    ref = _reference_rerank(distmat, qf, gf, head, 7)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_second_stage_keeps_rescored_items_in_front():
    qf, gf, *_ = _problem(seed=5)
    head = _head("square", qf.shape[1], seed=4)
    distmat = pairwise_distance(qf, gf)
    k = 6
    new = rescore_distances(distmat, qf, gf, head, topk=k)
    top = torch.topk(distmat, k, dim=1, largest=False).indices
    for i in range(distmat.shape[0]):
        inside = new[i, top[i]]
        mask = torch.ones(distmat.shape[1], dtype=torch.bool)
        mask[top[i]] = False
        assert inside.max() < new[i, mask].min()


def test_cascade_evaluator_reports_both_stages():
    qf, gf, q_ids, g_ids, q_cams, g_cams = _problem(seed=7)
    head = _head("square", qf.shape[1], seed=6)
    query = [(f"q{i}", int(p), int(c)) for i, (p, c) in enumerate(zip(q_ids, q_cams))]
    gallery = [(f"g{i}", int(p), int(c)) for i, (p, c) in enumerate(zip(g_ids, g_cams))]
    ev = CascadeEvaluator(torch.nn.Identity(), head)
    distmat = pairwise_distance(qf, gf)
    res = ev.evaluate_features(qf, gf, distmat, query, gallery, rerank_topk=10)
    first = evaluate_rank(distmat, q_ids, g_ids, q_cams, g_cams)
    second = evaluate_rank(_reference_rerank(distmat, qf, gf, head, 10), q_ids, g_ids, q_cams, g_cams)
    assert res["first_stage"]["mAP"] == first["mAP"]
    assert np.isclose(res["second_stage"]["mAP"], second["mAP"], atol=1e-12)


def test_k_reciprocal_option_of_the_test_evaluation(synthetic_root):
    from reid.evaluators import extract_features, ids_and_cams
    from reid.models import build_siamese
    from reid.pipelines.common import evaluate_on_test, load_dataset
    from reid.utils.data.loaders import build_eval_loader, unique_items
    from reid.reranking import re_ranking

    torch.manual_seed(0)
    model = build_siamese("resnet18", pretrained=False)
    data_dir, name = os.path.split(synthetic_root)
    res = evaluate_on_test(model, name, data_dir, 0, ["openreid"], 64, 32, 16, 0, 10, torch.device("cpu"),
                           progress=False, k_reciprocal=True)["openreid"]
    ds = load_dataset(name, data_dir)
    loader = build_eval_loader(unique_items(ds.query, ds.gallery), ds.images_dir, 64, 32, 16, 0)
    feats = extract_features(model.base_model, loader, progress=False)
    qf = torch.stack([feats[f] for f, _, _ in ds.query])
    gf = torch.stack([feats[f] for f, _, _ in ds.gallery])
    expected = evaluate_rank(re_ranking(pairwise_distance(qf, gf), pairwise_distance(qf, qf),
                                        pairwise_distance(gf, gf)), *ids_and_cams(ds.query, ds.gallery))
    assert res["k_reciprocal"]["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    assert res["k_reciprocal"]["cmc"] == pytest.approx(expected["cmc"], abs=1e-9)
    assert res["k_reciprocal"]["mAP"] != res["first_stage"]["mAP"]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 30), st.data())
def test_smallest_k_is_a_valid_selection_with_ties(rows, cols, data):
    # Few distinct values, so equal values straddle the k-th place often.
    k = data.draw(st.integers(1, cols))
    values = data.draw(st.lists(st.integers(0, 4), min_size=rows * cols, max_size=rows * cols))
    distmat = torch.tensor(values, dtype=torch.float32).view(rows, cols)
    idx, d_next = _smallest_k(distmat, k)
    assert idx.shape == (rows, k)
    ordered = torch.sort(distmat, dim=1).values
    for i in range(rows):
        chosen = set(idx[i].tolist())
        assert len(chosen) == k
        # The chosen values are the k smallest (as a multiset): equal to the sorted prefix.
        assert sorted(distmat[i, idx[i]].tolist()) == ordered[i, :k].tolist()
    if k < cols:
        assert torch.equal(d_next, ordered[:, k])
    else:
        assert d_next is None


def _folded_reference(qf, gf, top_idx, head):
    """The head's 'different identity' probability for every (query, candidate) pair, in float64."""
    head64 = copy.deepcopy(head).double()  # .double() converts in place
    with torch.no_grad():
        q = qf.double()[:, None, :].expand(-1, top_idx.shape[1], -1).reshape(-1, qf.shape[1])
        logits = head64(q, gf.double()[top_idx.reshape(-1)])
    return F.softmax(logits, 1)[:, 0].view(top_idx.shape)


@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_folded_scores_both_ways_equal_the_head_in_float64(offset):
    # Features with a large common part (offset 30 on every dimension, norms ~ 100 times the
    # distances between them): the expansion about the queries' mean keeps float32 close, where
    # expanding about the origin would cancel most digits.
    g = torch.Generator().manual_seed(5)
    qf = torch.rand(40, 64, generator=g) + offset
    gf = torch.rand(300, 64, generator=g) + offset
    head = _head("square", 64, seed=6)
    with torch.no_grad():
        head.bn.running_var.uniform_(0.01, 0.02)  # BN scales the squares up: logits of size ~10
    top_idx, _ = _smallest_k(pairwise_distance(qf, gf), 30)
    v, c = folded_head(head, default_embed_dist_fn)
    want = _folded_reference(qf, gf, top_idx, head)
    assert 0.05 < float(want.std())  # the scores vary: the check is not saturated
    sparse = folded_scores(qf, gf, top_idx, v, c)
    # The plain path: the head itself on every pair (another function than the default one).
    plain = score_candidates(qf, gf, top_idx, head, lambda logits: default_embed_dist_fn(logits), chunk_size=7)
    assert torch.equal(score_candidates(qf, gf, top_idx, head), sparse)
    assert float((sparse.double() - want).abs().max()) < 2e-6
    assert float((plain.double() - want).abs().max()) < 2e-6
    # Gallery blocks of 16 rows, the last of them (rows 150-299) without any candidate.
    near, _ = _smallest_k(pairwise_distance(qf, gf[:150]), 30)
    blocks = folded_scores(qf, gf, near, v, c, rows=16)
    assert float((blocks.double() - _folded_reference(qf, gf, near, head)).abs().max()) < 2e-6
    # The same expansion about the origin is far off at offset 30: the centring is what holds it.
    if offset:
        q0, g0 = qf.double(), gf.double()
        naive = ((q0 * q0) @ v.double())[:, None] + ((g0 * g0) @ v.double())[top_idx]
        cross = ((qf * v)[:, None, :] @ gf[top_idx].transpose(1, 2)).squeeze(1).double()
        assert float((torch.sigmoid(naive - 2 * cross + float(c)) - want).abs().max()) > 1e-4


def test_folded_scores_rescore_from_the_differences_where_the_expansion_would_cancel(monkeypatch):
    # Two clusters 40 apart on every dimension, queries in both: the queries' mean lies between
    # them, so every pair's expansion terms are thousands of times its distance. Those pairs are scored
    # again from the differences; without that (ratio infinite) float32 loses the scores.
    g = torch.Generator().manual_seed(8)
    far = torch.cat([torch.zeros(1), torch.full((1,), 40.0)]).repeat_interleave(torch.tensor([20, 20]))
    qf = torch.rand(40, 64, generator=g) + far[:, None]
    gf = torch.rand(300, 64, generator=g) + torch.arange(300).ge(150).float()[:, None] * 40.0
    head = _head("square", 64, seed=9)
    top_idx, _ = _smallest_k(pairwise_distance(qf, gf), 30)
    v, c = folded_head(head, default_embed_dist_fn)
    want = _folded_reference(qf, gf, top_idx, head)
    assert 0.05 < float(want.std())
    rescored = []
    real = fast_rescoring._weighted_sq_distances
    monkeypatch.setattr(fast_rescoring, "_weighted_sq_distances", lambda q, g_, qi, gi, *a: rescored.append(qi.numel())
                        or real(q, g_, qi, gi, *a))
    assert float((folded_scores(qf, gf, top_idx, v, c).double() - want).abs().max()) < 2e-6
    assert sum(rescored) > 0.9 * top_idx.numel()
    monkeypatch.setattr(fast_rescoring, "CANCELLATION_RATIO", float("inf"))
    assert float((folded_scores(qf, gf, top_idx, v, c).double() - want).abs().max()) > 1e-4
