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
from stamp.data.queries import DIRECTIONS, Filter, Query, identifying_filters, name_filter, resolve
from stamp.data.scenes import COLOURS, HELD_OUT_PAIRS, KINDS, SIZES, Scene, SceneObject

# A centre closer than this (fraction of the side) to a third of the image has no clear grid position.
GRID_MARGIN = 0.04


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


@dataclass
class TaskContext:
    """A scene plus the rules of the split: `ban_held_out` forbids naming held-out colour-shape pairs;
    objects in `prefer` (held-out pairs in the compositional split) are chosen as targets first."""

    scene: Scene
    rng: np.random.Generator
    ban_held_out: bool = True
    prefer: frozenset[int] = frozenset()
    no_target_emits_seg: bool = True

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
    return T.noun(name_filter(ctx.scene, index), ctx.rng)


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
    expr = T.describe(query, ctx.rng)
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
    expr = T.describe(query, ctx.rng)
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
    bare = T.describe(query, ctx.rng, article=False)
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
    question, is_sentence, expr = T.reason_question(query, ctx.rng)
    mask, record = ctx.target(query, expr)
    answer = T.reason_answer(ctx.rng, _name(ctx, record["indices"][0]))
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


# ---- visual question answering (no mask) ------------------------------------------------------------------
def grid_position(scene: Scene, obj: SceneObject) -> str | None:
    """'top left', 'bottom', 'center' ... from the centre's third of the image, or None near a border."""
    words = []
    for value, side, names in (
        (obj.centre[1], scene.height, ("top", "middle", "bottom")),
        (obj.centre[0], scene.width, ("left", "center", "right")),
    ):
        f = value / side
        if min(abs(f - 1 / 3), abs(f - 2 / 3)) < GRID_MARGIN:
            return None
        words.append(names[int(f * 3)])
    v, h = words
    if v == "middle":
        return h
    return v if h == "center" else f"{v} {h}"


def make_vqa(ctx: TaskContext, kind: str | None = None) -> Exchange | None:
    """Counting, colour, shape, existence or position question with a short answer (no mask)."""
    rng = ctx.rng
    kind = kind or T.pick(rng, ("count", "colour", "shape", "exists", "position"))
    short = bool(rng.random() < 0.5)
    if kind in ("count", "exists"):
        flt = _vqa_filter(ctx, kind)
        if flt is None:
            return None
        query = Query("select", flt)
        n = len(resolve(ctx.scene, query).indices)
        answer = str(n) if kind == "count" else ("yes" if n else "no")
        question = T.vqa_question(rng, kind, short, flt=flt)
        reply = T.vqa_answer(rng, kind, answer, short, flt=flt)
    else:
        found = _vqa_subject(ctx, kind)
        if found is None:
            return None
        query, obj, expr = found
        answer = {"colour": obj.colour, "shape": obj.kind}.get(kind) or grid_position(ctx.scene, obj)
        question = T.vqa_question(rng, kind, short, expr=expr)
        reply = T.vqa_answer(rng, kind, answer, short)
    vqa = {"type": kind, "query": query.to_dict(), "answer": answer}
    return Exchange(
        question,
        reply,
        vqa=vqa,
        subtask=f"vqa_{kind}",
        focus=query if kind not in ("count", "exists") else None,
    )


def _vqa_filter(ctx: TaskContext, kind: str) -> Filter | None:
    objs, rng = ctx.scene.objects, ctx.rng
    if kind == "exists" and rng.random() < 0.5:
        q = no_target_query(ctx, relations=False)  # usually a near miss: the answer is "no"
        return None if q is None else q.filter
    o = objs[int(rng.integers(len(objs)))]
    options = [Filter(kind=o.kind, colour=o.colour), Filter(kind=o.kind), Filter(colour=o.colour)]
    if kind == "count":
        options += [Filter(), Filter(colour=T.pick(rng, tuple(COLOURS))), Filter(kind=T.pick(rng, KINDS))]
    flt = options[int(rng.integers(len(options)))]
    return flt if ctx.allowed(Query("select", flt)) else None


def _vqa_subject(ctx: TaskContext, kind: str) -> tuple[Query, SceneObject, str] | None:
    """An object named without giving the answer away ('What colour is the star?')."""
    hidden = {"colour": "colour", "shape": "kind"}.get(kind)
    for obj in ctx.target_order():
        if kind == "position" and grid_position(ctx.scene, obj) is None:
            continue
        filters = [
            f
            for f in identifying_filters(ctx.scene, obj.index)
            if hidden is None or getattr(f, hidden) is None
        ]
        filters = [f for f in filters if ctx.allowed(Query("select", f))]
        if filters:
            query = Query("select", filters[0])
            expr = "the " + T.noun(query.filter, ctx.rng, default="object" if kind == "shape" else None)
            return query, obj, expr
    return None


