"""SynthRef task builders: turn a scene into one question/answer exchange (or None if it cannot).

Every segmentation target comes from a structured `Query` resolved by `queries.resolve`, and only
unambiguous queries are used. A builder returns None when the scene does not allow its task; the
dataset then draws another scene from the same generator, so samples stay deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from stamp.data import templates as T
from stamp.data.synthref import templates as ST
from stamp.data.synthref.queries import DIRECTIONS, Filter, Query, identifying_filters, name_filter, resolve
from stamp.data.synthref.scenes import COLOURS, HELD_OUT_PAIRS, KINDS, SIZES, Scene, SceneObject


@dataclass
class Exchange:
    """One user question and the assistant's answer, with one mask (and target record) per `<|seg|>`."""

    question: str
    answer: str
    masks: list[np.ndarray] = field(default_factory=list)
    targets: list[dict] = field(default_factory=list)
    vqa: dict | None = None
    subtask: str = ""
    no_target: bool = False
    is_sentence: bool = False
    focus: Query | None = None  # the single object this exchange was about (for follow-up questions)
    query: Query | None = None  # the referring query of a single-mask request
    expression: str = ""


VQA_KINDS = ("count", "colour", "shape", "exists", "position")
"""The kinds of SynthRef's short-answer questions."""


@dataclass
class TaskContext:
    """A scene plus the rules of the split: `ban_held_out` forbids naming held-out colour-shape pairs;
    objects in `prefer` (held-out pairs in the compositional split) are chosen as targets first."""

    scene: Scene
    rng: np.random.Generator
    ban_held_out: bool = True
    prefer: frozenset[int] = frozenset()
    no_target_emits_seg: bool = True
    vqa_kind_probs: tuple[float, ...] | None = None
    """Probabilities of the VQA question kinds, in the order of `VQA_KINDS` (None: uniform)."""

    def allowed(self, query: Query) -> bool:
        """False if the query names a held-out colour-shape pair where that is forbidden."""
        return not self.ban_held_out or all((f.kind, f.colour) not in HELD_OUT_PAIRS for f in query.filters())

    def shuffled(self, items: Iterable) -> list:
        """The items in a seeded random order."""
        items = list(items)
        return [items[i] for i in self.rng.permutation(len(items))]

    def target_order(self) -> list[SceneObject]:
        """Objects in random order; preferred ones first, and (usually) those with a same-colour
        distractor of another kind before the rest, so that shape has to be read."""
        objs = self.shuffled(self.scene.objects)
        favour_distractors = self.rng.random() < 0.75
        return sorted(
            objs,
            key=lambda o: (
                o.index not in self.prefer,
                favour_distractors and not _has_colour_twin(self.scene, o),
            ),
        )

    def target(self, query: Query, expression: str) -> tuple[np.ndarray, dict]:
        """(mask, target record) for a query (its resolution must be unambiguous)."""
        res = resolve(self.scene, query)
        assert not res.ambiguous, query
        record = {"query": query.to_dict(), "indices": list(res.indices), "expression": expression}
        return self.scene.mask_of(res.indices), record


def _has_colour_twin(scene: Scene, obj: SceneObject) -> bool:
    return any(o.colour == obj.colour and o.kind != obj.kind for o in scene.objects)


def _first(ctx: TaskContext, candidates: Iterable[Query], accept: Callable[[Query], bool]) -> Query | None:
    for q in candidates:
        if ctx.allowed(q) and accept(q):
            return q
    return None


def _single(ctx: TaskContext, target: SceneObject | None = None) -> Callable[[Query], bool]:
    def accept(q: Query) -> bool:
        res = resolve(ctx.scene, q)
        return res.single and (target is None or res.indices[0] == target.index)

    return accept


def _name(ctx: TaskContext, index: int) -> str:
    return ST.noun(name_filter(ctx.scene, index), ctx.rng)


# ---- single-target referring -------------------------------------------------------------------------------
def attribute_query(ctx: TaskContext, obj: SceneObject) -> Query | None:
    """'the small red triangle': an identifying attribute filter, usually the shortest with the kind."""
    filters = [f for f in identifying_filters(ctx.scene, obj.index) if ctx.allowed(Query("select", f))]
    if not filters:
        return None
    with_kind = [f for f in filters if f.kind is not None]
    if with_kind and ctx.rng.random() < 0.75:
        return Query("select", with_kind[0] if ctx.rng.random() < 0.7 else ctx.shuffled(with_kind)[0])
    return Query("select", ctx.shuffled(filters)[0])


