"""generate_pose_map must equal the release's maps: a 2-D delta through scipy's gaussian_filter,
divided by its maximum (the release's pose maps), everywhere, borders included."""
import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from reid.utils.data.preprocessor import generate_pose_map


def release_map(row, col, height, width, sigma):
    """The release's construction of one keypoint map (the independent reference)."""
    delta = np.zeros((height, width))
    delta[row, col] = 1.0
    filtered = gaussian_filter(delta, sigma)
    return filtered / filtered.max()


def edge_positions(length):
    """On each border, 1..5 px from each border, and the middle."""
    near = set(range(0, 6)) | set(range(length - 6, length)) | {length // 2}
    return sorted(p for p in near if 0 <= p < length)


@pytest.mark.parametrize("height,width", [(256, 128), (128, 64), (20, 10)])
@pytest.mark.parametrize("sigma", [4, 5, 6])
def test_equals_release_maps_at_borders_corners_and_interior(height, width, sigma):
    points = [(r, c) for r in edge_positions(height) for c in edge_positions(width)]
    maps = generate_pose_map(np.array(points), height, width, sigma)
    assert maps.dtype == np.float32 and maps.shape == (len(points), height, width)
    for k, (r, c) in enumerate(points):
        np.testing.assert_allclose(maps[k], release_map(r, c, height, width, sigma), rtol=0, atol=1e-6,
                                   err_msg=f"keypoint ({r}, {c})")


def test_random_keypoints_match_release_in_one_call():
    rng = np.random.default_rng(0)
    points = np.stack([rng.integers(0, 256, 18), rng.integers(0, 128, 18)], axis=1)
    maps = generate_pose_map(points, 256, 128, 5)
    for k, (r, c) in enumerate(points):
        np.testing.assert_allclose(maps[k], release_map(r, c, 256, 128, 5), rtol=0, atol=1e-6)


def test_interior_values_by_hand():
    # Far from the borders the normalised map is exp(-d^2 / 2 sigma^2), cut at radius 20.
    maps = generate_pose_map([[128, 64]], 256, 128, 5)[0]
    assert maps[128, 64] == 1.0
    assert maps[131, 64] == pytest.approx(math.exp(-9 / 50), abs=1e-7)
    assert maps[131, 60] == pytest.approx(math.exp(-(9 + 16) / 50), abs=1e-7)
    assert maps[148, 64] == pytest.approx(math.exp(-400 / 50), abs=1e-7)
    assert maps[149, 64] == 0.0 and maps[128, 85] == 0.0 and maps[107, 64] == 0.0


def test_border_values_by_hand():
    # On row 0, reflection folds the kernel tail back: the row profile at i is
    # (g(i) + g(i + 1)) / (g(0) + g(1)) with g(t) = exp(-t^2 / 2 sigma^2), while the column
    # profile stays the plain Gaussian.
    def g(t):
        return math.exp(-t * t / 50)

    maps = generate_pose_map([[0, 64]], 256, 128, 5)[0]
    for i in (0, 1, 3, 10, 19):
        assert maps[i, 64] == pytest.approx((g(i) + g(i + 1)) / (g(0) + g(1)), abs=1e-7)
    assert maps[20, 64] == pytest.approx(g(20) / (g(0) + g(1)), abs=1e-7)
    assert maps[21, 64] == 0.0
    assert maps[2, 60] == pytest.approx((g(2) + g(3)) / (g(0) + g(1)) * g(4), abs=1e-7)
    # A plain Gaussian would put exp(-1/50) = 0.980 next to the peak; the folded map has 0.961.
    assert abs(maps[1, 64] - g(1)) > 0.015


def test_missing_and_out_of_image_keypoints_give_zero_maps():
    points = [[10, 10], [-1, -1], [-1, 5], [5, -1], [64, 10], [10, 32], [300, 300], [63, 31]]
    maps = generate_pose_map(points, 64, 32, 5)
    for k in (1, 2, 3, 4, 5, 6):
        assert not maps[k].any()
    np.testing.assert_allclose(maps[0], release_map(10, 10, 64, 32, 5), atol=1e-6)
    np.testing.assert_allclose(maps[7], release_map(63, 31, 64, 32, 5), atol=1e-6)


def test_float_coordinates_are_truncated():
    maps = generate_pose_map([[10.9, 7.2], [-0.5, 3.0]], 64, 32, 5)
    np.testing.assert_allclose(maps[0], release_map(10, 7, 64, 32, 5), atol=1e-6)
    assert not maps[1].any()


def test_cached_profiles_are_not_modified_by_missing_keypoints():
    generate_pose_map([[-1, -1], [3, 3]], 40, 20, 5)
    # The missing keypoint was looked up at index 0 and masked; row/col 0 must still be intact.
    again = generate_pose_map([[0, 0]], 40, 20, 5)
    np.testing.assert_allclose(again[0], release_map(0, 0, 40, 20, 5), atol=1e-6)


def test_bad_shape_is_rejected():
    with pytest.raises(ValueError):
        generate_pose_map(np.zeros((18, 3)), 64, 32)
