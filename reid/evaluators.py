"""Feature extraction, distances and the two-stage cascade evaluation (the release's
``reid/evaluators.py``, ``CascadeEvaluator``): first-stage squared Euclidean distances, then each
query's top-k re-scored by the verification head and the rest of its row shifted behind them."""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from reid.errors import NonFiniteError
from reid.evaluation_metrics import evaluate_rank, format_results
from reid.fast_rescoring import folded_scores
from reid.models.embedding import default_embed_dist_fn, folded_head

logger = logging.getLogger(__name__)

#: Candidates per query the verification head re-scores (the release's ``rerank_topk`` default):
#: every validation, and Stage I's test after training.
RESCORE_TOPK = 75
#: Candidates re-scored in the test of ``baseline.py --evaluate`` and of Stage III's best E.
TEST_RESCORE_TOPK = 100

Item = tuple  # (fname, pid, cam)

__all__ = ["RESCORE_TOPK", "TEST_RESCORE_TOPK", "CascadeEvaluator", "check_finite_features", "default_embed_dist_fn",
           "extract_features", "ids_and_cams", "pairwise_distance", "rescore_distances", "score_candidates"]


def check_finite_features(batches: Sequence[torch.Tensor], source: str) -> None:
    """Raise :class:`NonFiniteError` naming ``source`` when a feature of ``batches`` is NaN or infinite.

    Ranking NaN distances would give arbitrary metrics without a word, so they are refused.
    """
    bad = sum(int((~torch.isfinite(b)).any(dim=-1).sum()) for b in batches if b.numel())
    if bad:
        total = sum(b.shape[0] for b in batches)
        raise NonFiniteError(f"{source}: {bad} of {total} feature vectors hold NaN or infinite values "
                             "(diverged weights, or mixed precision out of range?)")


def extract_features(
    model: nn.Module, data_loader: DataLoader, device: torch.device | str = "cpu", desc: str = "Extract features",
    progress: bool = True,
) -> "OrderedDict[str, torch.Tensor]":
    """Run ``model`` in eval mode over ``data_loader`` of ``(img, fname, pid, cam)`` batches.

    Returns an ordered dict file name -> float32 feature vector (on the CPU).

    Raises:
        NonFiniteError: a feature is NaN or infinite.
    """
    model.eval()
    features: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    with torch.inference_mode():
        for imgs, fnames, _, _ in tqdm(data_loader, desc=desc, leave=False, dynamic_ncols=True, disable=not progress):
            out = model(imgs.to(device, non_blocking=True)).float().cpu()
            check_finite_features([out], f"the features of {fnames[0]} and its batch")
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


def rescore_distances(
    distmat: torch.Tensor,
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    embed_model: nn.Module,
    embed_dist_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    topk: int = RESCORE_TOPK,
    chunk_size: int = 64,
    device: torch.device | str = "cpu",
    overwrite: bool = False,
) -> torch.Tensor:
    """Second cascade stage: re-score each query's first-stage top-k with the verification head.

    The top-k distances of each row are replaced by :func:`score_candidates`; every other item of
    the row is shifted by ``max(bar + 1 - d_k, 0)`` (``bar`` = the row's largest new score,
    ``d_k`` = the first-stage distance of its (k+1)-th item) so the re-scored items stay in front.
    ``embed_model`` must be on ``device``; the result is on ``distmat``'s device. With
    ``overwrite`` the result is written into ``distmat`` (float32) and returned: one
    (num_query, num_gallery) matrix in memory instead of two.
    """
    if overwrite and distmat.dtype != torch.float32:
        raise ValueError(f"overwrite needs a float32 distance matrix, not {distmat.dtype}")
    num_query, num_gallery = distmat.shape
    k = min(int(topk), num_gallery)
    if k <= 0 or num_query == 0:
        return distmat if overwrite else distmat.clone()
    top_idx, d_next = _smallest_k(distmat, k)
    scores = score_candidates(query_features, gallery_features, top_idx, embed_model, embed_dist_fn,
                              chunk_size, device).to(distmat.device)
    new = distmat if overwrite else distmat.to(torch.float32, copy=True)
    if d_next is not None:
        new.add_(torch.clamp(scores.max(1).values + 1.0 - d_next, min=0.0)[:, None])
    return new.scatter_(1, top_idx, scores)


