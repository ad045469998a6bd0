"""STAMP's method, on transformers' Qwen2-VL / Qwen2.5-VL classes. Read in this order:

    tokens.py      the two tokens: `<|seg|>` (the model emits it where a mask belongs), `<|mask|>` (the
                   placeholder, one per merged image cell)
    settings.py    what makes a Qwen2-VL a STAMP model, saved in its config.json (`StampSettings`)
    positions.py   the placeholders' M-RoPE position ids
    attention.py   the hybrid attention mask: causal text, bidirectional placeholders
    reference.py   THE SPEC: one sample's forward over [conversation ; placeholders], stated plainly
    modeling.py    `StampModel`: the pieces the reference uses (mask embeddings, the decoder with an
                   explicit mask, the FG/BG classifier) and the packed training forward, held equal to
                   the reference by tests (its index bookkeeping: batch_plan.py, packing.py)
    losses.py      text cross-entropy, BCE and Dice on the cells
    loading.py     `from_pretrained` for every checkpoint layout, by folder or shipped name
    build.py       one builder from an `Architecture`: scratch training, the tiny test model, presets

Generation (the answer token by token, each mask in one pass on the KV cache) is
`stamp.inference.generation`, equally held to the reference.
"""
