"""Original segment-anything checkpoints (`sam_vit_h_4b8939.pth`, ...) mapped onto transformers' `SamModel`.

The released SAM v1 checkpoints are plain state dicts saved with `torch.save`, in the layout of the
original code (github.com/facebookresearch/segment-anything):
    image_encoder.{pos_embed, patch_embed.proj, blocks.i.{norm1, attn.{qkv, proj, rel_pos_h, rel_pos_w},
                   norm2, mlp.{lin1, lin2}}, neck.{0, 1, 2, 3}}
    prompt_encoder.{pe_layer.positional_encoding_gaussian_matrix, point_embeddings.i, not_a_point_embed,
                    mask_downscaling.{0, 1, 3, 4, 6}, no_mask_embed}
    mask_decoder.{iou_token, mask_tokens, transformer.{layers.i.{self_attn, norm1, cross_attn_token_to_image,
                  norm2, mlp.{lin1, lin2}, norm3, norm4, cross_attn_image_to_token}, final_attn_token_to_image,
                  norm_final_attn}, output_upscaling.{0, 1, 3}, output_hypernetworks_mlps.i.layers.j,
                  iou_prediction_head.layers.j}
    (pixel_mean, pixel_std: optional, the normalisation in 0-255 units)
They are read with `torch.load(weights_only=True)` (or safetensors), never by plain unpickling.

Every size of the `SamConfig` is read from the tensor shapes (ViT-B/L/H and smaller variants alike):
encoder width and depth, heads (from the relative-position tables: (2 * size - 1, head_dim)), window size
and global-attention blocks (a global block's table spans the whole 64 x 64 grid), MLP widths, mask
channels. The mask decoder's head count is the one thing the shapes do not determine; every SAM v1
checkpoint uses 8 (`DECODER_HEADS`). The decoder transformer's LayerNorms use eps 1e-5 as the original
`nn.LayerNorm` does (transformers' default is 1e-6), so the mapped model computes what the original does.

Loading is strict: every tensor of the checkpoint must map onto a parameter of the model with the same
shape and every parameter must be filled, otherwise one-line `RefineError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from stamp.refine.base import RefineError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
DECODER_HEADS = 8
DECODER_LAYER_NORM_EPS = 1e-5  # the original TwoWayTransformer's nn.LayerNorm default
ENCODER_LAYER_NORM_EPS = 1e-6  # the original ImageEncoderViT / LayerNorm2d eps

_ATTN = r"(self_attn|cross_attn_token_to_image|cross_attn_image_to_token|final_attn_token_to_image)"
_PROJ = r"(q_proj|k_proj|v_proj|out_proj)"
_WB = r"(weight|bias)"

# (original key pattern, transformers key template) pairs, matched with re.fullmatch. A key that matches
# none of them is unexpected. MLP layers of the mask decoder are mapped by `_map_mlp_layer`.
_RULES: tuple[tuple[str, str], ...] = (
    (r"image_encoder\.pos_embed", r"vision_encoder.pos_embed"),
    (rf"image_encoder\.patch_embed\.proj\.{_WB}", r"vision_encoder.patch_embed.projection.\1"),
    (rf"image_encoder\.blocks\.(\d+)\.norm([12])\.{_WB}", r"vision_encoder.layers.\1.layer_norm\2.\3"),
    (rf"image_encoder\.blocks\.(\d+)\.attn\.(qkv|proj)\.{_WB}", r"vision_encoder.layers.\1.attn.\2.\3"),
    (r"image_encoder\.blocks\.(\d+)\.attn\.(rel_pos_h|rel_pos_w)", r"vision_encoder.layers.\1.attn.\2"),
    (rf"image_encoder\.blocks\.(\d+)\.mlp\.(lin1|lin2)\.{_WB}", r"vision_encoder.layers.\1.mlp.\2.\3"),
    (r"image_encoder\.neck\.0\.weight", r"vision_encoder.neck.conv1.weight"),
    (rf"image_encoder\.neck\.1\.{_WB}", r"vision_encoder.neck.layer_norm1.\1"),
    (r"image_encoder\.neck\.2\.weight", r"vision_encoder.neck.conv2.weight"),
    (rf"image_encoder\.neck\.3\.{_WB}", r"vision_encoder.neck.layer_norm2.\1"),
    (r"prompt_encoder\.point_embeddings\.(\d+)\.weight", r"prompt_encoder.point_embed.\1.weight"),
    (r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight", r"prompt_encoder.\1.weight"),
    (rf"prompt_encoder\.mask_downscaling\.0\.{_WB}", r"prompt_encoder.mask_embed.conv1.\1"),
    (rf"prompt_encoder\.mask_downscaling\.1\.{_WB}", r"prompt_encoder.mask_embed.layer_norm1.\1"),
    (rf"prompt_encoder\.mask_downscaling\.3\.{_WB}", r"prompt_encoder.mask_embed.conv2.\1"),
    (rf"prompt_encoder\.mask_downscaling\.4\.{_WB}", r"prompt_encoder.mask_embed.layer_norm2.\1"),
    (rf"prompt_encoder\.mask_downscaling\.6\.{_WB}", r"prompt_encoder.mask_embed.conv3.\1"),
    (r"mask_decoder\.(iou_token|mask_tokens)\.weight", r"mask_decoder.\1.weight"),
    (
        rf"mask_decoder\.transformer\.layers\.(\d+)\.{_ATTN}\.{_PROJ}\.{_WB}",
        r"mask_decoder.transformer.layers.\1.\2.\3.\4",
    ),
    (
        rf"mask_decoder\.transformer\.layers\.(\d+)\.norm([1-4])\.{_WB}",
        r"mask_decoder.transformer.layers.\1.layer_norm\2.\3",
    ),
    (
        rf"mask_decoder\.transformer\.layers\.(\d+)\.mlp\.(lin1|lin2)\.{_WB}",
        r"mask_decoder.transformer.layers.\1.mlp.\2.\3",
    ),
    (rf"mask_decoder\.transformer\.{_ATTN}\.{_PROJ}\.{_WB}", r"mask_decoder.transformer.\1.\2.\3"),
    (
        rf"mask_decoder\.transformer\.norm_final_attn\.{_WB}",
        r"mask_decoder.transformer.layer_norm_final_attn.\1",
    ),
    (rf"mask_decoder\.output_upscaling\.0\.{_WB}", r"mask_decoder.upscale_conv1.\1"),
    (rf"mask_decoder\.output_upscaling\.1\.{_WB}", r"mask_decoder.upscale_layer_norm.\1"),
    (rf"mask_decoder\.output_upscaling\.3\.{_WB}", r"mask_decoder.upscale_conv2.\1"),
)
_MLP_LAYER = re.compile(
    rf"mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.(\d+)\.{_WB}"
)
_POSITIONAL = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_POSITIONAL_TARGETS = (
    "shared_image_embedding.positional_embedding",
    "prompt_encoder.shared_embedding.positional_embedding",
)
_NORMALISATION = ("pixel_mean", "pixel_std")


def is_sam_checkpoint_file(path: str | os.PathLike) -> bool:
    """Whether `path` names a single checkpoint file (by suffix), as opposed to a model directory."""
    return Path(path).suffix.lower() in CHECKPOINT_SUFFIXES


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: `torch.load(weights_only=True)`, or safetensors by suffix.

    Raises:
        RefineError: missing file, unreadable file, or not a flat {name: tensor} dict.
    """
    path = Path(path)
    if not path.is_file():
        raise RefineError(f"SAM checkpoint not found: {path}")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load / safetensors raise many types; one line for the user
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RefineError(f"cannot read SAM checkpoint {path}: {first_line}") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise RefineError(f"{path} is not a state dict of tensors (a segment-anything checkpoint is one)")
    return state


