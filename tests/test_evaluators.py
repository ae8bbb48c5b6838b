"""The cascade evaluation: distances, batched second stage against a per-query reference loop."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import timeout
from reid import compiled_rescoring, evaluators
from reid.evaluation_metrics import evaluate_rank
from reid.evaluators import (CascadeEvaluator, _folded_scores, _folded_scores_sparse, _smallest_k, _smallest_values,
                             _smallest_values_in_groups, _square_head_as_weighted_distance, pairwise_distance,
                             rerank_distances)
from reid.models.embedding import EltwiseSubEmbed

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)


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
        ours = rerank_distances(distmat, qf, gf, head, rerank_topk=topk, chunk_size=5)
        ref = _reference_rerank(distmat, qf, gf, head, topk)
        assert torch.allclose(ours, ref, atol=1e-5), topk
        a = evaluate_rank(ours, q_ids, g_ids, q_cams, g_cams)
        b = evaluate_rank(ref, q_ids, g_ids, q_cams, g_cams)
        assert a["mAP"] == b["mAP"] and a["cmc"] == b["cmc"]


def check_compiled_against_loop() -> None:
    """Run in a child process by the next test: the torch.compile kernel (dynamic shapes: calls of
    20 + 3, 4 x 50 + 30 and 4 x 285 + 171 pairs for three top-k sizes, all through one
    compilation) against the release's loop. Prints whether the compiled kernel or, after its
    warning, the eager path scored."""
    evaluators._COMPILED_BLOCK_PAIRS = 20
    qf, gf, q_ids, g_ids, q_cams, g_cams = _problem(seed=11)
    head = _head("square", qf.shape[1], seed=12)
    distmat = pairwise_distance(qf, gf)
    for topk in (1, 10, 57):
        ours = rerank_distances(distmat, qf, gf, head, rerank_topk=topk, chunk_size=5, compiled=True)
        ref = _reference_rerank(distmat, qf, gf, head, topk)
        assert torch.allclose(ours, ref, atol=1e-5), topk
        a = evaluate_rank(ours, q_ids, g_ids, q_cams, g_cams)
        b = evaluate_rank(ref, q_ids, g_ids, q_cams, g_cams)
        assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-12) and a["cmc"] == b["cmc"]
    compiled = compiled_rescoring.compiled_pair_scores("cpu", torch.get_num_threads()) is not None
    print("compiled" if compiled else "eager")


@pytest.mark.slow
def test_compiled_second_stage_matches_per_query_loop():
    # In a fresh process: a native crash of the compiler or of its kernel fails this test, not
    # the test run. The child checks the scores; here, that it said which path scored, and that
    # the eager one is only taken after the one warning.
    code = ("import logging, sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; logging.basicConfig(level=logging.INFO); "
            "import test_evaluators; test_evaluators.check_compiled_against_loop()")
    proc = subprocess.run([sys.executable, "-c", code, REPO_ROOT, TESTS_DIR], capture_output=True, text=True,
                          timeout=timeout(600), env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "compiled re-scoring unavailable" in line]
    checked = [line for line in proc.stderr.splitlines() if "compiled re-scoring kernel checked" in line]
    if proc.stdout.split() == ["compiled"]:
        assert not warnings and len(checked) == 1, proc.stderr[-3000:]
    else:
        assert proc.stdout.split() == ["eager"] and len(warnings) == 1 and not checked, proc.stderr[-3000:]


def test_compiled_second_stage_falls_back_with_a_warning(monkeypatch, caplog):
    def no_compiler(*args):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")

    monkeypatch.setattr(evaluators, "compiled_pair_scores", lambda *args: no_compiler)
    qf, gf, *_ = _problem(seed=13)
    head = _head("square", qf.shape[1], seed=14)
    distmat = pairwise_distance(qf, gf)
    with caplog.at_level(logging.WARNING, logger="reid.evaluators"):
        ours = rerank_distances(distmat, qf, gf, head, rerank_topk=8, compiled=True)
    assert torch.equal(ours, rerank_distances(distmat, qf, gf, head, rerank_topk=8))
    assert [r.getMessage() for r in caplog.records if r.name == "reid.evaluators"] == [
        "compiled re-scoring unavailable (InvalidCxxCompiler: No working C++ compiler found); "
        "scoring without compilation"]


@pytest.fixture
def fresh_compiled_kernel_cache():
    compiled_rescoring.compiled_pair_scores.cache_clear()
    yield
    compiled_rescoring.compiled_pair_scores.cache_clear()


@pytest.mark.parametrize("child, reason", [
    ("import os; os.abort()", "its test compilation in a child process died of SIGABRT"),
    ("import sys; sys.stderr.write('W: noise\\nInvalidCxxCompiler: no compiler\\n'); sys.exit(1)",
     "InvalidCxxCompiler: no compiler"),
    ("import sys; sys.exit(3)", "its test compilation in a child process exited with 3"),
])
def test_a_crashing_test_compilation_leaves_this_process_scoring_eagerly(monkeypatch, caplog, child, reason,
                                                                         fresh_compiled_kernel_cache):
    # The kernel is compiled here only after a child process compiled and ran it: a native abort
    # in the compiler or its kernel ends that child, and this process scores eagerly.
    monkeypatch.setattr(compiled_rescoring, "_probe_command", lambda *args: [sys.executable, "-c", child])
    qf, gf, *_ = _problem(seed=15)
    head = _head("square", qf.shape[1], seed=16)
    distmat = pairwise_distance(qf, gf)
    with caplog.at_level(logging.WARNING, logger="reid.compiled_rescoring"):
        ours = rerank_distances(distmat, qf, gf, head, rerank_topk=8, compiled=True)
        again = rerank_distances(distmat, qf, gf, head, rerank_topk=8, compiled=True)
    eager = rerank_distances(distmat, qf, gf, head, rerank_topk=8)
    assert torch.equal(ours, eager) and torch.equal(again, eager)
    # One warning per process, however many evaluations follow.
    assert [r.getMessage() for r in caplog.records if r.name == "reid.compiled_rescoring"] == [
        f"compiled re-scoring unavailable ({reason}); scoring without compilation"]


@pytest.mark.slow
def test_the_test_compilation_reports_its_error_in_one_line():
    # The real child, asked for a device torch does not know: its error, first line only.
    failure = compiled_rescoring.probe_compilation("nodevice", 1)
    assert failure is not None and failure.startswith("Expected one of cpu") and "\n" not in failure


def test_a_hanging_test_compilation_is_stopped(monkeypatch):
    monkeypatch.setattr(compiled_rescoring, "_probe_command",
                        lambda *args: [sys.executable, "-c", "import time; time.sleep(30)"])
    assert compiled_rescoring.probe_compilation("cpu", 1, timeout_s=0.5) == (
        "its test compilation in a child process took over 0.5 s")


@pytest.mark.parametrize("topk", [0, 6, 57, 80])
def test_second_stage_can_overwrite_the_distance_matrix(topk):
    # The same values as a fresh matrix, written into the first stage's (k >= gallery size: no
    # offset; k = 0: nothing re-scored).
    qf, gf, *_ = _problem(seed=17)
    head = _head("square", qf.shape[1], seed=18)
    distmat = pairwise_distance(qf, gf)
    fresh = rerank_distances(distmat, qf, gf, head, rerank_topk=topk)
    assert not torch.equal(fresh, distmat) or topk == 0
    result = rerank_distances(distmat, qf, gf, head, rerank_topk=topk, overwrite=True)
    assert result.data_ptr() == distmat.data_ptr() and torch.equal(distmat, fresh)
    with pytest.raises(ValueError, match="overwrite needs a float32 distance matrix, not torch.float64"):
        rerank_distances(distmat.double(), qf, gf, head, rerank_topk=topk, overwrite=True)


def test_second_stage_generic_head_matches_per_query_loop():
    qf, gf, *_ = _problem(seed=3)
    head = _head("abs", qf.shape[1], seed=2)
    distmat = pairwise_distance(qf, gf)
    ours = rerank_distances(distmat, qf, gf, head, rerank_topk=7, chunk_size=4)
    ref = _reference_rerank(distmat, qf, gf, head, 7)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_second_stage_keeps_rescored_items_in_front():
    qf, gf, *_ = _problem(seed=5)
    head = _head("square", qf.shape[1], seed=4)
    distmat = pairwise_distance(qf, gf)
    k = 6
    new = rerank_distances(distmat, qf, gf, head, rerank_topk=k)
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
    import os

    from reid.evaluators import extract_features, ids_and_cams
    from reid.pipelines.common import build_siamese, evaluate_on_test, load_dataset
    from reid.utils.data.loaders import build_eval_loader, unique_items
    from reid.utils.rerank import re_ranking

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


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 5), st.integers(2, 4), st.data())
def test_selection_through_group_minima_is_exact_with_ties(rows, group, data):
    # Few distinct values (ties straddle the n-th place and group minima), any row length with at
    # least n groups (some columns left over, or none), infinities included; rows long enough that
    # the groups are chosen through their own minima too.
    n = data.draw(st.integers(1, 6))
    cols = data.draw(st.integers(n * group, 80))
    values = data.draw(st.lists(st.sampled_from([0.0, 1.0, 2.0, 3.0, float("inf")]),
                                min_size=rows * cols, max_size=rows * cols))
    distmat = torch.tensor(values, dtype=torch.float32).view(rows, cols)
    vals, idx = _smallest_values_in_groups(distmat, n, group)
    ordered = torch.sort(distmat, dim=1).values
    assert idx.shape == (rows, n) and bool((idx < cols).all())
    assert torch.equal(torch.gather(distmat, 1, idx), vals)
    for i in range(rows):
        assert len(set(idx[i].tolist())) == n
        assert sorted(vals[i].tolist()) == ordered[i, :n].tolist()


def test_selection_through_group_minima_sees_past_a_nan():
    # 13 columns in groups of 2 take the columns j and j + 6 (j < 6); column 12 is in none. The NaN
    # in column 4 makes group {4, 10}'s minimum NaN; column 10's 0.5 must still be found.
    row = torch.tensor([[5.0, 6.0, 7.0, 8.0, float("nan"), 9.0, 9.5, 4.0, 4.5, 3.5, 0.5, 3.0, 7.0]])
    vals, idx = _smallest_values_in_groups(row, 3, 2)
    assert sorted(idx[0].tolist()) == [9, 10, 11] and sorted(vals[0].tolist()) == [0.5, 3.0, 3.5]


def test_selection_through_group_minima_keeps_the_columns_past_the_last_group():
    # 11 columns in groups of 4: {0, 2, 4, 6} and {1, 3, 5, 7}; columns 8-10 make no group and
    # hold the smallest values of the first row.
    row = torch.tensor([[5.0, 6.0, 7.0, 8.0, 4.0, 9.0, 9.0, 9.0, 1.0, 0.5, 2.0],
                        [0.0, 6.0, 7.0, 8.0, 9.0, 9.0, 9.0, 9.0, 1.0, 0.5, 2.0]])
    vals, idx = _smallest_values_in_groups(row, 2, 4)
    assert idx.sort(1).values.tolist() == [[8, 9], [0, 9]] and vals.sort(1).values.tolist() == [[0.5, 1.0], [0.0, 0.5]]


def test_long_rows_are_selected_through_group_minima_recursively(monkeypatch):
    # 517 columns, k = 3 (4 values kept), groups of 8: 64 group minima per row, again long enough
    # (2 x 4 x 8) to be selected through their own groups' minima; 8 of those, then plain topk.
    calls = []
    real = _smallest_values_in_groups
    monkeypatch.setattr("reid.evaluators._smallest_values_in_groups",
                        lambda x, *a: calls.append((x.shape[1], *a)) or real(x, *a))
    distmat = torch.rand(7, 8 * 8 * 8 + 5, generator=torch.Generator().manual_seed(0))
    idx, d_next = _smallest_k(distmat, 3)
    assert calls == [(517, 4, 8), (64, 4, 8)]
    vals, top = torch.topk(distmat, 4, dim=1, largest=False)
    assert torch.equal(idx.sort(1).values, top[:, :3].sort(1).values) and torch.equal(d_next, vals[:, 3])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.data())
def test_smallest_values_of_long_rows_equal_a_full_sort(rows, n, data):
    # Through one, two or three levels of groups of 2 (rows up to 160 values), distinct values.
    cols = data.draw(st.integers(n, 160))
    perm = torch.randperm(rows * cols, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 999))))
    distmat = perm.float().view(rows, cols)
    vals, idx = _smallest_values(distmat, n, 2)
    assert torch.equal(vals.sort(1).values, torch.sort(distmat, 1).values[:, :n])
    assert torch.equal(torch.gather(distmat, 1, idx), vals)


def _folded_reference(qf, gf, top_idx, head):
    """The head's 'different identity' probability for every (query, candidate) pair, in float64."""
    head64 = head.double()
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
    v, c = _square_head_as_weighted_distance(head)
    want = _folded_reference(qf, gf, top_idx, head)
    assert 0.05 < float(want.std())  # the scores vary: the check is not saturated
    sparse = _folded_scores_sparse(qf, gf, top_idx, v, c)
    gathered = _folded_scores(qf, gf, top_idx, v, c, step=7)
    assert float((sparse.double() - want).abs().max()) < 2e-6
    assert float((gathered.double() - want).abs().max()) < 2e-6
    # Gallery blocks of 16 rows, the last of them (rows 150-299) without any candidate.
    near, _ = _smallest_k(pairwise_distance(qf, gf[:150]), 30)
    blocks = _folded_scores_sparse(qf, gf, near, v, c, rows=16)
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
    v, c = _square_head_as_weighted_distance(head)
    want = _folded_reference(qf, gf, top_idx, head)
    assert 0.05 < float(want.std())
    rescored = []
    real = evaluators._weighted_sq_distances
    monkeypatch.setattr(evaluators, "_weighted_sq_distances", lambda q, g_, qi, gi, *a: rescored.append(qi.numel())
                        or real(q, g_, qi, gi, *a))
    assert float((_folded_scores_sparse(qf, gf, top_idx, v, c).double() - want).abs().max()) < 2e-6
    assert sum(rescored) > 0.9 * top_idx.numel()
    monkeypatch.setattr(evaluators, "_CANCELLATION_RATIO", float("inf"))
    assert float((_folded_scores_sparse(qf, gf, top_idx, v, c).double() - want).abs().max()) > 1e-4
