"""Procedural scenes for SynthRef: coloured shapes on varied backgrounds with pixel-exact instance masks.

Every object is a polygon with integer vertices, rasterised with PIL (no anti-aliasing) into an
instance map: a uint8 HxW array where pixel value k + 1 means "object k is visible here" and 0 is
background. Objects are drawn in order, so a later object hides what it covers; the instance map holds
the VISIBLE pixels, and the RGB image is painted from it, so image and masks agree pixel for pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from stamp.data.synthref.backgrounds import draw_background, paint_objects

# Eight colours far apart in RGB (the closest pair, purple and blue, is about 138 apart).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 190, 50),
    "blue": (35, 70, 235),
    "yellow": (245, 220, 25),
    "purple": (170, 50, 215),
    "cyan": (30, 215, 225),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
KINDS: tuple[str, ...] = (
    "circle",
    "ellipse",
    "triangle",
    "square",
    "diamond",
    "pentagon",
    "hexagon",
    "star",
    "cross",
)
CORNERS: dict[str, int] = {
    "circle": 0,
    "ellipse": 0,
    "triangle": 3,
    "square": 4,
    "diamond": 4,
    "pentagon": 5,
    "hexagon": 6,
    "star": 10,
    "cross": 12,
}
SIZES: tuple[str, ...] = ("small", "large")
# Object diameter (circumscribed circle) as a fraction of the image's shorter side. Small objects are
# >= 40 px across at 224 px; the gap between the classes keeps "small"/"large" visually clear.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.18, 0.23), "large": (0.32, 0.42)}
# Colour-shape pairs that never appear in train/val/test scenes; only the compositional split has them.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("circle", "purple"),
        ("ellipse", "yellow"),
        ("triangle", "blue"),
        ("square", "green"),
        ("diamond", "red"),
        ("pentagon", "cyan"),
        ("hexagon", "white"),
        ("star", "black"),
        ("cross", "purple"),
    }
)


@dataclass
class SceneObject:
    """One shape in a scene. Geometry is in pixels of the scene image; `bbox` is the visible box
    [x0, y0, x1, y1) (x1/y1 exclusive), `centre` its middle, `area` the pixel count of the whole shape,
    `visible_area` the pixels left after occlusion by later objects."""

    index: int
    kind: str
    colour: str
    size: str
    diameter: float
    rotation: float
    bbox: tuple[int, int, int, int]
    centre: tuple[float, float]
    area: int
    visible_area: int
    polygon: list[tuple[int, int]] = field(repr=False)

    @property
    def corners(self) -> int:
        """Number of corners of the shape kind (0 for circle and ellipse)."""
        return CORNERS[self.kind]

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-serialisable) with `corners` added."""
        return {
            "index": self.index,
            "kind": self.kind,
            "colour": self.colour,
            "size": self.size,
            "diameter": self.diameter,
            "rotation": self.rotation,
            "bbox": list(self.bbox),
            "centre": list(self.centre),
            "area": self.area,
            "visible_area": self.visible_area,
            "corners": self.corners,
            "polygon": [list(p) for p in self.polygon],
        }


