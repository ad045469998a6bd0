"""SynthRef's wording: referring expressions for structured queries, reasoning, VQA, several masks and
follow-up questions.

Choices go through `pick` of `stamp.data.templates` (seeded with a Generator, the first option with
`rng=None`); the questions and answers SynthRef shares with the real-data loaders are there too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stamp.data.templates import SEG, Rng, cap, pick, refer_question, sentence_question

if TYPE_CHECKING:
    from stamp.data.synthref.queries import Filter, Query


# ---- SynthRef wording -------------------------------------------------------------------------------------
OBJECT_WORDS = ("shape", "object")
PLURALS = {"cross": "crosses", "ellipse": "ellipses"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
ORDINAL_WORDS = ("", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
RELATION_WORDS = {
    "left_of": ("left of", "to the left of", "on the left side of"),
    "right_of": ("right of", "to the right of", "on the right side of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
EXTREME_PHRASES = {
    "largest": ("the largest {noun}", "the biggest {noun}"),
    "smallest": ("the smallest {noun}", "the tiniest {noun}"),
    "leftmost": ("the leftmost {noun}", "the {noun} furthest to the left"),
    "rightmost": ("the rightmost {noun}", "the {noun} furthest to the right"),
    "topmost": ("the topmost {noun}", "the {noun} nearest the top"),
    "bottommost": ("the bottommost {noun}", "the {noun} nearest the bottom"),
    "most_corners": ("the {noun} with the most corners", "the {noun} that has the most corners"),
    "fewest_corners": ("the {noun} with the fewest corners", "the {noun} that has the fewest corners"),
}
DIRECTION_WORDS = {
    "from_left": "from the left",
    "from_right": "from the right",
    "from_top": "from the top",
    "from_bottom": "from the bottom",
}
ORDINAL_PHRASES = ("the {ord} {noun} {dir}", "the {ord} {noun} counting {dir}")
SAME_AS_PHRASES = {
    "colour": (
        "the {noun} that shares the {anchor}'s colour",
        "the {noun} with the same colour as the {anchor}",
        "the other {noun} coloured like the {anchor}",
    ),
    "kind": ("the {noun} with the same shape as the {anchor}", "the other {noun} shaped like the {anchor}"),
}
CORNER_PHRASES = ("the {noun} with exactly {n} corners", "the {noun} that has {n} corners")
NO_CORNER_PHRASES = ("the {noun} without corners", "the {noun} with no corners")
PLURAL_SELECT_PHRASES = ("all {nouns}", "all the {nouns}", "every {noun}")
REASON_SENTENCES = {
    "most_corners": (
        "Which {noun} has the most corners?",
        "Count the corners of each {noun}. Which one has the most?",
    ),
    "fewest_corners": (
        "Which {noun} has the fewest corners?",
        "Count the corners of each {noun}. Which one has the fewest?",
    ),
    "corners": ("Which {noun} has exactly {n} corners?", "One {noun} has {n} corners. Which one is it?"),
    "no_corners": ("Which {noun} has no corners at all?", "One {noun} has no corners. Which one is it?"),
    "same_colour": (
        "Which {noun} has the same colour as the {anchor}?",
        "The {anchor} shares its colour with one other {noun}. Which one?",
    ),
    "same_kind": (
        "Which other object has the same shape as the {anchor}?",
        "The {anchor} has a twin of the same shape. Which object is it?",
    ),
}
REASON_ANSWERS = ("It is the {name} {seg}.", "The {name} {seg}.", "Sure, it is the {name} {seg}.")
MULTI_QUESTIONS = (
    "Please segment {list}.",
    "Can you segment {list} in this image?",
    "Segment {list}, each separately.",
)
MULTI_ITEMS = ("{x} is {seg}", "{x} {seg}")
EACH_QUESTIONS = (
    "Segment each {noun} separately.",
    "Find every {noun} and give each its own mask.",
    "Please segment all the {nouns} one by one.",
)
EACH_ANSWERS = ("There are {n} {nouns}: {items}.", "I can see {n} {nouns}: {items}.")
SHORT_ANSWER_SUFFIXES = ("Answer with a single word or number.", "Answer using a single word or phrase.")
VQA_QUESTIONS = {
    "count": (
        "How many {nouns} are there?",
        "How many {nouns} can you see in the image?",
        "Count the {nouns}.",
    ),
    "colour": ("What colour is {expr}?", "What is the colour of {expr}?", "Which colour does {expr} have?"),
    "shape": ("What shape is {expr}?", "What kind of shape is {expr}?"),
    "exists": (
        "Is there {a_noun} in the image?",
        "Can you see {a_noun}?",
        "Does the image contain {a_noun}?",
    ),
    "position": ("Where is {expr} in the image?", "In which part of the image is {expr}?"),
}
VQA_ANSWERS = {
    "colour": ("It is {ans}.", "{Ans}."),
    "shape": ("It is {a_ans}.", "{A_ans}."),
    "yes": ("Yes, there is {a_noun}.", "Yes."),
    "no": ("No, there is no {noun}.", "No."),
    "position": ("It is at the {ans} of the image.", "At the {ans}."),
}
FOLLOWUP_QUESTIONS = {
    "colour": ("What colour is it?", "And what colour is it?"),
    "shape": ("What shape is it?", "And what shape does it have?"),
    "position": ("Where is it in the image?", "And where is it?"),
    "next": ("Now segment {expr}.", "What about {expr}?", "And {expr}? Please segment it too."),
}


def with_article(noun: str) -> str:
    """'a'/'an' + noun (by the first letter; the vocabulary has no exceptions)."""
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def number_word(n: int) -> str:
    """'three' for 3 (words up to ten, digits beyond)."""
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


# ---- SynthRef expressions ----------------------------------------------------------------------------------
def plural_of(word: str) -> str:
    """Plural of a shape word ('crosses', 'stars')."""
    return PLURALS.get(word, word + "s")


def noun(flt: Filter, rng: Rng, plural: bool = False, default: str | None = None) -> str:
    """'small red triangle' / 'red shapes' for a filter; `default` overrides 'shape'/'object'."""
    head = flt.kind or default or pick(rng, OBJECT_WORDS)
    head = plural_of(head) if plural else head
    return " ".join(w for w in (flt.size, flt.colour, head) if w)


def describe(query: Query, rng: Rng, article: bool = True) -> str:
    """The referring expression of `query`, e.g. 'the square left of the blue star' or 'all green shapes'.

    With `article=False` the leading 'the ' is dropped (for 'There is no square left of ...').
    """
    text = _describe(query, rng)
    return text if article or not text.startswith("the ") else text[4:]


def _describe(q: Query, rng: Rng) -> str:
    if q.op == "select":
        if q.plural:
            nn = noun(q.filter, rng)
            return pick(rng, PLURAL_SELECT_PHRASES).format(noun=nn, nouns=_pluralise(nn))
        return "the " + noun(q.filter, rng)
    if q.op == "relation":
        rel = pick(rng, RELATION_WORDS[q.relation])
        anchor = noun(q.anchor, rng)
        if q.plural:
            return f"all {noun(q.filter, rng, plural=True)} {rel} the {anchor}"
        return f"the {noun(q.filter, rng)} {rel} the {anchor}"
    if q.op == "extreme":
        return pick(rng, EXTREME_PHRASES[q.extreme]).format(noun=noun(q.filter, rng))
    if q.op == "ordinal":
        nn, direction = noun(q.filter, rng), DIRECTION_WORDS[q.direction]
        return pick(rng, ORDINAL_PHRASES).format(ord=ORDINAL_WORDS[q.n], noun=nn, dir=direction)
    if q.op == "same_as":
        nn = noun(q.filter, rng, default="object" if q.attr == "kind" else None)
        return pick(rng, SAME_AS_PHRASES[q.attr]).format(noun=nn, anchor=noun(q.anchor, rng))
    if q.op == "corners":
        nn = noun(q.filter, rng)
        if q.n == 0:
            return pick(rng, NO_CORNER_PHRASES).format(noun=nn)
        return pick(rng, CORNER_PHRASES).format(noun=nn, n=number_word(q.n))
    raise ValueError(f"unknown query op {q.op!r}")


def _pluralise(phrase: str) -> str:
    words = phrase.split(" ")
    return " ".join(words[:-1] + [plural_of(words[-1])])


def reason_question(query: Query, rng: Rng) -> tuple[str, bool, str]:
    """A reasoning request for `query`: (question, is_sentence, text). The sentence form asks ("Which
    shape has the most corners?") and appends a mask request; otherwise `text` is the expression in a
    plain segmentation request."""
    key = {"extreme": query.extreme, "corners": "no_corners" if query.n == 0 else "corners"}.get(query.op)
    if query.op == "same_as":
        key = "same_colour" if query.attr == "colour" else "same_kind"
    if key not in REASON_SENTENCES or (rng is not None and rng.random() < 0.3):
        expr = describe(query, rng)
        return refer_question(rng, expr), False, expr
    anchor = noun(query.anchor, rng) if query.anchor is not None else ""
    nn = noun(query.filter, rng)
    text = pick(rng, REASON_SENTENCES[key]).format(noun=nn, anchor=anchor, n=number_word(query.n))
    return sentence_question(rng, text), True, text


def reason_answer(rng: Rng, name: str) -> str:
    """'It is the blue star <|seg|>.': names the object the reasoning arrived at."""
    return pick(rng, REASON_ANSWERS).format(name=name, seg=SEG)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def multi_question(rng: Rng, exprs: list[str]) -> str:
    """'Please segment the red circle and the blue square.'"""
    return pick(rng, MULTI_QUESTIONS).format(list=_join(exprs))


def multi_answer(rng: Rng, exprs: list[str]) -> str:
    """'The red circle is <|seg|> and the blue square is <|seg|>.' (one `<|seg|>` per expression)."""
    style = pick(rng, MULTI_ITEMS)
    body = _join([style.format(x=x, seg=SEG) for x in exprs])
    return cap(body) + "."


def each_question(rng: Rng, flt: Filter) -> str:
    """'Segment each red shape separately.'"""
    nn = noun(flt, rng)
    return pick(rng, EACH_QUESTIONS).format(noun=nn, nouns=_pluralise(nn))


def each_answer(rng: Rng, flt: Filter, names: list[str]) -> str:
    """'There are two red shapes: the red circle <|seg|> and the red star <|seg|>.'"""
    items = _join([f"the {name} {SEG}" for name in names])
    nouns = _pluralise(noun(flt, rng))
    return pick(rng, EACH_ANSWERS).format(n=number_word(len(names)), nouns=nouns, items=items)


def vqa_question(rng: Rng, kind: str, short: bool, expr: str = "", flt: Filter | None = None) -> str:
    """A VQA question of `kind` (count, colour, shape, exists, position) about `expr` or `flt`."""
    nn = noun(flt, rng) if flt is not None else ""
    text = pick(rng, VQA_QUESTIONS[kind]).format(
        expr=expr, nouns=_pluralise(nn) if nn else "", a_noun=with_article(nn)
    )
    return f"{text} {pick(rng, SHORT_ANSWER_SUFFIXES)}" if short else text


def vqa_answer(rng: Rng, kind: str, answer: str, short: bool, flt: Filter | None = None) -> str:
    """The assistant's reply: the bare short answer, or a sentence containing it."""
    if short:
        return answer
    nn = noun(flt, rng) if flt is not None else ""
    if kind == "count":
        n = int(answer)
        if n == 0:
            return f"There are no {_pluralise(nn)}."
        return f"There is one {nn}." if n == 1 else f"There are {answer} {_pluralise(nn)}."
    key = answer if kind == "exists" else kind
    return pick(rng, VQA_ANSWERS[key]).format(
        ans=answer,
        Ans=cap(answer),
        a_ans=with_article(answer),
        A_ans=cap(with_article(answer)),
        a_noun=with_article(nn),
        noun=nn,
    )


def followup_question(rng: Rng, kind: str, expr: str = "") -> str:
    """A follow-up turn about the previous target ('What colour is it?') or a new one ('Now segment ...')."""
    return pick(rng, FOLLOWUP_QUESTIONS[kind]).format(expr=expr)
