"""Evaluation metrics: re-ID ranking (mAP, CMC) and classification accuracy."""
from reid.evaluation_metrics.classification import accuracy
from reid.evaluation_metrics.ranking import (
    CMC_CONFIGS,
    SINGLE_GALLERY_SHOT_DRAWS,
    cmc,
    evaluate_rank,
    format_results,
    mean_ap,
)

__all__ = [
    "CMC_CONFIGS",
    "SINGLE_GALLERY_SHOT_DRAWS",
    "accuracy",
    "cmc",
    "evaluate_rank",
    "format_results",
    "mean_ap",
]
