"""SynthRef: the procedural referring-segmentation and dialogue benchmark the bundled model is trained on.

scenes, backgrounds   coloured shapes on varied backgrounds, with pixel-exact instance masks
queries               structured referring queries and how they resolve to a scene's objects
templates             SynthRef's wording (the questions and answers shared with the real loaders
                      are in `stamp.data.templates`)
tasks, chat           the task builders: one scene -> question/answer exchanges
dataset               `SynthRef`, the seeded data set of `StampSample`s
export                SynthRef written in the real benchmarks' on-disk formats
"""

from stamp.data.synthref.dataset import DEFAULT_TASK_WEIGHTS, SPLITS, SynthRef
from stamp.data.synthref.export import EVAL_KINDS, export_synthref
from stamp.data.synthref.export import FORMATS as EXPORT_FORMATS
from stamp.data.synthref.queries import Filter, Query, Resolution, resolve
from stamp.data.synthref.scenes import (
    COLOURS,
    HELD_OUT_PAIRS,
    KINDS,
    Scene,
    SceneConfig,
    SceneObject,
    sample_scene,
)

__all__ = [
    "COLOURS",
    "DEFAULT_TASK_WEIGHTS",
    "EVAL_KINDS",
    "EXPORT_FORMATS",
    "HELD_OUT_PAIRS",
    "KINDS",
    "SPLITS",
    "Filter",
    "Query",
    "Resolution",
    "Scene",
    "SceneConfig",
    "SceneObject",
    "SynthRef",
    "export_synthref",
    "resolve",
    "sample_scene",
]