# ---- several masks in one answer -------------------------------------------------------------------------------
def make_multi(ctx: TaskContext) -> Exchange | None:
    """'The red circle is <|seg|> and the blue square is <|seg|>.', or each member of a group in turn."""
    if ctx.rng.random() < 0.4:
        ex = _make_each(ctx)
        if ex is not None:
            return ex
    queries = []
    for obj in ctx.target_order():
        q = attribute_query(ctx, obj)
        if q is not None:
            queries.append(q)
    if len(queries) < 2:
        return None
    queries = queries[: int(ctx.rng.integers(2, min(3, len(queries)) + 1))]
    exprs = [T.describe(q, ctx.rng) for q in queries]
    pairs = [ctx.target(q, e) for q, e in zip(queries, exprs)]
    answer = T.multi_answer(ctx.rng, exprs)
    return Exchange(
        T.multi_question(ctx.rng, exprs),
        answer,
        [m for m, _ in pairs],
        [r for _, r in pairs],
        subtask="multi",
    )


def _make_each(ctx: TaskContext) -> Exchange | None:
    for obj in ctx.target_order():
        for flt in ctx.shuffled((Filter(colour=obj.colour), Filter(kind=obj.kind))):
            members = sorted((o for o in ctx.scene.objects if flt.matches(o)), key=lambda o: o.centre[0])
            if not 2 <= len(members) <= 3 or not ctx.allowed(Query("select", flt)):
                continue
            named = [attribute_query(ctx, o) for o in members]
            if any(q is None or q.filter.kind is None for q in named):
                continue
            names = [T.noun(q.filter, ctx.rng) for q in named]
            pairs = [ctx.target(q, "the " + n) for q, n in zip(named, names)]
            answer = T.each_answer(ctx.rng, flt, names)
            return Exchange(
                T.each_question(ctx.rng, flt),
                answer,
                [m for m, _ in pairs],
                [r for _, r in pairs],
                subtask="multi_each",
            )
    return None


# ---- multi-turn conversations -----------------------------------------------------------------------------------
def make_dialogue(ctx: TaskContext) -> list[Exchange] | None:
    """2-3 turns about one image: a referring turn, then follow-ups ('What colour is it?'), another
    target ('Now segment ...'), a no-target request or a VQA question."""
    first = make_refer(ctx) if ctx.rng.random() < 0.75 else make_reason(ctx)
    if first is None:
        return None
    turns = [first]
    for _ in range(int(ctx.rng.integers(1, 3))):
        nxt = _followup(ctx, turns[-1])
        if nxt is not None:
            turns.append(nxt)
    return turns if len(turns) > 1 else None


def _followup(ctx: TaskContext, prev: Exchange) -> Exchange | None:
    rng = ctx.rng
    choice = T.pick(rng, ("about_it", "next", "no_target", "vqa"))
    if choice == "about_it" and prev.focus is not None:
        kind = T.pick(rng, ("colour", "shape", "position"))
        res = resolve(ctx.scene, prev.focus)
        obj = ctx.scene.objects[res.indices[0]]
        answer = {"colour": obj.colour, "shape": obj.kind}.get(kind) or grid_position(ctx.scene, obj)
        if answer is None:
            return None
        vqa = {"type": kind, "query": prev.focus.to_dict(), "answer": answer}
        reply = T.vqa_answer(rng, kind, answer, short=False)
        return Exchange(
            T.followup_question(rng, kind), reply, vqa=vqa, subtask=f"followup_{kind}", focus=prev.focus
        )
    if choice == "next":
        ex = make_refer(ctx)
        if ex is not None:
            ex.question = T.followup_question(rng, "next", expr=ex.targets[0]["expression"])
        return ex
    if choice == "no_target":
        return make_no_target(ctx)
    return make_vqa(ctx)


TASK_BUILDERS: dict[str, Callable[[TaskContext], Exchange | list[Exchange] | None]] = {
    "refer": make_refer,
    "grefer": make_grefer,
    "no_target": make_no_target,
    "reason": make_reason,
    "vqa": make_vqa,
    "multi": make_multi,
    "dialogue": make_dialogue,
}
# Fewest objects a scene needs for the task to have a chance.
TASK_MIN_OBJECTS = {"refer": 1, "grefer": 3, "no_target": 1, "reason": 2, "vqa": 1, "multi": 2, "dialogue": 2}
