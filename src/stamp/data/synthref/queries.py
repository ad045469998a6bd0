"""Structured referring queries over a SynthRef scene, and how they resolve to objects.

A query is data (frozen dataclasses that convert to and from plain dicts, stored in `meta`). SynthRef
builds candidate queries, resolves them here and keeps only unambiguous ones; the wording lives in
`templates`. The rules (documented on `resolve`) are the benchmark's specification: a test re-implements
them independently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

from stamp.data.synthref.scenes import Scene, SceneObject

OPS = ("select", "relation", "extreme", "ordinal", "same_as", "corners")
RELATIONS = ("left_of", "right_of", "above", "below")
EXTREMES = (
    "largest",
    "smallest",
    "leftmost",
    "rightmost",
    "topmost",
    "bottommost",
    "most_corners",
    "fewest_corners",
)
DIRECTIONS = ("from_left", "from_right", "from_top", "from_bottom")
ATTRS = ("kind", "colour", "size")
# The largest (smallest) object must beat the runner-up by this area ratio to be "the largest".
AREA_RATIO = 1.25
# Positions compared by centre must differ by this fraction of the image width (height).
POSITION_MARGIN = 0.08
# A star has 10 corners and a cross 12, but people may count 5 points or 4 arms: corner questions
# never involve them.
UNCLEAR_CORNER_KINDS = frozenset({"star", "cross"})


@dataclass(frozen=True)
class Filter:
    """Attribute constraints; None means "any"."""

    kind: str | None = None
    colour: str | None = None
    size: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        """Whether `obj` has every attribute this filter sets."""
        return all(getattr(self, a) in (None, getattr(obj, a)) for a in ATTRS)

    def to_dict(self) -> dict:
        """Plain-dict form."""
        return {"kind": self.kind, "colour": self.colour, "size": self.size}


@dataclass(frozen=True)
class Query:
    """A referring query.

    Attributes:
        op: "select" (objects matching `filter`), "relation" (matching `filter` and in `relation` to the
            unique `anchor`), "extreme" (the `extreme` of the `filter` group), "ordinal" (the `n`-th of
            the group counting in `direction`), "same_as" (sharing `attr` with the unique `anchor`),
            "corners" (exactly `n` corners).
        plural: the expression refers to every match ("all green shapes") rather than one object.
    """

    op: str
    filter: Filter = field(default_factory=Filter)
    relation: str | None = None
    anchor: Filter | None = None
    extreme: str | None = None
    direction: str | None = None
    n: int = 0
    attr: str | None = None
    plural: bool = False

    def to_dict(self) -> dict:
        """Plain-dict form (what `meta` stores)."""
        return {
            "op": self.op,
            "filter": self.filter.to_dict(),
            "relation": self.relation,
            "anchor": None if self.anchor is None else self.anchor.to_dict(),
            "extreme": self.extreme,
            "direction": self.direction,
            "n": self.n,
            "attr": self.attr,
            "plural": self.plural,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Query:
        """Inverse of `to_dict`."""
        anchor = data.get("anchor")
        return cls(
            **{
                **data,
                "filter": Filter(**data.get("filter") or {}),
                "anchor": None if anchor is None else Filter(**anchor),
            }
        )

    def filters(self) -> list[Filter]:
        """Every filter the query mentions (target and anchor)."""
        return [self.filter] + ([self.anchor] if self.anchor is not None else [])


@dataclass(frozen=True)
class Resolution:
    """The objects a query selects, and whether a careful human could disagree (then it is not used)."""

    indices: tuple[int, ...]
    ambiguous: bool = False

    @property
    def single(self) -> bool:
        """Exactly one object, unambiguously."""
        return not self.ambiguous and len(self.indices) == 1


AMBIGUOUS = Resolution((), True)


def resolve(scene: Scene, query: Query) -> Resolution:
    """Resolve `query` against `scene`.

    Rules: anchors must match exactly one object, which is never a target itself. Relations use the
    visible boxes [x0, y0, x1, y1): A is left of B if A.x1 <= B.x0, not left of B if A's centre x >= B's,
    otherwise the case is borderline and the query ambiguous (likewise for the other directions).
    Extremes and ordinals need a group of at least two; area extremes need the winner to beat the
    runner-up by AREA_RATIO; positional ones need the centre gaps next to the chosen rank to be at least
    POSITION_MARGIN of the image side; corner counts must differ, and corner questions are ambiguous
    when a star or cross is among the compared objects.
    """
    objs = scene.objects
    if query.op == "select":
        return Resolution(tuple(o.index for o in objs if query.filter.matches(o)))
    if query.op == "corners":
        group = [o for o in objs if query.filter.matches(o)]
        if any(o.kind in UNCLEAR_CORNER_KINDS for o in group):
            return AMBIGUOUS
        return Resolution(tuple(o.index for o in group if o.corners == query.n))
    if query.op in ("relation", "same_as"):
        return _resolve_anchored(scene, query)
    group = [o for o in objs if query.filter.matches(o)]
    if len(group) < 2:
        return AMBIGUOUS
    if query.op == "extreme":
        return _resolve_extreme(scene, query.extreme, group)
    if query.op == "ordinal":
        return _resolve_ordinal(scene, query, group)
    raise ValueError(f"unknown query op {query.op!r}")


def unique_object(scene: Scene, flt: Filter) -> SceneObject | None:
    """The only object matching `flt`, or None when zero or several match."""
    found = [o for o in scene.objects if flt.matches(o)]
    return found[0] if len(found) == 1 else None


def _resolve_anchored(scene: Scene, query: Query) -> Resolution:
    anchor = unique_object(scene, query.anchor) if query.anchor is not None else None
    if anchor is None:
        return AMBIGUOUS
    out = []
    for o in scene.objects:
        if o.index == anchor.index or not query.filter.matches(o):
            continue
        if query.op == "same_as":
            if getattr(o, query.attr) == getattr(anchor, query.attr):
                out.append(o.index)
            continue
        verdict = relation_holds(o, anchor, query.relation)
        if verdict is None:
            return AMBIGUOUS
        if verdict:
            out.append(o.index)
    return Resolution(tuple(out))


def relation_holds(a: SceneObject, b: SceneObject, relation: str) -> bool | None:
    """True / False / None (borderline) for "a is `relation` b"."""
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    (acx, acy), (bcx, bcy) = a.centre, b.centre
    clear, against = {
        "left_of": (ax1 <= bx0, acx >= bcx),
        "right_of": (ax0 >= bx1, acx <= bcx),
        "above": (ay1 <= by0, acy >= bcy),
        "below": (ay0 >= by1, acy <= bcy),
    }[relation]
    return True if clear else (False if against else None)


def _position_key(direction: str) -> tuple[int, bool]:
    """(centre axis, descending) for a direction like 'from_left' or an extreme like 'rightmost'."""
    return {
        "from_left": (0, False),
        "leftmost": (0, False),
        "from_right": (0, True),
        "rightmost": (0, True),
        "from_top": (1, False),
        "topmost": (1, False),
        "from_bottom": (1, True),
        "bottommost": (1, True),
    }[direction]


def _resolve_extreme(scene: Scene, extreme: str, group: list[SceneObject]) -> Resolution:
    if extreme in ("largest", "smallest"):
        ranked = sorted(group, key=lambda o: o.area, reverse=extreme == "largest")
        big, small = (ranked[0], ranked[1]) if extreme == "largest" else (ranked[1], ranked[0])
        return Resolution((ranked[0].index,)) if big.area >= AREA_RATIO * small.area else AMBIGUOUS
    if extreme in ("most_corners", "fewest_corners"):
        if any(o.kind in UNCLEAR_CORNER_KINDS for o in group):
            return AMBIGUOUS
        ranked = sorted(group, key=lambda o: o.corners, reverse=extreme == "most_corners")
        return Resolution((ranked[0].index,)) if ranked[0].corners != ranked[1].corners else AMBIGUOUS
    return _resolve_rank(scene, extreme, group, 1)


def _resolve_ordinal(scene: Scene, query: Query, group: list[SceneObject]) -> Resolution:
    if not 1 <= query.n <= len(group):
        return AMBIGUOUS
    return _resolve_rank(scene, query.direction, group, query.n)


def _resolve_rank(scene: Scene, direction: str, group: list[SceneObject], n: int) -> Resolution:
    """The n-th (1-based) object along `direction`, if its neighbours in that order are clearly apart."""
    axis, descending = _position_key(direction)
    ranked = sorted(group, key=lambda o: o.centre[axis], reverse=descending)
    margin = POSITION_MARGIN * (scene.width if axis == 0 else scene.height)
    k = n - 1
    for j in (k - 1, k + 1):
        if 0 <= j < len(ranked) and abs(ranked[j].centre[axis] - ranked[k].centre[axis]) < margin:
            return AMBIGUOUS
    return Resolution((ranked[k].index,))


def identifying_filters(scene: Scene, index: int) -> list[Filter]:
    """Every attribute filter (1-3 attributes, fewest first) that selects object `index` alone."""
    obj = scene.objects[index]
    out = []
    for r in (1, 2, 3):
        for attrs in combinations(ATTRS, r):
            flt = Filter(**{a: getattr(obj, a) for a in attrs})
            if unique_object(scene, flt) is obj:
                out.append(flt)
    return out


def name_filter(scene: Scene, index: int) -> Filter:
    """A short filter naming object `index` for answers ("blue star"): the shortest identifying one
    that includes the kind, else kind + colour (+ size) even if not unique."""
    obj = scene.objects[index]
    for flt in identifying_filters(scene, index):
        if flt.kind is not None:
            return flt
    return Filter(kind=obj.kind, colour=obj.colour, size=obj.size)
