"""evaluate_features_streaming against evaluate_rank on the full distance matrix.

Features are small dyadic numbers (multiples of 1/64 or integers, few dimensions), so every
float32 distance is exact whatever order a BLAS sums in: the chunked and the full computation
then see the very same distances and must agree exactly, ties included.
"""
import numpy as np
import pytest
import torch

from reid.errors import ConfigError
from reid.evaluation_metrics import evaluate_features_streaming, evaluate_rank
from reid.evaluation_metrics import streaming
from reid.evaluators import pairwise_distance


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These tests run thousands of tiny matrix products; on busy shared cores, waking a second
    BLAS thread for each costs milliseconds (the module took 60 s instead of 8 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_problem(seed, num_query, num_gallery, dim, num_ids, num_cams, step, spread):
    """Random dyadic features with labels; some query ids are absent from the gallery."""
    rng = np.random.default_rng(seed)
    qf = (rng.integers(-spread, spread + 1, (num_query, dim)) * step).astype(np.float32)
    gf = (rng.integers(-spread, spread + 1, (num_gallery, dim)) * step).astype(np.float32)
    gids = rng.integers(0, num_ids, num_gallery)
    qids = rng.integers(0, num_ids + 3, num_query)  # ids >= num_ids: no match at all
    qcams = rng.integers(0, num_cams, num_query)
    gcams = rng.integers(0, num_cams, num_gallery)
    return qf, gf, qids, gids, qcams, gcams


def reference(qf, gf, qids, gids, qcams, gcams, **kw):
    dist = pairwise_distance(torch.as_tensor(qf), torch.as_tensor(gf))
    return evaluate_rank(dist, qids, gids, qcams, gcams, cmc_config="market1501", **kw)


def assert_same(out, ref):
    assert set(out) == set(ref)
    assert out["mAP"] == pytest.approx(ref["mAP"], abs=1e-9)
    assert out["cmc"] == ref["cmc"]
    assert out["num_valid_queries"] == ref["num_valid_queries"]
    for key in ref:
        if key.startswith("top"):
            assert out[key] == ref[key], key


# (gallery_chunk, query_chunk): single items, odd sizes, chunks smaller than a query's number of
# true matches, and one chunk holding everything.
CHUNKS = [(1, 7), (2, 3), (3, 256), (7, 2), (50, 5), (1000, 1000)]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.slow
def test_equals_evaluate_rank_near_continuous(seed):
    """Fine dyadic grid: few ties, many matches per query (more than small chunk sizes)."""
    problem = make_problem(seed, num_query=40, num_gallery=400, dim=32, num_ids=12, num_cams=3,
                           step=1 / 64, spread=128)
    ref = reference(*problem)
    assert 0 < ref["num_valid_queries"] < 40  # some queries have no match
    assert 0.0 < ref["mAP"] < 1.0
    qids, gids = problem[2], problem[3]
    same_id = qids[:, None] == gids[None, :]
    assert same_id.sum(1).max() > 7  # more true matches than most chunk sizes hold
    for gallery_chunk, query_chunk in CHUNKS:
        out = evaluate_features_streaming(*problem, gallery_chunk=gallery_chunk, query_chunk=query_chunk)
        assert_same(out, ref)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.slow
def test_equals_evaluate_rank_with_many_ties(seed):
    """Integer features in 2-3 dimensions plus duplicated gallery rows: ties everywhere."""
    qf, gf, qids, gids, qcams, gcams = make_problem(seed, num_query=30, num_gallery=200, dim=2 + seed % 2,
                                                    num_ids=6, num_cams=2, step=1.0, spread=2)
    dup = np.random.default_rng(seed).integers(0, 200, 40)
    gf[dup[:20]] = gf[dup[20:]]
    dist = pairwise_distance(torch.as_tensor(qf), torch.as_tensor(gf)).numpy()
    assert len(np.unique(dist[0])) <= 50  # 200 items: heavily tied
    ref = reference(qf, gf, qids, gids, qcams, gcams)
    for gallery_chunk, query_chunk in [(1, 1)] + CHUNKS:
        out = evaluate_features_streaming(qf, gf, qids, gids, qcams, gcams,
                                          gallery_chunk=gallery_chunk, query_chunk=query_chunk)
        assert_same(out, ref)


def test_hand_computed_example():
    """1-D features; the ranking can be read off the number line."""
    qf = np.array([[0.0], [10.0]], dtype=np.float32)
    # distances to query 0: 1, 1, 4, 0, 9, 1 (squared)
    gf = np.array([[1.0], [-1.0], [2.0], [0.0], [3.0], [1.0]], dtype=np.float32)
    gids = np.array([5, 7, 5, 5, 7, 5])
    gcams = np.array([1, 1, 1, 0, 1, 0])
    qids, qcams = np.array([5, 9]), np.array([0, 0])  # query 1: identity absent from the gallery
    # Query 0: item 3 (id 5, cam 0) and item 5 (id 5, cam 0) are ignored. Remaining in order:
    # item 0 (d 1, match), item 1 (d 1, other), item 2 (d 4, match), item 4 (d 9, other).
    # AP = (1/1 + 2/3) / 2; first match at rank 1.
    out = evaluate_features_streaming(qf, gf, qids, gids, qcams, gcams, gallery_chunk=2, query_chunk=1,
                                      max_rank=3, cmc_topk=(1, 3))
    assert out["mAP"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-12)
    assert out["cmc"] == [1.0, 1.0, 1.0]
    assert out["top1"] == 1.0 and out["top3"] == 1.0
    assert out["num_valid_queries"] == 1
    # Swapping the tied items 0 and 1 (by giving item 1 the smaller index) moves the match to 2.
    order = [1, 0, 2, 3, 4, 5]
    out = evaluate_features_streaming(qf, gf[order], qids, gids[order], qcams, gcams[order],
                                      gallery_chunk=4, max_rank=3, cmc_topk=(1,))
    assert out["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-12)
    assert out["cmc"] == [0.0, 1.0, 1.0]


def test_never_builds_the_full_matrix(monkeypatch):
    problem = make_problem(7, num_query=50, num_gallery=300, dim=8, num_ids=10, num_cams=3,
                           step=1 / 64, spread=128)
    shapes = []
    original = streaming._distance_block

    def recording(q, qq, g, gg):
        shapes.append((q.shape[0], g.shape[0]))
        return original(q, qq, g, gg)

    monkeypatch.setattr(streaming, "_distance_block", recording)
    out = evaluate_features_streaming(*problem, gallery_chunk=64, query_chunk=16)
    assert_same(out, reference(*problem))
    assert shapes and max(r for r, _ in shapes) <= 16
    assert max(c for _, c in shapes) <= 64  # gathered same-identity columns included


def test_input_types_give_the_same_result(tmp_path):
    qf, gf, qids, gids, qcams, gcams = make_problem(3, num_query=25, num_gallery=150, dim=16, num_ids=8,
                                                    num_cams=3, step=1 / 64, spread=128)
    ref = reference(qf, gf, qids, gids, qcams, gcams)
    path = tmp_path / "gallery.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=gf.shape)
    mm[:] = gf
    mm.flush()
    readonly = np.memmap(path, dtype=np.float32, mode="r", shape=gf.shape)
    variants = [
        (torch.from_numpy(qf), torch.from_numpy(gf)),
        (torch.from_numpy(qf).double(), torch.from_numpy(gf).double()),
        (qf.tolist(), readonly),
        (qf, np.asfortranarray(gf.astype(np.float64))),
    ]
    for q, g in variants:
        out = evaluate_features_streaming(q, g, torch.as_tensor(qids), list(gids), qcams, gcams,
                                          gallery_chunk=32, query_chunk=8)
        assert_same(out, ref)


def test_no_valid_query_gives_zeros():
    qf = np.zeros((3, 4), dtype=np.float32)
    gf = np.ones((5, 4), dtype=np.float32)
    qids, gids = np.array([1, 2, 3]), np.array([1, 1, 4, 4, 4])
    qcams, gcams = np.zeros(3, dtype=int), np.zeros(5, dtype=int)  # id 1 only in the same camera
    out = evaluate_features_streaming(qf, gf, qids, gids, qcams, gcams, max_rank=5, cmc_topk=(1,))
    assert_same(out, reference(qf, gf, qids, gids, qcams, gcams, max_rank=5, cmc_topk=(1,)))
    assert out["mAP"] == 0.0 and out["num_valid_queries"] == 0 and out["cmc"] == [0.0] * 5


def test_bad_arguments():
    qf, gf, qids, gids, qcams, gcams = make_problem(0, num_query=4, num_gallery=10, dim=3, num_ids=2,
                                                    num_cams=2, step=1.0, spread=2)
    args = (qf, gf, qids, gids, qcams, gcams)
    with pytest.raises(ConfigError, match="gallery_chunk"):
        evaluate_features_streaming(*args, gallery_chunk=0)
    with pytest.raises(ConfigError, match="query_chunk"):
        evaluate_features_streaming(*args, query_chunk=-1)
    with pytest.raises(ConfigError, match="exceeds max_rank"):
        evaluate_features_streaming(*args, max_rank=5, cmc_topk=(1, 10))
    with pytest.raises(ValueError, match="dimensions"):
        evaluate_features_streaming(qf, gf[:, :2], qids, gids, qcams, gcams)
    with pytest.raises(ValueError, match="gallery_ids"):
        evaluate_features_streaming(qf, gf, qids, gids[:5], qcams, gcams)
    bad = gf.copy()
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_features_streaming(qf, bad, np.zeros(4, dtype=int), np.zeros(10, dtype=int),
                                    np.zeros(4, dtype=int), np.ones(10, dtype=int), gallery_chunk=3)
