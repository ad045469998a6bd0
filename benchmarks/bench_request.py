"""Per-request latency by stage (image load, vision, prefill, decode, mask pass, postprocess,
refinement), a second query on the same image, and throughput at batch sizes 1, 4 and 8.

    python benchmarks/bench_request.py --preset synth --json request.json

Same options as `stamp bench` (which runs this and the mask-pass benchmark together); see
docs/PERFORMANCE.md.
"""

import sys

from stamp.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--parts", "request", *sys.argv[1:]]))
