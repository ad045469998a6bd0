"""stamp-seg: STAMP (Simultaneous Textual All-Mask Prediction) on Qwen2-VL.

    from stamp import StampModel, StampPredictor
    predictor = StampPredictor(StampModel.from_pretrained("path/to/model"))   # or "tiny-synth", shipped
    predictor.set_image("photo.jpg")
    result = predictor.chat("Please segment the dog.")

The method itself reads top to bottom in `stamp.model` (its package docstring gives the order). The
public names are imported lazily, so `import stamp.data` (data-loader workers) and `stamp --help`
do not pay for importing torch and transformers.
"""

from importlib import import_module

_EXPORTS = {
    "StampModel": "stamp.model.modeling",
    "StampOutput": "stamp.model.modeling",
    "StampPredictor": "stamp.inference.predictor",
    "StampResult": "stamp.inference.predictor",
    "StampMask": "stamp.inference.predictor",
    "StampSettings": "stamp.model.settings",
    "StampProcessor": "stamp.processing",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'stamp' has no attribute {name!r}")
