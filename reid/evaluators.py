"""Feature extraction, distances and the two-stage cascade evaluation (spec section 7)."""
from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from reid.compiled_rescoring import UNAVAILABLE, compiled_pair_scores
from reid.errors import first_line
from reid.evaluation_metrics import evaluate_rank, format_results

logger = logging.getLogger(__name__)

Item = tuple  # (fname, pid, cam)


def extract_features(
    model: nn.Module, data_loader: DataLoader, device: torch.device | str = "cpu", desc: str = "Extract features",
    progress: bool = True,
) -> "OrderedDict[str, torch.Tensor]":
    """Run ``model`` in eval mode over ``data_loader`` of ``(img, fname, pid, cam)`` batches.

    Returns an ordered dict file name -> float32 feature vector (on the CPU).
    """
    model.eval()
    features: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    with torch.inference_mode():
        for imgs, fnames, _, _ in tqdm(data_loader, desc=desc, leave=False, dynamic_ncols=True, disable=not progress):
            out = model(imgs.to(device, non_blocking=True)).float().cpu()
            for fname, feat in zip(fnames, out):
                features[fname] = feat
    return features


def pairwise_distance(query_features: torch.Tensor, gallery_features: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``||q||^2 + ||g||^2 - 2 q.g`` as a (num_query, num_gallery) matrix."""
    q = query_features.float()
    g = gallery_features.float()
    qq = q.pow(2).sum(1, keepdim=True)
    gg = g.pow(2).sum(1, keepdim=True).t()
    return torch.addmm(qq + gg, q, g.t(), beta=1.0, alpha=-2.0)


_RESCORE_BLOCK_ELEMENTS = 1 << 18  # float32 elements of one block of gathered candidates (1 MiB)
_COMPILED_BLOCK_PAIRS = 1 << 16  # (query, candidate) pairs per call of the compiled kernel
_SELECT_GROUP = 8  # columns per group in the top-k selection of long rows (measured best of 4-32)
# A pair is scored from the differences where the expansion's terms exceed this many times its
# distance (8: at most 3 bits more rounding than the differences; on the benchmark's Market-sized
# features the ratio is 2.0-2.4).
_CANCELLATION_RATIO = 8.0
_SELECT_BLOCK_ELEMENTS = 1 << 23  # distances per block of rows in the top-k selection (32 MiB)


def default_embed_dist_fn(logits: torch.Tensor) -> torch.Tensor:
    """Probability of 'different identity' from the verification head's 2-way logits."""
    return F.softmax(logits, dim=1)[:, 0]


def _square_head_as_weighted_distance(embed_model: nn.Module) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """For an eval-mode square EltwiseSubEmbed with a 2-way classifier, return (v, c) such that
    logit_0 - logit_1 = sum_d v_d (x1_d - x2_d)^2 + c; None when the head has another form."""
    from reid.models.embedding import EltwiseSubEmbed

    if not isinstance(embed_model, EltwiseSubEmbed) or embed_model.training:
        return None
    if embed_model.nonlinearity != "square" or getattr(embed_model, "classifier", None) is None:
        return None
    weight = embed_model.classifier.weight.detach().double()
    if weight.shape[0] != 2:
        return None
    bias = embed_model.classifier.bias
    bias = bias.detach().double() if bias is not None else torch.zeros(2, dtype=torch.float64)
    dims = weight.shape[1]
    scale = torch.ones(dims, dtype=torch.float64)
    shift = torch.zeros(dims, dtype=torch.float64)
    bn = getattr(embed_model, "bn", None)
    if bn is not None:
        if not isinstance(bn, nn.BatchNorm1d) or bn.running_mean is None:
            return None
        inv_std = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
        gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones(dims, dtype=torch.float64)
        beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros(dims, dtype=torch.float64)
        scale = gamma * inv_std
        shift = beta - bn.running_mean.detach().double() * scale
    w = weight[0] - weight[1]
    return (w * scale).float(), (w @ shift + bias[0] - bias[1]).float()


def rerank_distances(
    distmat: torch.Tensor,
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    embed_model: nn.Module,
    embed_dist_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    rerank_topk: int = 75,
    chunk_size: int = 64,
    device: torch.device | str = "cpu",
    compiled: bool = False,
    overwrite: bool = False,
) -> torch.Tensor:
    """Second cascade stage: re-score each query's first-stage top-k with the verification head.

    The top-k distances are replaced by ``embed_dist_fn(embed_model(q, g))``; every other item of
    the row is shifted by ``max(bar + 1 - d_k, 0)`` (``bar`` = largest new top-k score, ``d_k`` =
    first-stage distance of the (k+1)-th item) so the re-scored items stay in front. An eval-mode
    square head with a 2-way classifier and the default ``embed_dist_fn`` is folded into one
    weighted squared distance per pair; on the CPU its cross terms come from sampled matrix
    products over the pairs, nothing gathered per pair; on another ``device``, from blocks of
    ``chunk_size`` queries' candidates. Any other head scores blocks of (query, candidate) pairs
    (on the CPU, as many queries as fit about 1 MiB of candidate features). ``embed_model`` must
    be on ``device``. The result is on ``distmat``'s device.

    With ``compiled``, the folded scores come from one ``torch.compile``-generated kernel that
    takes the pairs in gallery order and materialises nothing per pair (docs/performance.md: on a
    CPU about as fast as the sampled products; at least 65,536 pairs per call, since each call
    costs the guards' checks). The first call of a process compiles it, first in a child process
    that a native crash cannot spread from, then here from the cache that child filled (5-25 s in
    all). Where compilation fails or crashes (no C++ compiler, for one) it logs a warning and
    scores eagerly; other heads ignore it.

    With ``overwrite``, the result is written into ``distmat`` (float32) and returned, instead of
    a fresh matrix: no second (num_query, num_gallery) matrix in memory (214 MB on Market-1501,
    and the time to map it, a fifth of the whole).
    """
    if overwrite and distmat.dtype != torch.float32:
        raise ValueError(f"overwrite needs a float32 distance matrix, not {distmat.dtype}")
    num_query, num_gallery = distmat.shape
    k = min(int(rerank_topk), num_gallery)
    if k <= 0 or num_query == 0:
        return distmat if overwrite else distmat.clone()
    embed_model.eval()
    top_idx, d_next = _smallest_k(distmat, k)

    fast = _square_head_as_weighted_distance(embed_model) if embed_dist_fn in (None, default_embed_dist_fn) else None
    dev = torch.device(device)
    qf = query_features.float()
    gf = gallery_features.float()
    with torch.inference_mode():
        if fast is None:
            scores = _scores_of_head(qf, gf, top_idx, embed_model, embed_dist_fn or default_embed_dist_fn,
                                     _block_queries(dev, chunk_size, k, gf.shape[1]), dev, distmat.device)
        else:
            v, c = (t.to(dev) for t in fast)
            qf, gf, idx = qf.to(dev), gf.to(dev), top_idx.to(dev)
            block_pairs = max(1, chunk_size * k, _COMPILED_BLOCK_PAIRS)
            scores = _folded_scores_compiled(qf, gf, idx, v, c, block_pairs) if compiled else None
            if scores is None and dev.type == "cpu":
                scores = _folded_scores_sparse(qf, gf, idx, v, c)
            elif scores is None:
                scores = _folded_scores(qf, gf, idx, v, c, _block_queries(dev, chunk_size, k, gf.shape[1]))
            scores = scores.to(distmat.device)

    offset = None if d_next is None else torch.clamp(scores.max(1).values + 1.0 - d_next, min=0.0)
    if overwrite:
        new = distmat if offset is None else distmat.add_(offset[:, None])
    elif offset is None:
        new = distmat.float().clone()
    else:
        new = torch.add(distmat.float(), offset[:, None])  # one pass: a fresh matrix with the offsets
    new.scatter_(1, top_idx, scores)
    return new


def _block_queries(device: torch.device, chunk_size: int, k: int, dims: int) -> int:
    """Queries per block: on the CPU, about 1 MiB of gathered candidates, so that a block stays in
    the cache through every pass over it (larger blocks stream through memory at each layer); on
    an accelerator, chunk_size queries keep it busy."""
    if device.type == "cpu":
        return max(1, min(chunk_size, _RESCORE_BLOCK_ELEMENTS // (k * dims)))
    return max(1, chunk_size)


def _scores_of_head(qf: torch.Tensor, gf: torch.Tensor, top_idx: torch.Tensor, embed_model: nn.Module,
                    fn: Callable[[torch.Tensor], torch.Tensor], step: int, device: torch.device,
                    out_device: torch.device) -> torch.Tensor:
    """``fn(embed_model(q, g))`` for every query and each of its candidates: (num_query, k)."""
    num_query, k = top_idx.shape
    scores = torch.empty(num_query, k, dtype=torch.float32, device=out_device)
    for start in range(0, num_query, step):
        sl = slice(start, start + step)
        idx = top_idx[sl]
        n = idx.shape[0]
        q_rep = qf[sl].unsqueeze(1).expand(n, k, qf.shape[1]).reshape(n * k, -1)
        cand = gf[idx].reshape(n * k, -1)
        logits = embed_model(q_rep.to(device), cand.to(device))
        scores[sl] = fn(logits).float().to(out_device).reshape(n, k)
    return scores


def _folded_scores(qf: torch.Tensor, gf: torch.Tensor, top_idx: torch.Tensor, v: torch.Tensor, c: torch.Tensor,
                   step: int) -> torch.Tensor:
    """``sigmoid(sum_d v_d (q_d - g_d)^2 + c)`` for every query and each of its candidates, from the
    differences, ``step`` queries' candidates at a time."""
    num_query, k = top_idx.shape
    query_of = torch.arange(num_query, device=gf.device).repeat_interleave(k)
    dist = _weighted_sq_distances(qf, gf, query_of, top_idx.reshape(-1), v, step * k)
    return torch.sigmoid(dist.add_(c)).view(num_query, k)


def _folded_scores_sparse(qf: torch.Tensor, gf: torch.Tensor, top_idx: torch.Tensor, v: torch.Tensor,
                          c: torch.Tensor, rows: int = 256) -> torch.Tensor:
    """:func:`_folded_scores` with nothing gathered per pair: the weighted distance expanded as
    ``|q - m|^2_v + |g - m|^2_v - 2 ((q - m) * v).(g - m)`` about the queries' mean ``m``, the
    cross terms from sampled matrix products over the pairs (``torch.sparse.sampled_addmm``), the
    pairs in gallery order and the gallery ``rows`` rows at a time: each block is centred into a
    cache-sized buffer and read from there by every query that has one of its rows as a candidate.

    The expansion's float32 rounding grows with its terms, the differences' with the distance.
    About a centre among the features the terms are of the distance's size (pooled ReLU features
    share a large non-negative part, which the centre removes); a pair whose terms, weighted by
    ``|v|``, exceed ``_CANCELLATION_RATIO`` times its distance is scored again from the
    differences, so that no data can make the expansion cancel (docs/performance.md).
    """
    num_query, k = top_idx.shape
    num_gallery, dims = gf.shape
    # Any centre gives the same distances; the queries' mean is near the gallery's, and costs a
    # fifth as much to compute.
    centre = qf.mean(0)
    weights = (v, v.abs())  # the terms with v, and with |v| for their scale
    q_norms = _centred_weighted_norms(qf, centre, weights, rows)
    qv_t = torch.sub(qf, centre).mul_(v).t()
    # Pairs in gallery order (a stable sort of 32-bit keys: a third of the time of 64-bit ones).
    flat = top_idx.reshape(-1)
    order = torch.argsort(flat.int(), stable=True)
    cand = flat[order]
    query_of = torch.div(order, k, rounding_mode="floor")
    row_ends = torch.bincount(cand, minlength=num_gallery).cumsum(0)
    crow = torch.cat([row_ends.new_zeros(1), row_ends])
    bounds = crow.tolist()
    cross = torch.empty(cand.numel(), dtype=gf.dtype, device=gf.device)
    g_norms = torch.empty(2, num_gallery, dtype=gf.dtype, device=gf.device)
    centred = torch.empty(min(rows, num_gallery), dims, dtype=gf.dtype, device=gf.device)
    squares = torch.empty_like(centred)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        for start in range(0, num_gallery, rows):
            stop = min(start + rows, num_gallery)
            first, last = bounds[start], bounds[stop]
            if first == last:
                continue  # no query has a candidate here
            n = stop - start
            block = torch.sub(gf[start:stop], centre, out=centred[:n])
            torch.mul(block, block, out=squares[:n])
            for w, out in zip(weights, g_norms):
                torch.mv(squares[:n], w, out=out[start:stop])
            pattern = torch.sparse_csr_tensor(
                crow[start:stop + 1] - first, query_of[first:last],
                torch.zeros(last - first, dtype=gf.dtype), size=(n, num_query), check_invariants=False)
            cross[first:last] = torch.sparse.sampled_addmm(pattern, block, qv_t, beta=0.0).values()
    dist = cross.mul_(-2.0).add_(g_norms[0, cand]).add_(q_norms[0, query_of])
    scale = q_norms[1].sqrt()[query_of].add_(g_norms[1].sqrt()[cand]).square_()
    risky = torch.nonzero(scale > _CANCELLATION_RATIO * dist.abs()).squeeze(1)
    if risky.numel():
        dist[risky] = _weighted_sq_distances(qf, gf, query_of[risky], cand[risky], v,
                                             max(1, _RESCORE_BLOCK_ELEMENTS // dims))
    scores = torch.sigmoid(dist.add_(c))
    return torch.empty_like(scores).scatter_(0, order, scores).view(num_query, k)


def _centred_weighted_norms(x: torch.Tensor, centre: torch.Tensor, weights: Sequence[torch.Tensor],
                            rows: int) -> torch.Tensor:
    """``(x - centre)^2 @ w`` for each row of ``x`` and each ``w`` of ``weights``: (len(weights),
    rows of x), ``rows`` rows at a time through a cache-sized buffer."""
    out = torch.empty(len(weights), x.shape[0], dtype=x.dtype, device=x.device)
    buf = torch.empty(min(rows, x.shape[0]), x.shape[1], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], rows):
        block = x[start:start + rows]
        diff = torch.sub(block, centre, out=buf[:block.shape[0]]).square_()
        for w, row in zip(weights, out):
            torch.mv(diff, w, out=row[start:start + rows])
    return out


def _weighted_sq_distances(qf: torch.Tensor, gf: torch.Tensor, qi: torch.Tensor, gi: torch.Tensor,
                           v: torch.Tensor, step: int) -> torch.Tensor:
    """``sum_d v_d (qf[qi]_d - gf[gi]_d)^2`` for the pairs (qi, gi), ``step`` pairs at a time."""
    out = torch.empty(qi.numel(), dtype=gf.dtype, device=gf.device)
    for start in range(0, qi.numel(), step):
        sl = slice(start, start + step)
        diff = gf[gi[sl]].sub_(qf[qi[sl]])
        torch.mv(diff.mul_(diff), v, out=out[sl])
    return out


def _folded_scores_compiled(qf: torch.Tensor, gf: torch.Tensor, top_idx: torch.Tensor, v: torch.Tensor,
                            c: torch.Tensor, block_pairs: int) -> Optional[torch.Tensor]:
    """:func:`_folded_scores` through the compiled kernel, ``block_pairs`` pairs a call; None (and
    a warning) where it cannot be compiled."""
    kernel = compiled_pair_scores(str(gf.device), torch.get_num_threads())
    if kernel is None:
        return None
    num_query, k = top_idx.shape
    # Pairs in gallery order: a candidate shared by many queries is read from memory once and then
    # from the cache (on Market-sized problems each is in about 20 lists); the queries, 5x fewer
    # rows than the gallery, are what is gathered at random.
    cand, order = torch.sort(top_idx.reshape(-1))
    query_of = torch.div(order, k, rounding_mode="floor")
    scores = torch.empty(cand.numel(), dtype=torch.float32, device=gf.device)
    for start in range(0, cand.numel(), block_pairs):
        sl = slice(start, start + block_pairs)
        try:
            scores[sl] = kernel(qf, gf, query_of[sl], cand[sl], v, c)
        except Exception as exc:  # noqa: BLE001  (the backend's failure is reported, then we score eagerly)
            if start:
                raise
            logger.warning(UNAVAILABLE, first_line(exc))
            return None
    return torch.empty_like(scores).scatter_(0, order, scores).view(num_query, k)


def _smallest_k(distmat: torch.Tensor, k: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Column indices of each row's k smallest values (in no particular order) and the (k+1)-th
    smallest value of each row (None when a row has only k values).

    Equal values across the k-th place make the set ambiguous; any of them may be kept.
    """
    num_rows, cols = distmat.shape
    if k >= cols:
        return torch.topk(distmat, k, dim=1, largest=False, sorted=False).indices, None
    # Only the set and the (k+1)-th value matter (the re-scored values replace the top-k and the
    # offset needs the first value after them), so no sorting. In blocks of rows, so that the
    # intermediate tensors are a few MiB, reused by the allocator instead of mapped afresh.
    idx = torch.empty(num_rows, k, dtype=torch.long, device=distmat.device)
    d_next = torch.empty(num_rows, dtype=distmat.dtype, device=distmat.device)
    step = max(1, _SELECT_BLOCK_ELEMENTS // cols)
    for start in range(0, num_rows, step):
        block_idx, block_next = _split_last(*_smallest_values(distmat[start:start + step], k + 1, _SELECT_GROUP))
        idx[start:start + step] = block_idx
        d_next[start:start + step] = block_next
    return idx, d_next


def _smallest_values(x: torch.Tensor, n: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The n smallest values of each row of ``x`` and their columns, in no particular order:
    through :func:`_smallest_values_in_groups` for rows of at least ``2 * n * group`` values (where
    it measured faster than one ``topk``), else ``topk``."""
    if x.shape[1] >= 2 * n * group:
        return _smallest_values_in_groups(x, n, group)
    return torch.topk(x, n, dim=1, largest=False, sorted=False)


def _smallest_values_in_groups(x: torch.Tensor, n: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_smallest_values` through the minima of groups of ``group`` columns; needs at least n
    groups.

    With ``width = columns // group``, group j holds the columns j, j + width, ..., j + (group - 1)
    width (strided, so the minima are ``group`` - 1 element-wise minimums of contiguous rows); the
    last ``columns - group * width`` columns are in no group and always kept. Exact: every value of
    a group outside the n with the smallest minima is at least as large as each of those n minima,
    so the n smallest values of the row lie in those groups or the kept columns. The n groups are
    chosen the same way, from the minima (recursively while rows stay long).
    """
    rows, cols = x.shape
    width = cols // group
    if width < n:
        raise ValueError(f"{cols} columns make fewer than {n} groups of {group}")
    minima = x[:, :group * width].view(rows, group, width).amin(1)
    if torch.isnan(minima.amax()):  # amax propagates NaN
        # amin lets a NaN hide its group's other values; topk ranks NaN last, as it should be.
        return torch.topk(x, n, dim=1, largest=False, sorted=False)
    chosen = _smallest_values(minima, n, group)[1]
    columns = (chosen.unsqueeze(2) + width * torch.arange(group, device=x.device)).view(rows, -1)
    if cols > group * width:
        rest = torch.arange(group * width, cols, device=x.device)
        columns = torch.cat([columns, rest.expand(rows, -1)], 1)
    vals, pos = torch.topk(torch.gather(x, 1, columns), n, dim=1, largest=False, sorted=False)
    return vals, torch.gather(columns, 1, pos)


def _split_last(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From each row's k + 1 smallest (values, columns): the columns of all but the largest, and
    the largest value."""
    last = vals.argmax(1, keepdim=True)
    d_next = vals.gather(1, last).squeeze(1)
    # The last column's entry moves into the largest's place; the first k columns are the rest.
    idx = idx.scatter(1, last, idx[:, -1:])
    return idx[:, :-1].contiguous(), d_next


class CascadeEvaluator:
    """Evaluates a Siamese re-ID model in two stages (spec section 7).

    Args:
        base_model: the backbone producing pooled features.
        embed_model: the verification head scoring (query, gallery) feature pairs.
        embed_dist_fn: maps the head's logits to a distance (default: probability of 'different').
        device: where to run the networks.
        progress: show a progress bar while extracting features.
        compile_rescoring: score the second stage with the compiled kernel (see
            :func:`rerank_distances`, ``compiled``).
    """

    def __init__(
        self,
        base_model: nn.Module,
        embed_model: nn.Module,
        embed_dist_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        device: torch.device | str = "cpu",
        progress: bool = True,
        compile_rescoring: bool = False,
    ) -> None:
        self.progress = progress
        self.compile_rescoring = compile_rescoring
        self.base_model = base_model
        self.embed_model = embed_model
        self.embed_dist_fn = embed_dist_fn
        self.device = device

    def evaluate(
        self,
        data_loader: DataLoader,
        query: Sequence[Item],
        gallery: Sequence[Item],
        rerank_topk: int = 75,
        second_stage: bool = True,
        dataset: Optional[str] = None,
        title: str = "",
    ) -> dict:
        """Extract features of every image in ``data_loader`` and report both stages.

        Args:
            data_loader: yields ``(img, fname, pid, cam)`` for (at least) every query and gallery file.
            query, gallery: lists of ``(fname, pid, cam)``.
            rerank_topk: how many first-stage candidates the verification head re-scores.
            second_stage: also run the re-scoring stage.
            dataset: dataset name; ``'cuhk03'`` selects the cuhk03 CMC configuration, anything
                else the market1501 one.
            title: prefix for the logged tables.

        Returns:
            ``{'first_stage': metrics, 'second_stage': metrics}`` (the latter only with
            ``second_stage``), each as returned by :func:`reid.evaluation_metrics.evaluate_rank`.
        """
        features = extract_features(self.base_model, data_loader, self.device, progress=self.progress)
        qf = _stack(features, query, "query")
        gf = _stack(features, gallery, "gallery")
        distmat = pairwise_distance(qf, gf)
        return self.evaluate_features(qf, gf, distmat, query, gallery, rerank_topk, second_stage, dataset, title,
                                      overwrite_distmat=True)

    def evaluate_features(
        self,
        query_features: torch.Tensor,
        gallery_features: torch.Tensor,
        distmat: torch.Tensor,
        query: Sequence[Item],
        gallery: Sequence[Item],
        rerank_topk: int = 75,
        second_stage: bool = True,
        dataset: Optional[str] = None,
        title: str = "",
        overwrite_distmat: bool = False,
    ) -> dict:
        """Both cascade stages from already extracted features (see :meth:`evaluate`). With
        ``overwrite_distmat`` the second stage's distances replace ``distmat``'s (float32) in
        place, once the first stage is scored: one distance matrix in memory instead of two."""
        ids_cams = ids_and_cams(query, gallery)
        config = "cuhk03" if dataset == "cuhk03" else "market1501"
        results = {"first_stage": evaluate_rank(distmat, *ids_cams, cmc_config=config)}
        logger.info(format_results(results["first_stage"], f"{title}first stage (Euclidean distance)"))
        if second_stage:
            dist2 = rerank_distances(
                distmat, query_features, gallery_features, self.embed_model, self.embed_dist_fn,
                rerank_topk=rerank_topk, device=self.device, compiled=self.compile_rescoring,
                overwrite=overwrite_distmat and distmat.dtype == torch.float32,
            )
            results["second_stage"] = evaluate_rank(dist2, *ids_cams, cmc_config=config)
            logger.info(format_results(
                results["second_stage"], f"{title}second stage (verification re-scoring of top {rerank_topk})"))
        return results


def _stack(features: "OrderedDict[str, torch.Tensor]", items: Iterable[Item], what: str) -> torch.Tensor:
    rows = []
    for fname, _, _ in items:
        if fname not in features:
            raise KeyError(f"no feature was extracted for {what} image {fname}")
        rows.append(features[fname])
    if not rows:
        return torch.zeros(0, 0)
    return torch.stack(rows)


def ids_and_cams(query: Sequence[Item], gallery: Sequence[Item]) -> tuple:
    """Query ids, gallery ids, query cams, gallery cams of ``(fname, pid, cam)`` lists as arrays."""
    q_ids = torch.tensor([pid for _, pid, _ in query], dtype=torch.long)
    g_ids = torch.tensor([pid for _, pid, _ in gallery], dtype=torch.long)
    q_cams = torch.tensor([cam for _, _, cam in query], dtype=torch.long)
    g_cams = torch.tensor([cam for _, _, cam in gallery], dtype=torch.long)
    return q_ids.numpy(), g_ids.numpy(), q_cams.numpy(), g_cams.numpy()
