"""SynthRef task builders without a single referring mask: VQA with short answers, several masks in
one answer, and multi-turn conversations (see `tasks` for the conventions)."""

from __future__ import annotations

from stamp.data import templates as T
from stamp.data.synthref import templates as ST
from stamp.data.synthref.queries import Filter, Query, identifying_filters, resolve
from stamp.data.synthref.scenes import COLOURS, KINDS, Scene, SceneObject
from stamp.data.synthref.tasks import (
    VQA_KINDS,
    Exchange,
    TaskContext,
    attribute_query,
    make_no_target,
    make_reason,
    make_refer,
    no_target_query,
)

# A centre closer than this (fraction of the side) to a third of the image has no clear grid position.
GRID_MARGIN = 0.04


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
    kind = kind or _question_kind(ctx, VQA_KINDS)
    short = bool(rng.random() < 0.5)
    if kind in ("count", "exists"):
        flt = _vqa_filter(ctx, kind)
        if flt is None:
            return None
        query = Query("select", flt)
        n = len(resolve(ctx.scene, query).indices)
        answer = str(n) if kind == "count" else ("yes" if n else "no")
        question = ST.vqa_question(rng, kind, short, flt=flt)
        reply = ST.vqa_answer(rng, kind, answer, short, flt=flt)
    else:
        found = _vqa_subject(ctx, kind)
        if found is None:
            return None
        query, obj, expr = found
        answer = {"colour": obj.colour, "shape": obj.kind}.get(kind) or grid_position(ctx.scene, obj)
        question = ST.vqa_question(rng, kind, short, expr=expr)
        reply = ST.vqa_answer(rng, kind, answer, short)
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
            expr = "the " + ST.noun(query.filter, ctx.rng, default="object" if kind == "shape" else None)
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
    exprs = [ST.describe(q, ctx.rng) for q in queries]
    pairs = [ctx.target(q, e) for q, e in zip(queries, exprs)]
    answer = ST.multi_answer(ctx.rng, exprs)
    return Exchange(
        ST.multi_question(ctx.rng, exprs),
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
            names = [ST.noun(q.filter, ctx.rng) for q in named]
            pairs = [ctx.target(q, "the " + n) for q, n in zip(named, names)]
            answer = ST.each_answer(ctx.rng, flt, names)
            return Exchange(
                ST.each_question(ctx.rng, flt),
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


def _question_kind(ctx: TaskContext, kinds: tuple[str, ...]) -> str | None:
    """One of `kinds` (a subset of `VQA_KINDS`): uniform, or by the VQA kind weights where they are set
    (None where those give `kinds` no weight)."""
    if ctx.vqa_kind_probs is None:
        return T.pick(ctx.rng, kinds)
    weights = [ctx.vqa_kind_probs[VQA_KINDS.index(k)] for k in kinds]
    total = sum(weights)
    if total <= 0:
        return None
    return kinds[int(ctx.rng.choice(len(kinds), p=[w / total for w in weights]))]


def _followup(ctx: TaskContext, prev: Exchange) -> Exchange | None:
    rng = ctx.rng
    choice = T.pick(rng, ("about_it", "next", "no_target", "vqa"))
    about_it = choice == "about_it" and prev.focus is not None
    kind = _question_kind(ctx, ("colour", "shape", "position")) if about_it else None
    if kind is not None:
        res = resolve(ctx.scene, prev.focus)
        obj = ctx.scene.objects[res.indices[0]]
        answer = {"colour": obj.colour, "shape": obj.kind}.get(kind) or grid_position(ctx.scene, obj)
        if answer is None:
            return None
        vqa = {"type": kind, "query": prev.focus.to_dict(), "answer": answer}
        reply = ST.vqa_answer(rng, kind, answer, short=False)
        return Exchange(
            ST.followup_question(rng, kind), reply, vqa=vqa, subtask=f"followup_{kind}", focus=prev.focus
        )
    if choice == "next":
        ex = make_refer(ctx)
        if ex is not None:
            ex.question = ST.followup_question(rng, "next", expr=ex.targets[0]["expression"])
        return ex
    if choice == "no_target":
        return make_no_target(ctx)
    return make_vqa(ctx)
