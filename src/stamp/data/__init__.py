"""Data: the `StampSample` record, the real-benchmark loaders, the registry of data kinds and a training
mixture. The SynthRef generator (scenes, tasks, the `SynthRef` data set, its exports) is the subpackage
`stamp.data.synthref`."""

from stamp.data.errors import DataError
from stamp.data.grefer import GReferDataset, load_grefer
from stamp.data.llava import LlavaDataset, load_llava
from stamp.data.mixture import MixtureDataset
from stamp.data.reasonseg import ReasonSegDataset, load_reasonseg
from stamp.data.refer import ReferDataset, load_refer
from stamp.data.safe_pickle import UnsafePickleError, load_plain_pickle
from stamp.data.sample import (
    IGNORE_INDEX,
    MASK_TOKEN,
    SEG_TOKEN,
    HistoryError,
    StampSample,
    Turn,
    parse_history,
)

__all__ = [
    "IGNORE_INDEX",
    "MASK_TOKEN",
    "SEG_TOKEN",
    "DataError",
    "GReferDataset",
    "HistoryError",
    "LlavaDataset",
    "MixtureDataset",
    "ReasonSegDataset",
    "ReferDataset",
    "StampSample",
    "Turn",
    "UnsafePickleError",
    "load_grefer",
    "load_llava",
    "load_plain_pickle",
    "load_reasonseg",
    "load_refer",
    "parse_history",
]
