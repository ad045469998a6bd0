"""Data: the `StampSample` record, real-benchmark loaders, the SynthRef benchmark and its exports."""

from stamp.data.errors import DataError
from stamp.data.export import FORMATS as EXPORT_FORMATS
from stamp.data.export import export_synthref
from stamp.data.grefer import GReferDataset, load_grefer
from stamp.data.llava import LlavaDataset, load_llava
from stamp.data.mixture import MixtureDataset
from stamp.data.queries import Filter, Query, Resolution, resolve
from stamp.data.reasonseg import ReasonSegDataset, load_reasonseg
from stamp.data.refer import ReferDataset, load_refer
from stamp.data.safe_pickle import UnsafePickleError, load_plain_pickle
from stamp.data.sample import IGNORE_INDEX, MASK_TOKEN, SEG_TOKEN, StampSample, Turn
from stamp.data.scenes import COLOURS, HELD_OUT_PAIRS, KINDS, Scene, SceneConfig, SceneObject, sample_scene
from stamp.data.synthref import DEFAULT_TASK_WEIGHTS, SPLITS, SynthRef

__all__ = [
    "COLOURS",
    "DEFAULT_TASK_WEIGHTS",
    "EXPORT_FORMATS",
    "HELD_OUT_PAIRS",
    "IGNORE_INDEX",
    "KINDS",
    "MASK_TOKEN",
    "SEG_TOKEN",
    "SPLITS",
    "DataError",
    "Filter",
    "GReferDataset",
    "LlavaDataset",
    "MixtureDataset",
    "Query",
    "ReasonSegDataset",
    "ReferDataset",
    "Resolution",
    "Scene",
    "SceneConfig",
    "SceneObject",
    "StampSample",
    "SynthRef",
    "Turn",
    "UnsafePickleError",
    "export_synthref",
    "load_grefer",
    "load_llava",
    "load_plain_pickle",
    "load_reasonseg",
    "load_refer",
    "resolve",
    "sample_scene",
]
