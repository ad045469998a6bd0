"""Writing results: JSON with COCO RLE, mask PNGs, overlays -- atomically, never clobbering."""

from stamp.outputs.files import (
    atomic_write_bytes,
    ensure_writable,
    overlay_masks,
    result_to_dict,
    write_result,
)

__all__ = ["atomic_write_bytes", "ensure_writable", "overlay_masks", "result_to_dict", "write_result"]
