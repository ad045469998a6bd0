"""Interleaved repeats (A B C A B C ...) of the competing forms at the Qwen2-VL-2B shape, bf16, CPU.

Runs against the code before the forms were removed (commit 772d33c, with src/stamp/bench/presets.py
copied in): python interleaved.py mask batch; python interleaved.py vision (each run adds to
interleaved.json)."""
import copy, json, os, statistics, sys, time
import torch
from stamp.bench.presets import build_preset_model
from stamp.bench.mask_pass import MaskPassBench, grid_for
from stamp.inference import generation as G
torch.set_num_threads(2)
out = json.load(open("interleaved.json")) if os.path.exists("interleaved.json") else {}
def interleave(label, fns, reps):
    for f in fns.values():
        f()
    s = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter(); f(); s[k].append(round((time.perf_counter() - t0) * 1e3, 1))
    for k, v in s.items():
        out[f"{label} {k}"] = {"median": statistics.median(v), "min": min(v), "samples": v}
        print(label, k, "median", statistics.median(v), "min", min(v), v, flush=True)
    json.dump(out, open("interleaved.json", "w"), indent=1)

def env(**kw):
    def wrap(fn):
        def run():
            old = {k: os.environ.get(k) for k in kw}
            os.environ.update(kw)
            try:
                return fn()
            finally:
                for k, v in old.items():
                    if v is None: os.environ.pop(k, None)
                    else: os.environ[k] = v
        return run
    return wrap

model, _ = build_preset_model("qwen2-vl-2b")
which = sys.argv[1:] or ["mask", "batch", "vision"]
if "mask" in which:
    for n in (1024, 256):
        b = MaskPassBench(model, 512, grid_for(n))
        interleave(f"mask N={n}", {
            "one_forward": b.stamp_one_forward,
            "two_forward_sdpa": env(STAMP_CPU_ATTENTION="sdpa")(b.stamp_two_forward),
        }, 5)
if "batch" in which:
    hidden = model.config.text_config.hidden_size
    reqs = []
    proc = model.processor
    from stamp.data.sample import Turn
    from stamp.processing import EncodedImage
    grids = [(32, 32), (32, 36)]
    for gh, gw in grids:
        grid = torch.tensor([1, 2 * gh, 2 * gw])
        enc = EncodedImage(torch.zeros(4 * gh * gw, 1176), grid, (28 * gw, 28 * gh))
        ids, _ = proc.encode_turns([Turn("user", "Please segment the dog.")], enc, add_generation_prompt=True)
        feats = torch.randn(gh * gw, hidden, dtype=torch.bfloat16) * 0.02
        reqs.append(G.GenerationRequest(ids, feats, grid, []))
    pre = G.prefill(model, reqs, proc.pad_token_id)
    seg = model.stamp.seg_token_id
    next_pos = pre.positions[:, :, -1].max(0).values + 1
    def step(form):
        @env(STAMP_MASK_PASS=form, STAMP_CPU_ATTENTION="sdpa")
        def run():
            cache = copy.deepcopy(pre.cache)
            with torch.no_grad():
                G._step(model, cache, pre.key_block, [seg, seg], [False, False], [0, 1], reqs, grids, next_pos)
        return run
    interleave("batch2 mask step", {f: step(f) for f in ("one_forward", "per_row", "two_forward")}, 3)
if "vision" in which:
    from PIL import Image
    import numpy as np
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (448, 448, 3), dtype=np.uint8))
    enc = model.processor.encode_image(img)
    pv = torch.cat([enc.pixel_values] * 4).to(torch.bfloat16); grid = torch.stack([enc.grid_thw] * 4)
    def vis():
        with torch.no_grad():
            model.encode_images(pv, grid)
    interleave("vision 4x448", {m: env(STAMP_VISION_ATTENTION=m, STAMP_CPU_ATTENTION="sdpa")(vis) for m in ("per_image", "packed")}, 3)
