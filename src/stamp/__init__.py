"""stamp-seg: STAMP (Simultaneous Textual All-Mask Prediction) on Qwen2-VL.

from stamp import StampModel, StampPredictor
predictor = StampPredictor(StampModel.from_pretrained("path/to/model"))
predictor.set_image("photo.jpg")
result = predictor.chat("Please segment the dog.")
"""

from stamp.inference.predictor import StampMask, StampPredictor, StampResult
from stamp.model.config import StampSettings
from stamp.model.modeling import StampModel, StampOutput
from stamp.processing import StampProcessor

__all__ = [
    "StampModel",
    "StampOutput",
    "StampPredictor",
    "StampResult",
    "StampMask",
    "StampSettings",
    "StampProcessor",
]
