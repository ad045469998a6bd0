"""Scene rendering: variety, sizes relative to the 28-px cells, occlusion control."""

from __future__ import annotations

import collections

import numpy as np

from stamp.data.synthref import COLOURS, KINDS, SceneConfig, sample_scene
from stamp.data.synthref.backgrounds import BACKGROUNDS
from stamp.data.synthref.scenes import CORNERS, unit_polygon


def test_scenes_cover_every_kind_colour_background() -> None:
    cfg = SceneConfig(image_size_range=(224, 224))
    seen = collections.defaultdict(set)
    for i in range(120):
        scene = sample_scene(np.random.default_rng(i), cfg)
        assert scene.image.shape == (224, 224, 3) and scene.instance_map.shape == (224, 224)
        assert 1 <= len(scene.objects) <= 8
        seen["background"].add(scene.background)
        for o in scene.objects:
            seen["kind"].add(o.kind)
            seen["colour"].add(o.colour)
            seen["size"].add(o.size)
            assert o.diameter >= 40  # small objects are still >= 40 px across at 224 px
    assert seen["kind"] == set(KINDS) and seen["colour"] == set(COLOURS)
    assert seen["background"] == set(BACKGROUNDS) and seen["size"] == {"small", "large"}


def test_image_size_range_and_no_occlusion_option() -> None:
    cfg = SceneConfig(image_size_range=(300, 340), min_visible=1.0)
    for i in range(30):
        scene = sample_scene(np.random.default_rng(i), cfg)
        assert 300 <= scene.width <= 340 and 300 <= scene.height <= 340
        assert all(o.visible_area == o.area for o in scene.objects)


def test_corner_table_matches_the_polygons() -> None:
    for kind in ("triangle", "square", "diamond", "pentagon", "hexagon", "star", "cross"):
        assert len(unit_polygon(kind)) == CORNERS[kind]
    assert CORNERS["circle"] == CORNERS["ellipse"] == 0
