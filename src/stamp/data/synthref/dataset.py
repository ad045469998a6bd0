"""SynthRef: a procedural referring-segmentation and dialogue benchmark.

    >>> ds = SynthRef("val", seed=0)
    >>> sample = ds[7]                      # always the same sample 7 of val
    >>> for sample in SynthRef("train").stream():   # endless training stream
    ...     break

Scenes hold 1-8 coloured shapes (9 kinds x 8 colours, two sizes, rotation, partial occlusion, varied
backgrounds and image sizes) with pixel-exact masks of the visible pixels. Tasks: single-target
referring (attributes, spatial relations, superlatives, ordinals), generalized referring (several
targets in one mask, or none), one-step reasoning, VQA with short answers, several masks in one answer,
and multi-turn conversations. Every mask comes from a structured query stored in `meta["targets"]`,
so it can be re-checked from `meta["scene"]` alone.

Splits: "train" (endless), "val", "test", "compositional". Nine colour-shape pairs (`HELD_OUT_PAIRS`)
never appear in train/val/test scenes or texts; the compositional split always contains one and
prefers it as the target.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping

import numpy as np
from PIL import Image

from stamp.data.sample import StampSample, Turn
from stamp.data.synthref.chat import make_dialogue, make_multi, make_vqa
from stamp.data.synthref.scenes import COLOURS, HELD_OUT_PAIRS, KINDS, Scene, SceneConfig, sample_scene
from stamp.data.synthref.tasks import (
    VQA_KINDS,
    Exchange,
    TaskContext,
    make_grefer,
    make_no_target,
    make_reason,
    make_refer,
)

SPLITS = ("train", "val", "test", "compositional")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "compositional": 3}
DEFAULT_LENGTHS = {"val": 1000, "test": 2000, "compositional": 1000}
# No-target requests are 12 / (30 + 12 + 12) = 22% of the single-mask referring requests: a model
# needs that many to learn to decline. Multi-turn dialogues add more of them.
DEFAULT_TASK_WEIGHTS: dict[str, float] = {
    "refer": 0.30,
    "grefer": 0.12,
    "no_target": 0.12,
    "reason": 0.12,
    "vqa": 0.14,
    "multi": 0.10,
    "dialogue": 0.10,
}
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
TASK_OF = {"no_target": "grefer"}  # StampSample.task for a builder name (default: the name itself)
_MAX_SCENES = 50


class SynthRef:
    """The SynthRef data set: `ds[i]` is a deterministic `StampSample`; `stream()` never ends.

    Args:
        split: "train", "val", "test" or "compositional".
        seed: base seed; sample i depends only on (seed, split, i) and the options below.
        task_weights: relative weights of the tasks, keys among `DEFAULT_TASK_WEIGHTS` (missing keys are 0).
        vqa_kind_weights: relative weights of the VQA question kinds (count, colour, shape, exists,
            position; missing keys are 0), wherever a task asks one; None: uniform, and the samples of
            the streams made before this option existed.
        image_size_range: (min, max) width and height in pixels, drawn independently per image.
        length: number of samples for `len()`; fixed splits default to `DEFAULT_LENGTHS`, train is endless.
        no_target_emits_seg: no-target answers still contain `<|seg|>` with an all-zero mask
            (gRefCOCO style); False gives an answer in words only, without a mask.
        max_objects: at most this many objects per scene.
        min_visible: fraction of each object that must stay visible (1.0: objects never overlap).
    """

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        task_weights: Mapping[str, float] | None = None,
        image_size_range: tuple[int, int] = (224, 448),
        vqa_kind_weights: Mapping[str, float] | None = None,
        length: int | None = None,
        no_target_emits_seg: bool = True,
        max_objects: int = 8,
        min_visible: float = 0.6,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown SynthRef split {split!r}; choose one of {', '.join(SPLITS)}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.split = split
        self.seed = int(seed)
        self.no_target_emits_seg = no_target_emits_seg
        self.length = DEFAULT_LENGTHS.get(split) if length is None else int(length)
        self.task_names, self.task_probs = _normalise_weights(task_weights or DEFAULT_TASK_WEIGHTS)
        self.vqa_kind_probs = None if vqa_kind_weights is None else _vqa_kind_probs(vqa_kind_weights)
        compositional = split == "compositional"
        allowed = frozenset(
            (k, c) for k in KINDS for c in COLOURS if compositional or (k, c) not in HELD_OUT_PAIRS
        )
        self.scene_config = SceneConfig(
            image_size_range=tuple(image_size_range),
            max_objects=max_objects,
            min_visible=min_visible,
            allowed_pairs=allowed,
            required_pairs=HELD_OUT_PAIRS if compositional else None,
        )

    def __repr__(self) -> str:
        return f"SynthRef(split={self.split!r}, seed={self.seed}, length={self.length})"

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("the SynthRef train split is endless: pass length=... or use stream()")
        return self.length

    def __getitem__(self, index: int) -> StampSample:
        if index < 0 or (self.length is not None and index >= self.length):
            raise IndexError(f"SynthRef {self.split} index {index} out of range (length {self.length})")
        return self.generate(index)

    def __iter__(self) -> Iterator[StampSample]:
        return self.stream() if self.length is None else (self.generate(i) for i in range(self.length))

    def stream(self, start: int = 0, step: int = 1) -> Iterator[StampSample]:
        """Endless samples start, start + step, ... (give each data-loader worker its own `start`)."""
        for i in itertools.count(start, step):
            yield self.generate(i)

    def generate(self, index: int) -> StampSample:
        """Sample `index` (any non-negative integer, regardless of `length`)."""
        rng = np.random.default_rng([self.seed, SPLIT_CODES[self.split], int(index)])
        task = self.task_names[int(rng.choice(len(self.task_names), p=self.task_probs))]
        for _ in range(_MAX_SCENES):
            scene = sample_scene(rng, self.scene_config, TASK_MIN_OBJECTS[task])
            prefer = frozenset(o.index for o in scene.objects if (o.kind, o.colour) in HELD_OUT_PAIRS)
            ctx = TaskContext(
                scene,
                rng,
                ban_held_out=self.split != "compositional",
                prefer=prefer,
                no_target_emits_seg=self.no_target_emits_seg,
                vqa_kind_probs=self.vqa_kind_probs,
            )
            built = TASK_BUILDERS[task](ctx)
            if built:
                return self._assemble(index, task, scene, built if isinstance(built, list) else [built])
        raise RuntimeError(f"SynthRef could not build a {task!r} sample {index} in {_MAX_SCENES} scenes")

    def _assemble(self, index: int, task: str, scene: Scene, exchanges: list[Exchange]) -> StampSample:
        turns, masks, targets, vqa = [], [], [], []
        for k, ex in enumerate(exchanges):
            turns += [Turn("user", ex.question), Turn("assistant", ex.answer)]
            masks += ex.masks
            targets += ex.targets
            if ex.vqa is not None:
                vqa.append({**ex.vqa, "turn": k})
        meta = {
            "source": "synthref",
            "split": self.split,
            "index": index,
            "seed": self.seed,
            "subtask": "+".join(ex.subtask for ex in exchanges),
            "scene": scene.to_dict(),
            "instance_map": scene.instance_map,
            "targets": targets,
            "vqa": vqa,
            "no_target": any(ex.no_target for ex in exchanges),
            "is_sentence": any(ex.is_sentence for ex in exchanges),
        }
        first = exchanges[0]
        if len(exchanges) == 1 and first.query is not None:
            meta["query"] = first.query.to_dict()
            meta["expression"] = first.expression
        if task == "vqa":
            meta["answer"] = vqa[0]["answer"]
        return StampSample(
            id=f"synthref/{self.split}/{index}",
            image=Image.fromarray(scene.image),
            turns=turns,
            masks=masks,
            task=TASK_OF.get(task, task),
            meta=meta,
        )


def _checked_weights(weights: Mapping[str, float], valid, what: str, option: str) -> list[float]:
    """The weights in the order of `valid` (missing ones 0), after checking names and signs."""
    unknown = sorted(set(weights) - set(valid))
    if unknown:
        raise ValueError(f"unknown SynthRef {what}(s) {unknown}; valid: {', '.join(valid)}")
    values = [float(weights.get(k, 0.0)) for k in valid]
    if any(v < 0 for v in values) or not any(v > 0 for v in values):
        raise ValueError(f"{option} must be >= 0 with at least one positive, got {dict(weights)}")
    return values


def _vqa_kind_probs(weights: Mapping[str, float]) -> tuple[float, ...]:
    values = _checked_weights(weights, VQA_KINDS, "VQA kind", "vqa_kind_weights")
    return tuple(v / sum(values) for v in values)


def _normalise_weights(weights: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
    values = _checked_weights(weights, list(TASK_BUILDERS), "task", "task_weights")
    names = [n for n, v in zip(TASK_BUILDERS, values) if v > 0]
    probs = np.array([v for v in values if v > 0])
    return names, probs / probs.sum()
