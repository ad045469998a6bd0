"""One-off first look: each form at the Qwen2-VL-2B shape (bf16, CPU) against the plain path.

Runs against commit 772d33c with src/stamp/bench/presets.py copied in: python first_look.py
(under load from other processes: interleaved.py repeats the close calls)."""
import copy, json, os, statistics, sys, time
import torch
from stamp.bench.presets import build_preset_model
from stamp.bench.mask_pass import MaskPassBench, grid_for
from stamp.bench.flops import matmul_peak
from stamp.inference import generation as G
torch.set_num_threads(2)
out = {}
def rec(k, v):
    out[k] = v; print(k, v, flush=True)
    json.dump(out, open("first-look.json", "w"), indent=1)

def t(fn, reps):
    fn()  # warm-up
    s = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); s.append(time.perf_counter() - t0)
    return [round(x * 1e3, 1) for x in s]

model, _ = build_preset_model("qwen2-vl-2b")
ref = matmul_peak(torch.bfloat16, "cpu", [(1024,1024,1024),(2048,2048,2048)], repeats=3)
rec("matmul_gflops", ref.best_gflops)
which = sys.argv[1:] or ["mask", "vision", "batch"]
if "mask" in which:
    for n in (256, 1024):
        b = MaskPassBench(model, 512, grid_for(n))
        reps = 3
        os.environ["STAMP_CPU_ATTENTION"] = "auto"
        rec(f"mask N={n} one_forward (masked sdpa)", t(b.stamp_one_forward, reps))
        rec(f"mask N={n} two_forward matmul-attention", t(b.stamp_two_forward, reps))
        os.environ["STAMP_CPU_ATTENTION"] = "sdpa"
        rec(f"mask N={n} two_forward sdpa", t(b.stamp_two_forward, reps))
        os.environ["STAMP_CPU_ATTENTION"] = "auto"
if "vision" in which:
    from PIL import Image
    import numpy as np
    for side in (448, 896):
        img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8))
        enc = model.processor.encode_image(img)
        pv = enc.pixel_values.to(torch.bfloat16); grid = enc.grid_thw[None]
        f = lambda: model.encode_images(pv, grid)
        with torch.no_grad():
            os.environ["STAMP_CPU_ATTENTION"] = "auto"
            rec(f"vision {side} matmul-attention", t(f, 2))
            os.environ["STAMP_CPU_ATTENTION"] = "sdpa"
            rec(f"vision {side} sdpa", t(f, 2))
            os.environ["STAMP_CPU_ATTENTION"] = "auto"
    # several images of one size (a batch): packed vs per-image
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (448, 448, 3), dtype=np.uint8))
    enc = model.processor.encode_image(img)
    pv = torch.cat([enc.pixel_values] * 4).to(torch.bfloat16); grid = torch.stack([enc.grid_thw] * 4)
    f = lambda: model.encode_images(pv, grid)
    with torch.no_grad():
        for mode in ("per_image", "packed"):
            os.environ["STAMP_VISION_ATTENTION"] = mode
            rec(f"vision 4x448 {mode}", t(f, 2))
    os.environ.pop("STAMP_VISION_ATTENTION")
if "batch" in which:
    # a padded batch of two requests at <|seg|> together: grids 32x32 and 32x36 (the paper's 1024-1280 cells)
    hidden = model.config.text_config.hidden_size
    reqs = []
    proc = model.processor
    from stamp.data.sample import Turn
    from stamp.processing import EncodedImage
    for gh, gw in ((32, 32), (32, 36)):
        grid = torch.tensor([1, 2 * gh, 2 * gw])
        enc = EncodedImage(torch.zeros(4 * gh * gw, 1176), grid, (28 * gw, 28 * gh))
        ids, _ = proc.encode_turns([Turn("user", "Please segment the dog.")], enc, add_generation_prompt=True)
        feats = torch.randn(gh * gw, hidden, dtype=torch.bfloat16) * 0.02
        reqs.append(G.GenerationRequest(ids, feats, grid, []))
    pre = G.prefill(model, reqs, proc.pad_id if hasattr(proc, "pad_id") else proc.pad_token_id)
    seg = model.stamp.seg_token_id
    grids = [(32, 32), (32, 36)]
    next_pos = pre.positions[:, :, -1].max(0).values + 1
    res = {}
    def step(form):
        os.environ["STAMP_MASK_PASS"] = form
        cache = copy.deepcopy(pre.cache)
        hidden, _ = G._step(model, cache, pre.key_block, [seg, seg], [False, False], [0, 1], reqs, grids, next_pos)
        res[form] = hidden[:, 1:].float()
    for form in ("one_forward", "per_row", "two_forward"):
        with torch.no_grad():
            rec(f"batch2 mask step {form}", t(lambda: step(form), 2))
    os.environ.pop("STAMP_MASK_PASS")
    rec("batch2 max diff per_row vs one_forward", float((res["per_row"][0, :1024] - res["one_forward"][0, :1024]).abs().max()))