def original_sam_config(state: dict[str, torch.Tensor]) -> transformers.SamConfig:
    """The `SamConfig` of an original-layout state dict, every size read from tensor shapes.

    Raises:
        RefineError: a tensor the sizes are read from is missing, or the shapes are inconsistent.
    """
    try:
        return _original_sam_config(state)
    except KeyError as exc:
        raise RefineError(f"not a segment-anything SAM checkpoint: no tensor {exc.args[0]!r}") from None
    except (ValueError, ZeroDivisionError, IndexError) as exc:
        raise RefineError(f"not a segment-anything SAM checkpoint: {exc}") from None


def _original_sam_config(state: dict[str, torch.Tensor]) -> transformers.SamConfig:
    patch = state["image_encoder.patch_embed.proj.weight"]  # (C, 3, p, p)
    width, channels, patch_size = patch.shape[0], patch.shape[1], patch.shape[2]
    grid = state["image_encoder.pos_embed"].shape[1]  # (1, g, g, C)
    depth = _count(state, r"image_encoder\.blocks\.(\d+)\.")
    if depth == 0:
        raise ValueError("no image_encoder.blocks")
    table = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape for i in range(depth)]  # (2s-1, hd)
    head_dim = table[0][1]
    if width % head_dim:
        raise ValueError(f"encoder width {width} is not a multiple of the head size {head_dim}")
    sizes = [(n + 1) // 2 for n, _ in table]
    windows = {s for s in sizes if s != grid}
    if len(windows) > 1:
        raise ValueError(f"encoder blocks use several window sizes {sorted(windows)}")
    window = windows.pop() if windows else 0
    global_blocks = [i for i, s in enumerate(sizes) if s == grid and window != 0]
    vision = dict(
        hidden_size=width, num_channels=channels, image_size=grid * patch_size, patch_size=patch_size,
        num_hidden_layers=depth, num_attention_heads=width // head_dim,
        mlp_dim=state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0],
        output_channels=state["image_encoder.neck.0.weight"].shape[0],
        qkv_bias="image_encoder.blocks.0.attn.qkv.bias" in state, use_abs_pos=True, use_rel_pos=True,
        window_size=window, global_attn_indexes=global_blocks,
        num_pos_feats=state[_POSITIONAL].shape[1], layer_norm_eps=ENCODER_LAYER_NORM_EPS,
    )  # fmt: skip
    prompt = dict(
        hidden_size=state["prompt_encoder.no_mask_embed.weight"].shape[1], image_size=grid * patch_size,
        patch_size=patch_size, mask_input_channels=state["prompt_encoder.mask_downscaling.3.weight"].shape[0],
        num_point_embeddings=_count(state, r"prompt_encoder\.point_embeddings\.(\d+)\."),
        layer_norm_eps=ENCODER_LAYER_NORM_EPS,
    )  # fmt: skip
    hidden = state["mask_decoder.iou_token.weight"].shape[1]
    cross = state["mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight"].shape[0]
    decoder = dict(
        hidden_size=hidden, num_hidden_layers=_count(state, r"mask_decoder\.transformer\.layers\.(\d+)\."),
        mlp_dim=state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
        num_attention_heads=DECODER_HEADS, attention_downsample_rate=hidden // cross,
        num_multimask_outputs=state["mask_decoder.mask_tokens.weight"].shape[0] - 1,
        iou_head_depth=_count(state, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\."),
        iou_head_hidden_dim=state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
        layer_norm_eps=DECODER_LAYER_NORM_EPS,
    )  # fmt: skip
    return transformers.SamConfig(
        vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder
    )


def map_original_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an original-layout state dict to transformers' `SamModel` names.

    Returns:
        (mapped {transformers name: tensor}, original names that no rule maps). `pixel_mean` and
        `pixel_std` are neither: they are normalisation, not weights (see `original_normalisation`).
    """
    depths: dict[str, int] = {}
    for key in state:
        m = _MLP_LAYER.fullmatch(key)
        if m:
            depths[m.group(1)] = max(depths.get(m.group(1), 0), int(m.group(2)) + 1)
    mapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        if key in _NORMALISATION:
            continue
        if key == _POSITIONAL:
            for target in _POSITIONAL_TARGETS:
                mapped[target] = value
            continue
        new = _map_key(key, lambda m: _map_mlp_layer(m, depths))
        if new is None:
            unmapped.append(key)
        else:
            mapped[new] = value
    return mapped, unmapped


def original_normalisation(
    state: dict[str, torch.Tensor],
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) in 0-1 units from the checkpoint's pixel_mean / pixel_std (0-255), if it has them."""
    if not all(k in state for k in _NORMALISATION):
        return None
    mean, std = (tuple(float(x) / 255.0 for x in state[k].flatten()) for k in _NORMALISATION)
    return mean, std


def load_original_sam(
    path: str | os.PathLike,
) -> tuple[transformers.SamModel, tuple[tuple[float, ...], tuple[float, ...]] | None]:
    """A float32 transformers `SamModel` holding an original segment-anything checkpoint file, strictly.

    Returns:
        (model in eval mode on the CPU, (mean, std) from the checkpoint or None when it has none).

    Raises:
        RefineError: unreadable file, unknown layout, or any tensor left over / missing / misshapen.
    """
    path = Path(path)
    state = read_state_dict(path)
    return build_original_sam(state, source=str(path)), original_normalisation(state)


def build_original_sam(state: dict[str, torch.Tensor], source: str = "checkpoint") -> transformers.SamModel:
    """`SamModel` (eval mode, float32) whose parameters ARE the mapped tensors of an original-layout state
    dict (meta tensors give a meta model: a layout can be checked without any weights).

    Raises:
        RefineError: unknown layout, or any tensor left over / missing / misshapen (named in one line,
            prefixed by `source`).
    """
    config = original_sam_config(state)
    mapped, unmapped = map_original_keys(state)
    with torch.device("meta"):
        model = transformers.SamModel(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in mapped]
    unexpected = unmapped + [k for k in mapped if k not in expected]
    misshapen = [
        f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}"
        for k, v in mapped.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or misshapen:
        parts = [
            f"{len(items)} {what} (e.g. {items[0]})"
            for what, items in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
            if items
        ]
        raise RefineError(f"{source} does not map onto transformers' SamModel: {'; '.join(parts)}")
    weights = {k: v.float() if v.is_floating_point() else v for k, v in mapped.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def _map_key(key: str, mlp: Callable[[re.Match], str]) -> str | None:
    """The transformers name of one original key, or None."""
    m = _MLP_LAYER.fullmatch(key)
    if m:
        return mlp(m)
    for pattern, template in _RULES:
        m = re.fullmatch(pattern, key)
        if m:
            return m.expand(template)
    return None


def _map_mlp_layer(m: re.Match, depths: dict[str, int]) -> str:
    """Original MLP `layers.{0..n-1}` -> transformers `proj_in`, `layers.{0..n-3}`, `proj_out`."""
    owner, index, kind = m.group(1), int(m.group(2)), m.group(3)
    n = depths[owner]
    name = "proj_in" if index == 0 else "proj_out" if index == n - 1 else f"layers.{index - 1}"
    return f"mask_decoder.{owner}.{name}.{kind}"


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    """1 + the largest index captured by `prefix` at the start of any key (0 when none)."""
    pattern = re.compile(prefix)
    indices = [int(m.group(1)) for k in state if (m := pattern.match(k))]
    return max(indices) + 1 if indices else 0