def spatial_query(ctx: TaskContext, obj: SceneObject) -> Query | None:
    """'the square left of the blue star': a relation to a uniquely named anchor."""
    cands = []
    for anchor in ctx.shuffled(o for o in ctx.scene.objects if o.index != obj.index):
        anchor_filters = [f for f in identifying_filters(ctx.scene, anchor.index) if f.kind is not None][:1]
        for af in anchor_filters:
            for tf in (
                Filter(kind=obj.kind),
                Filter(colour=obj.colour),
                Filter(kind=obj.kind, colour=obj.colour),
            ):
                cands += [
                    Query("relation", tf, relation=r, anchor=af)
                    for r in ("left_of", "right_of", "above", "below")
                ]
    return _first(ctx, ctx.shuffled(cands), _single(ctx, obj))


def _group_filters(obj: SceneObject) -> list[Filter]:
    return [Filter(), Filter(kind=obj.kind), Filter(colour=obj.colour)]


def superlative_query(ctx: TaskContext, obj: SceneObject) -> Query | None:
    """'the largest circle', 'the leftmost red shape'."""
    extremes = ("largest", "smallest", "leftmost", "rightmost", "topmost", "bottommost")
    cands = [Query("extreme", f, extreme=e) for f in _group_filters(obj) for e in extremes]
    return _first(ctx, ctx.shuffled(cands), _single(ctx, obj))


def ordinal_query(ctx: TaskContext, obj: SceneObject) -> Query | None:
    """'the second shape from the left'."""
    cands = [
        Query("ordinal", f, direction=d, n=n) for f in _group_filters(obj) for d in DIRECTIONS for n in (2, 3)
    ]
    return _first(ctx, ctx.shuffled(cands), _single(ctx, obj))


REFER_KINDS: dict[str, tuple[float, Callable]] = {
    "attribute": (0.45, attribute_query),
    "spatial": (0.2, spatial_query),
    "superlative": (0.2, superlative_query),
    "ordinal": (0.15, ordinal_query),
}


def pick_refer_query(ctx: TaskContext) -> tuple[Query, str] | None:
    """A single-target query: the drawn kind first, falling back to the others."""
    names = list(REFER_KINDS)
    weights = np.array([REFER_KINDS[n][0] for n in names])
    order = ctx.rng.choice(len(names), size=len(names), replace=False, p=weights / weights.sum())
    for obj in ctx.target_order()[:3]:
        for k in order:
            q = REFER_KINDS[names[k]][1](ctx, obj)
            if q is not None:
                return q, names[k]
    return None


def make_refer(ctx: TaskContext) -> Exchange | None:
    """Single target by attributes, spatial relation, superlative or ordinal."""
    found = pick_refer_query(ctx)
    if found is None:
        return None
    query, kind = found
    expr = ST.describe(query, ctx.rng)
    mask, record = ctx.target(query, expr)
    name = "the " + _name(ctx, record["indices"][0])
    question, answer = T.refer_question(ctx.rng, expr), T.seg_answer(ctx.rng, name)
    return Exchange(
        question, answer, [mask], [record], subtask=kind, focus=query, query=query, expression=expr
    )


# ---- generalized: several targets in one mask, or none -----------------------------------------------------
def make_grefer(ctx: TaskContext) -> Exchange | None:
    """'all green shapes' (one merged mask of two or more objects)."""
    objs = ctx.scene.objects
    cands = [
        Query("select", f, plural=True)
        for o in objs
        for f in (Filter(colour=o.colour), Filter(kind=o.kind), Filter(size=o.size))
    ]
    cands += [Query("select", Filter(kind=o.kind, colour=o.colour), plural=True) for o in objs]
    for a in objs:
        af = next((f for f in identifying_filters(ctx.scene, a.index) if f.kind is not None), None)
        if af is not None:
            rels = ("left_of", "right_of", "above", "below")
            cands += [Query("relation", Filter(), relation=r, anchor=af, plural=True) for r in rels]
            cands += [
                Query("relation", Filter(colour=o.colour), relation=r, anchor=af, plural=True)
                for o in objs
                for r in rels
            ]

    def accept(q: Query) -> bool:
        res = resolve(ctx.scene, q)
        return not res.ambiguous and len(res.indices) >= 2

    query = _first(ctx, ctx.shuffled(dict.fromkeys(cands)), accept)
    if query is None:
        return None
    expr = ST.describe(query, ctx.rng)
    mask, record = ctx.target(query, expr)
    answer = T.seg_answer(ctx.rng, name=expr, plural=True)
    question = T.refer_question(ctx.rng, expr, plural=True)
    return Exchange(question, answer, [mask], [record], subtask="multi_target", query=query, expression=expr)


