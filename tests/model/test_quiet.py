"""The Python API prints nothing of its own accord: no loading bar, no DeepSpeed notice (DeepSpeed is
not even imported) unless asked with `verbose=True` or the `stamp` logger at INFO."""

import os
import subprocess
import sys

SCRIPT = """
import sys
from stamp.model.modeling import StampModel
from stamp.processing import StampProcessor
model = StampModel.from_pretrained("tiny-synth"{verbose})
model.save_stamp(sys.argv[1], StampProcessor.from_pretrained("tiny-synth"))
print("deepspeed" in sys.modules)
"""


def _run(tmp_path, verbose=""):
    quiet = ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_NO_ADVISORY_WARNINGS")
    env = {k: v for k, v in os.environ.items() if k not in quiet}  # as a user's (the CLI sets these)
    return subprocess.run(
        [sys.executable, "-c", SCRIPT.format(verbose=verbose), str(tmp_path / "m")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_load_and_save_print_nothing_and_skip_deepspeed(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "False\n" and proc.stderr == ""


def test_verbose_shows_the_loading_bar(tmp_path):
    proc = _run(tmp_path, ", verbose=True")
    assert proc.returncode == 0, proc.stderr
    assert "Loading weights" in proc.stderr