def _smallest_k(distmat: torch.Tensor, k: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Columns of each row's k smallest values and each row's (k+1)-th smallest value (None when
    a row has only k values). Equal values across the k-th place may keep either item."""
    n = min(k + 1, distmat.shape[1])
    values, columns = torch.topk(distmat, n, dim=1, largest=False, sorted=True)
    return columns[:, :k], (values[:, k] if n > k else None)


def score_candidates(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    top_idx: torch.Tensor,
    embed_model: nn.Module,
    embed_dist_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    chunk_size: int = 64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``embed_dist_fn(embed_model(q_i, g_j))`` for each query i and each gallery index j in
    ``top_idx[i]``: a (num_query, k) float32 CPU tensor, ``chunk_size`` queries' pairs per call of
    the head. On the CPU an eval-mode square head read through the default function is computed
    by :func:`reid.fast_rescoring.folded_scores` instead (the same scores, 9x faster)."""
    fn = embed_dist_fn or default_embed_dist_fn
    qf, gf = query_features.float().cpu(), gallery_features.float().cpu()
    embed_model.eval()
    folded = folded_head(embed_model, fn) if torch.device(device).type == "cpu" else None
    num_query, k = top_idx.shape
    scores = torch.empty(num_query, k)
    with torch.inference_mode():
        if folded is not None:
            return folded_scores(qf, gf, top_idx.cpu(), *folded)
        step = max(1, chunk_size)
        for start in range(0, num_query, step):
            idx = top_idx[start:start + step].cpu()
            pairs_q = qf[start:start + idx.shape[0]].repeat_interleave(k, dim=0)
            logits = embed_model(pairs_q.to(device), gf[idx.reshape(-1)].to(device))
            scores[start:start + idx.shape[0]] = fn(logits).float().cpu().view(-1, k)
    return scores


class CascadeEvaluator:
    """Evaluates a Siamese re-ID model in two stages (the release's ``CascadeEvaluator.evaluate``).

    Args:
        base_model: the backbone producing pooled features.
        embed_model: the verification head scoring (query, gallery) feature pairs.
        embed_dist_fn: maps the head's logits to a distance (default: probability of 'different').
        device: where to run the networks.
        progress: show a progress bar while extracting features.
    """

    def __init__(
        self,
        base_model: nn.Module,
        embed_model: nn.Module,
        embed_dist_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        device: torch.device | str = "cpu",
        progress: bool = True,
    ) -> None:
        self.base_model = base_model
        self.embed_model = embed_model
        self.embed_dist_fn = embed_dist_fn
        self.device = device
        self.progress = progress

    def evaluate(
        self,
        data_loader: DataLoader,
        query: Sequence[Item],
        gallery: Sequence[Item],
        rerank_topk: int = RESCORE_TOPK,
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
        rerank_topk: int = RESCORE_TOPK,
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
        _check_finite_distances(distmat, query_features, gallery_features, "first-stage")
        results = {"first_stage": evaluate_rank(distmat, *ids_cams, cmc_config=config)}
        logger.info(format_results(results["first_stage"], f"{title}first stage (Euclidean distance)"))
        if second_stage:
            dist2 = rescore_distances(
                distmat, query_features, gallery_features, self.embed_model, self.embed_dist_fn,
                topk=rerank_topk, device=self.device,
                overwrite=overwrite_distmat and distmat.dtype == torch.float32,
            )
            _check_finite_distances(dist2, query_features, gallery_features, "second-stage")
            results["second_stage"] = evaluate_rank(dist2, *ids_cams, cmc_config=config)
            logger.info(format_results(
                results["second_stage"], f"{title}second stage (verification re-scoring of top {rerank_topk})"))
        return results


def _check_finite_distances(distmat: torch.Tensor, qf: torch.Tensor, gf: torch.Tensor, stage: str) -> None:
    """Refuse NaN or infinite distances (finite but huge features overflow the squared distance)."""
    if distmat.numel() and not bool(torch.isfinite(distmat).all()):
        largest = max((float(f.abs().max()) for f in (qf, gf) if f.numel()), default=0.0)
        raise NonFiniteError(f"the {stage} distances hold NaN or infinite values (features as large as "
                             f"{largest:.3g}: diverged weights, or mixed precision on a degenerate batch?)")


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
