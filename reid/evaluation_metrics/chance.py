"""What a random ranking scores: the chance levels every reported mAP and top-1 stands next to."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

ArrayLike = Any  # numpy array, torch tensor or sequence


def expected_random_ap(num_matches: np.ndarray, num_items: np.ndarray) -> np.ndarray:
    """Expected average precision of a uniformly random ranking of ``num_items`` items, of which
    ``num_matches`` are true matches (elementwise; every count >= 1, matches <= items).

    A match at rank r has, on average, (r - 1)(m - 1)/(n - 1) other matches above it, so its
    expected precision is the mean over r of [1 + (r - 1)(m - 1)/(n - 1)] / r, which is
    H_n / n + (m - 1)/(n - 1) (1 - H_n / n) with H_n the n-th harmonic number.
    """
    m = np.asarray(num_matches, dtype=np.float64)
    n = np.asarray(num_items, dtype=np.float64)
    harmonic = np.array([np.sum(1.0 / np.arange(1, k + 1)) for k in n.astype(np.int64).ravel()]).reshape(n.shape)
    h_over_n = harmonic / n
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = h_over_n + np.where(n > 1, (m - 1) / (n - 1), 0.0) * (1 - h_over_n)
    return ap


def chance_levels(query_ids: ArrayLike, gallery_ids: ArrayLike, query_cams: ArrayLike,
                  gallery_cams: ArrayLike) -> Dict[str, float]:
    """Expected mAP and top-1 of a random ranking under the open-reid/Market-1501 rule of
    :func:`reid.evaluation_metrics.evaluate_rank` (gallery items with the query's identity and
    camera are ignored; queries without a true match are left out), as fractions."""
    qids, gids = np.asarray(query_ids).ravel(), np.asarray(gallery_ids).ravel()
    qcams, gcams = np.asarray(query_cams).ravel(), np.asarray(gallery_cams).ravel()
    keep = (gids[None, :] != qids[:, None]) | (gcams[None, :] != qcams[:, None])
    match = (gids[None, :] == qids[:, None]) & keep
    n, m = keep.sum(1), match.sum(1)
    valid = m > 0
    if not valid.any():
        return {"mAP": 0.0, "top1": 0.0}
    return {"mAP": float(expected_random_ap(m[valid], n[valid]).mean()),
            "top1": float((m[valid] / n[valid]).mean())}
