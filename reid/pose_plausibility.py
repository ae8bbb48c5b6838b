"""Whether a BlazePose skeleton can be the person a re-ID crop is framed on.

BlazePose finds a "person" in crops that show none (a wheel, a lamp, a window) and then places a
full skeleton there. Such skeletons have tell-tale signs, checked here on the 33 predicted
landmarks (normalised to the crop, including those predicted outside it):

- the detector's score is low;
- the body is small: from the nose to the ankles it spans a fraction of the crop's height, while
  a re-ID crop shows one person from head to feet (or a body cut by the crop's lower edge, whose
  predicted legs then reach below it);
- the vertical order is wrong: nose, shoulders, hips, knees and ankles are not top to bottom;
- the shoulders are not visible, or the body's centre lies outside the crop.

Torch-free, like :mod:`reid.pose_estimation`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from reid.errors import ConfigError

DEFAULT_MIN_HEIGHT_FRACTION = 0.5
DEFAULT_MIN_SHOULDER_VISIBILITY = 0.5

# BlazePose landmark pairs (left, right) of the body chain, top to bottom; the nose stands alone.
_CHAIN: Tuple[Tuple[str, Tuple[int, ...]], ...] = (
    ("nose", (0,)), ("shoulders", (11, 12)), ("hips", (23, 24)), ("knees", (25, 26)), ("ankles", (27, 28)),
)
_SHOULDERS = (11, 12)
_TORSO = (11, 12, 23, 24)


@dataclass(frozen=True)
class PlausibilityLimits:
    """Thresholds of :func:`implausibility`.

    Attributes:
        min_height_fraction: the nose-to-ankles extent of the predicted body, as a fraction of the
            crop's height, must reach this.
        min_shoulder_visibility: the mean BlazePose visibility of the two shoulders must reach this.
        check_order: require nose, shoulders, hips, knees and ankles from top to bottom (only the
            points inside the crop's rows are compared; at least two must be inside).
    """
    min_height_fraction: float = DEFAULT_MIN_HEIGHT_FRACTION
    min_shoulder_visibility: float = DEFAULT_MIN_SHOULDER_VISIBILITY
    check_order: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_height_fraction <= 10.0:
            raise ConfigError(f"--min-height-fraction must be in [0, 10], got {self.min_height_fraction}")
        if not 0.0 <= self.min_shoulder_visibility <= 1.0:
            raise ConfigError(f"--min-shoulder-visibility must be in [0, 1], got {self.min_shoulder_visibility}")


def chain_rows(landmarks33: np.ndarray) -> List[float]:
    """Rows (normalised to the crop) of nose, shoulders, hips, knees and ankles; pairs averaged."""
    y = np.asarray(landmarks33, dtype=np.float64)[:, 1]
    return [float(y[list(idx)].mean()) for _, idx in _CHAIN]


def implausibility(landmarks33: np.ndarray, score: float, min_score: float,
                   limits: PlausibilityLimits = PlausibilityLimits()) -> Optional[str]:
    """Why a skeleton cannot be the crop's person, or ``None`` when it can.

    Args:
        landmarks33: ``(33, 3)`` or ``(33, 4)`` BlazePose landmarks ``(x, y, [z,] visibility)``
            with x and y normalised to the crop (0..1 inside it, beyond it for points predicted
            outside).
        score: the person detector's score of this skeleton.
        min_score: the lowest acceptable detector score.
        limits: the other thresholds.

    Returns:
        A short reason (e.g. ``"height 0.27 of the crop < 0.50"``) or ``None``.
    """
    lm = np.asarray(landmarks33, dtype=np.float64)
    if not np.isfinite(lm).all():
        return "non-finite landmarks"
    if score < min_score:
        return f"detector score {score:.2f} < {min_score:.2f}"
    visibility = lm[:, -1]
    shoulders = float(visibility[list(_SHOULDERS)].mean())
    if shoulders < limits.min_shoulder_visibility:
        return f"shoulder visibility {shoulders:.2f} < {limits.min_shoulder_visibility:.2f}"
    centre = float(lm[list(_TORSO), 0].mean())
    if not 0.0 <= centre < 1.0:
        return f"body centre outside the crop (x = {centre:.2f} of its width)"
    rows = chain_rows(lm)
    if limits.check_order:
        inside = [(name, r) for (name, _), r in zip(_CHAIN, rows) if 0.0 <= r < 1.0]
        if len(inside) < 2:
            return "fewer than two of nose, shoulders, hips, knees, ankles inside the crop"
        for (upper, r_up), (lower, r_low) in zip(inside, inside[1:]):
            if r_low <= r_up:
                return f"vertical order: {lower} not below {upper}"
    height = abs(rows[-1] - rows[0])
    if height < limits.min_height_fraction:
        return f"height {height:.2f} of the crop < {limits.min_height_fraction:.2f}"
    return None
