"""The synthetic pedestrian dataset: rendered people with exact COCO-18 keypoints.

Modules: :mod:`.appearance` (identities, cameras, views), :mod:`.geometry` (3-D bodies, projection,
keypoints), :mod:`.drawing` (one image), :mod:`.dataset` (settings, split plan, writing the layout).

Each identity has a fixed appearance (shirt and trouser colours and pattern, sleeves, skin, hair,
body proportions, hat, bag) drawn from palettes shared by all identities, so no single colour
identifies a person. Each image varies the pose (walking phase, facing direction), and each camera
has its own background, lighting / colour cast, blur, noise, elevation and preferred walking
directions; scale, position and occasional occluders vary per image.

Bodies are posed in 3-D (person-centred axes: right, up, forward), turned by the facing angle,
projected orthographically with the camera's elevation and drawn far to near at twice the output
size, then averaged down 2 x 2. Keypoints are the projected joints mapped into the saved image; a
keypoint is -1 when it falls outside the image or when something else is drawn over it (the torso
over a far arm, hair or an occluder, the back of the head over the eyes, ...).

The layout written by :func:`generate_synthetic_dataset` is the prepared open-reid one
(:mod:`reid.utils.data.dataset`) plus ``poses/``: one split whose trainval identities (the first
half) are disjoint from the test identities, query pids = test pids, a few distractor identities
only in the gallery, and the official-protocol lists (one query image per camera of each test
identity, at most a quarter of its images).
"""
from reid.datasets.synthetic_render.appearance import (
    BAGS, GENERATOR_VERSION, HAIR_COLOURS, NUM_PARTS, PATTERNS, RGB, SHIRT_COLOURS, SHOE_COLOURS, SKIN_TONES,
    SUPERSAMPLE, TROUSER_COLOURS, Appearance, CameraStyle, Rendering, View, random_appearance, random_camera,
    random_view,
)
from reid.datasets.synthetic_render.dataset import (
    Job, SyntheticConfig, _rng, encode_jpeg, generate_synthetic_dataset, plan_synthetic, render_image,
)
from reid.datasets.synthetic_render.drawing import render_person

__all__ = [
    "Appearance", "BAGS", "CameraStyle", "GENERATOR_VERSION", "HAIR_COLOURS", "Job", "NUM_PARTS", "PATTERNS",
    "RGB", "Rendering", "SHIRT_COLOURS", "SHOE_COLOURS", "SKIN_TONES", "SUPERSAMPLE", "SyntheticConfig",
    "TROUSER_COLOURS", "View", "encode_jpeg", "generate_synthetic_dataset", "plan_synthetic", "random_appearance",
    "random_camera", "random_view", "render_image", "render_person",
]