def no_target_query(ctx: TaskContext, relations: bool = True) -> Query | None:
    """A query matching nothing: usually a near miss (an existing object with one attribute changed),
    sometimes an absent kind or colour, sometimes a relation that no object satisfies."""
    rng, objs = ctx.rng, ctx.scene.objects
    cands: list[Query] = []
    if relations and rng.random() < 0.2:
        for a in objs:
            af = next((f for f in identifying_filters(ctx.scene, a.index) if f.kind is not None), None)
            if af is not None:
                for o in objs:
                    cands += [
                        Query("relation", Filter(kind=o.kind), relation=r, anchor=af)
                        for r in ("left_of", "right_of", "above", "below")
                    ]
    elif rng.random() < 0.75:
        for o in objs:
            cands += [Query("select", Filter(kind=o.kind, colour=c)) for c in COLOURS if c != o.colour]
            cands += [Query("select", Filter(kind=k, colour=o.colour)) for k in KINDS if k != o.kind]
            cands += [
                Query("select", Filter(kind=o.kind, colour=o.colour, size=s)) for s in SIZES if s != o.size
            ]
    else:
        cands = [Query("select", Filter(kind=k)) for k in KINDS] + [
            Query("select", Filter(colour=c)) for c in COLOURS
        ]

    def accept(q: Query) -> bool:
        res = resolve(ctx.scene, q)
        return not res.ambiguous and not res.indices

    return _first(ctx, ctx.shuffled(cands), accept)


def make_no_target(ctx: TaskContext) -> Exchange | None:
    """'the purple hexagon' when there is none: the answer says so, with an empty mask if it emits `<|seg|>`."""
    query = no_target_query(ctx)
    if query is None:
        return None
    bare = ST.describe(query, ctx.rng, article=False)
    expr = "the " + bare
    answer = T.no_target_answer(ctx.rng, bare, emit_seg=ctx.no_target_emits_seg)
    masks, targets = [], []
    if ctx.no_target_emits_seg:
        mask, record = ctx.target(query, expr)
        masks, targets = [mask], [record]
    question = T.refer_question(ctx.rng, expr)
    return Exchange(
        question, answer, masks, targets, subtask="no_target", no_target=True, query=query, expression=expr
    )


# ---- reasoning -----------------------------------------------------------------------------------------------
def reason_query(ctx: TaskContext) -> Query | None:
    """One inference step: most/fewest corners, an exact corner count, or sharing the anchor's colour/shape."""
    objs = ctx.scene.objects
    cands = [
        Query("extreme", f, extreme=e)
        for e in ("most_corners", "fewest_corners")
        for f in [Filter()] + [Filter(colour=o.colour) for o in objs]
    ]
    cands += [Query("corners", Filter(), n=n) for n in (0, 3, 4, 5, 6)]
    for a in objs:
        for af in (Filter(kind=a.kind), Filter(kind=a.kind, colour=a.colour)):
            cands.append(Query("same_as", Filter(), anchor=af, attr="colour"))
        cands.append(Query("same_as", Filter(), anchor=Filter(colour=a.colour), attr="kind"))
    preferred = [q for q in cands if _targets_preferred(ctx, q)]
    return _first(
        ctx, ctx.shuffled(dict.fromkeys(preferred)) + ctx.shuffled(dict.fromkeys(cands)), _single(ctx)
    )


def _targets_preferred(ctx: TaskContext, q: Query) -> bool:
    if not ctx.prefer:
        return False
    res = resolve(ctx.scene, q)
    return res.single and res.indices[0] in ctx.prefer


def make_reason(ctx: TaskContext) -> Exchange | None:
    """A question that needs one reasoning step; the answer names the object it found."""
    query = reason_query(ctx)
    if query is None:
        return None
    question, is_sentence, expr = ST.reason_question(query, ctx.rng)
    mask, record = ctx.target(query, expr)
    answer = ST.reason_answer(ctx.rng, _name(ctx, record["indices"][0]))
    sub = f"reason_{query.op}"
    return Exchange(
        question,
        answer,
        [mask],
        [record],
        subtask=sub,
        is_sentence=is_sentence,
        focus=query,
        query=query,
        expression=expr,
    )