@dataclass
class Scene:
    """A rendered scene: RGB uint8 image (HxWx3), instance map (HxW uint8, k + 1 = object k), objects."""

    width: int
    height: int
    background: str
    objects: list[SceneObject]
    image: np.ndarray = field(repr=False)
    instance_map: np.ndarray = field(repr=False)

    def mask_of(self, indices: list[int] | tuple[int, ...]) -> np.ndarray:
        """Union of the visible pixels of the given objects, as a 0/1 uint8 HxW mask."""
        if len(indices) == 1:
            return (self.instance_map == indices[0] + 1).view(np.uint8)
        lut = np.zeros(256, dtype=np.uint8)
        for i in indices:
            lut[i + 1] = 1
        return lut[self.instance_map]

    def to_dict(self) -> dict:
        """Structured description (no pixel arrays): size, background and every object's attributes."""
        return {
            "width": self.width,
            "height": self.height,
            "background": self.background,
            "objects": [o.to_dict() for o in self.objects],
        }


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are sampled.

    Attributes:
        image_size_range: (min, max) pixels for width and height, drawn independently (varied aspect).
        max_objects: at most this many objects (at least 1); placement failures can give fewer.
        min_visible: fraction of each object's pixels that must stay visible after occlusion
            (1.0 = objects never overlap).
        allowed_pairs: None for every colour-shape pair, else the set of (kind, colour) pairs allowed.
        required_pairs: if set, the first object is drawn from these pairs (compositional split).
    """

    image_size_range: tuple[int, int] = (224, 448)
    max_objects: int = 8
    min_visible: float = 0.6
    allowed_pairs: frozenset[tuple[str, str]] | None = None
    required_pairs: frozenset[tuple[str, str]] | None = None

    def __post_init__(self) -> None:
        lo, hi = self.image_size_range
        if not 64 <= lo <= hi:
            raise ValueError(f"image_size_range must satisfy 64 <= min <= max, got {self.image_size_range}")
        if not 1 <= self.max_objects <= 254:
            raise ValueError(f"max_objects must be in 1..254, got {self.max_objects}")
        if not 0.0 < self.min_visible <= 1.0:
            raise ValueError(f"min_visible must be in (0, 1], got {self.min_visible}")


def unit_polygon(kind: str) -> np.ndarray:
    """Vertices (K, 2) of `kind` with circumradius 1, centred on the origin, y pointing down."""
    return _UNIT_POLYGONS[kind]


def _regular(n: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _build_unit_polygons() -> dict[str, np.ndarray]:
    star = _regular(10)
    star[1::2] *= 0.45
    a = 0.33
    cross = np.array(
        [
            (-a, -1),
            (a, -1),
            (a, -a),
            (1, -a),
            (1, a),
            (a, a),
            (a, 1),
            (-a, 1),
            (-a, a),
            (-1, a),
            (-1, -a),
            (-a, -a),
        ]
    )
    ellipse = _regular(48)
    ellipse[:, 1] *= 0.55
    return {
        "circle": _regular(48),
        "ellipse": ellipse,
        "triangle": _regular(3),
        "square": _regular(4, phase=np.pi / 4),
        "diamond": np.array([(0.0, -1.0), (0.6, 0.0), (0.0, 1.0), (-0.6, 0.0)]),
        "pentagon": _regular(5),
        "hexagon": _regular(6),
        "star": star,
        "cross": cross,
    }


_UNIT_POLYGONS = _build_unit_polygons()
# Rotation range in degrees: square and diamond stay near upright so neither looks like the other.
_ROTATION_RANGE = {"circle": 0.0, "square": 15.0, "diamond": 15.0}


def shape_vertices(kind: str, diameter: float, rotation: float) -> np.ndarray:
    """Integer vertices (K, 2) of a shape of `diameter` pixels rotated by `rotation` degrees, centred at 0."""
    th = np.deg2rad(rotation)
    rot = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
    return np.rint(unit_polygon(kind) @ rot * (diameter / 2.0)).astype(np.int64)


def rasterise(vertices: np.ndarray, width: int, height: int) -> tuple[np.ndarray, int, int]:
    """Fill the integer polygon (fill + outline, boundary included, as ReasonSeg's cv2.fillPoly +
    polylines) and return its tight boolean crop (crop, x0, y0): crop[r, c] is pixel (x0 + c, y0 + r).

    The polygon is drawn on a full width x height canvas at its absolute coordinates: PIL's scan
    conversion is not exactly translation invariant, and this way a loader that draws the same
    polygon on the image gets the same pixels.
    """
    x0, y0 = (int(v) for v in vertices.min(axis=0))
    x1, y1 = (int(v) + 1 for v in vertices.max(axis=0))
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(vertices.ravel().tolist(), fill=1, outline=1)
    return np.asarray(canvas.crop((x0, y0, x1, y1)), dtype=bool), x0, y0


def sample_scene(rng: np.random.Generator, config: SceneConfig, min_objects: int = 1) -> Scene:
    """Draw and render a random scene with about `min_objects`..`config.max_objects` objects
    (placement can drop an object that finds no room); deterministic given the state of `rng`."""
    lo, hi = config.image_size_range
    w, h = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
    n_objects = int(rng.choice(np.arange(1, 9), p=_N_OBJECT_P))
    n_objects = min(config.max_objects, max(min_objects, n_objects))
    specs = _sample_specs(rng, config, n_objects, min(w, h))
    instance_map = np.zeros((h, w), dtype=np.uint8)
    placed: list[dict] = []
    for spec in specs:
        item = _place(rng, spec, instance_map, placed, config.min_visible)
        if item is not None:
            placed.append(item)
    objects = [_finalise(k, item, instance_map) for k, item in enumerate(placed)]
    background, bg_name = draw_background(rng, h, w)
    image = paint_objects(rng, background, instance_map, [COLOURS[item["colour"]] for item in placed])
    return Scene(w, h, bg_name, objects, image, instance_map)


# More mid-sized scenes than empty or crowded ones.
_N_OBJECT_P = np.array([0.06, 0.12, 0.16, 0.17, 0.16, 0.13, 0.11, 0.09])


def _sample_specs(rng: np.random.Generator, config: SceneConfig, n: int, short_side: int) -> list[dict]:
    """Attributes of each object. A scene often uses only a few colours and kinds, so same-colour
    and same-shape distractors are common and the model has to look at both."""
    colours = list(COLOURS)
    n_col = int(rng.integers(1, 4)) if rng.random() < 0.6 else len(colours)
    n_kind = int(rng.integers(2, 5)) if rng.random() < 0.4 else len(KINDS)
    col_palette = [colours[i] for i in rng.permutation(len(colours))[:n_col]]
    kind_palette = [KINDS[i] for i in rng.permutation(len(KINDS))[:n_kind]]
    specs = []
    for k in range(n):
        if k == 0 and config.required_pairs:
            pairs = sorted(config.required_pairs)
            kind, colour = pairs[int(rng.integers(len(pairs)))]
        else:
            kind, colour = _draw_pair(rng, config, kind_palette, col_palette)
        size = SIZES[int(rng.integers(2))]
        lo, hi = SIZE_RANGES[size]
        limit = _ROTATION_RANGE.get(kind, 180.0)
        specs.append(
            {
                "kind": kind,
                "colour": colour,
                "size": size,
                "diameter": float(rng.uniform(lo, hi) * short_side),
                "rotation": float(rng.uniform(-limit, limit)),
            }
        )
    return specs


def _draw_pair(
    rng: np.random.Generator, config: SceneConfig, kinds: list[str], cols: list[str]
) -> tuple[str, str]:
    for _ in range(50):
        kind, colour = kinds[int(rng.integers(len(kinds)))], cols[int(rng.integers(len(cols)))]
        if config.allowed_pairs is None or (kind, colour) in config.allowed_pairs:
            return kind, colour
    allowed = sorted(config.allowed_pairs or ())
    return allowed[int(rng.integers(len(allowed)))]


def _place(
    rng: np.random.Generator, spec: dict, instance_map: np.ndarray, placed: list[dict], min_visible: float
) -> dict | None:
    """Try random positions; accept the first where every earlier object keeps `min_visible` of its
    pixels and no same-colour object touches (their shared border would be invisible)."""
    h, w = instance_map.shape
    rel = shape_vertices(spec["kind"], spec["diameter"], spec["rotation"])
    (rx0, ry0), (rx1, ry1) = rel.min(axis=0), rel.max(axis=0)
    if rx1 - rx0 >= w or ry1 - ry0 >= h:
        return None
    same_colour = {k + 1 for k, p in enumerate(placed) if p["colour"] == spec["colour"]}
    for _ in range(30):
        cx = int(rng.integers(-rx0, w - rx1))
        cy = int(rng.integers(-ry0, h - ry1))
        crop, x0, y0 = rasterise(rel + (cx, cy), w, h)
        ch, cw = crop.shape
        covered = np.bincount(instance_map[y0 : y0 + ch, x0 : x0 + cw][crop], minlength=len(placed) + 1)
        if any(p["visible"] - covered[k + 1] < min_visible * p["area"] for k, p in enumerate(placed)):
            continue
        if same_colour and _touches(instance_map, crop, x0, y0, placed, same_colour):
            continue
        instance_map[y0 : y0 + ch, x0 : x0 + cw][crop] = len(placed) + 1
        for k, p in enumerate(placed):
            p["visible"] -= int(covered[k + 1])
        area = int(crop.sum())
        return {
            **spec,
            "polygon": rel + (cx, cy),
            "area": area,
            "visible": area,
            "box": (x0, y0, x0 + cw, y0 + ch),
        }
    return None


def _touches(
    instance_map: np.ndarray, crop: np.ndarray, x0: int, y0: int, placed: list[dict], labels: set[int]
) -> bool:
    """Whether the crop, grown by 3 px, meets any pixel of the objects labelled `labels` (k + 1)."""
    pad = 3
    h, w = instance_map.shape
    gx0, gy0 = x0 - pad, y0 - pad
    gx1, gy1 = x0 + crop.shape[1] + pad, y0 + crop.shape[0] + pad
    near = False
    for lab in labels:
        bx0, by0, bx1, by1 = placed[lab - 1]["box"]
        near = near or (bx0 < gx1 and gx0 < bx1 and by0 < gy1 and gy0 < by1)
    if not near:  # cheap exit: no same-colour box within reach
        return False
    grown = _dilate(np.pad(crop, pad), pad)
    sx0, sy0, sx1, sy1 = max(gx0, 0), max(gy0, 0), min(gx1, w), min(gy1, h)
    region = instance_map[sy0:sy1, sx0:sx1][grown[sy0 - gy0 : sy1 - gy0, sx0 - gx0 : sx1 - gx0]]
    return bool(np.isin(region, list(labels)).any())


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Square dilation of a boolean array by `r` pixels (separable shifted ORs; borders not wrapped)."""
    rows = mask.copy()
    for s in range(1, r + 1):
        rows[s:] |= mask[:-s]
        rows[:-s] |= mask[s:]
    out = rows.copy()
    for s in range(1, r + 1):
        out[:, s:] |= rows[:, :-s]
        out[:, :-s] |= rows[:, s:]
    return out


def _finalise(k: int, item: dict, instance_map: np.ndarray) -> SceneObject:
    """Measure the visible box of object k from the instance map."""
    x0, y0, x1, y1 = item["box"]
    ys, xs = np.nonzero(instance_map[y0:y1, x0:x1] == k + 1)
    bbox = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
    centre = ((bbox[0] + bbox[2]) / 2.0, (bbox[1] + bbox[3]) / 2.0)
    return SceneObject(
        index=k,
        kind=item["kind"],
        colour=item["colour"],
        size=item["size"],
        diameter=round(item["diameter"], 2),
        rotation=round(item["rotation"], 2),
        bbox=bbox,
        centre=centre,
        area=item["area"],
        visible_area=item["visible"],
        polygon=[tuple(p) for p in item["polygon"].tolist()],
    )
