"""The mask-pass benchmark alone: STAMP's one pass vs. no cache reuse vs. autoregressive labels.

    python benchmarks/bench_mask_pass.py --preset synth --json mask_pass.json
    python benchmarks/bench_mask_pass.py --preset tiny --n 256,1024 --dtypes fp32 --threads 2

Same options as `stamp bench` (which runs this and the request benchmark together); see
docs/PERFORMANCE.md for what is measured and the JSON schema.
"""

import sys

from stamp.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--parts", "mask_pass", *sys.argv[1:]]))
