"""Training metrics: a CSV per run (and TensorBoard when installed), plus a PNG of the loss curves."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from PIL import Image, ImageDraw

CURVES = ("loss", "text_loss", "bce_loss", "dice_loss")
COLOURS = {
    "loss": (0, 0, 0),
    "text_loss": (0, 114, 178),
    "bce_loss": (213, 94, 0),
    "dice_loss": (0, 158, 115),
}


class MetricsLog:
    """Appends `step, split, name, value` rows to `<out_dir>/metrics.csv` (safe across resumes)."""

    def __init__(self, out_dir: Path, resume_step: int | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.csv"
        if not self.path.exists():
            self.path.write_text("step,split,name,value\n")
        elif resume_step is not None:  # drop what a killed run logged after its last checkpoint
            kept = [r for r in self.read() if r[0] <= resume_step]
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["step", "split", "name", "value"])
                w.writerows([[st, sp, n, f"{v:.6g}"] for st, sp, n, v in kept])
            tmp.replace(self.path)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out_dir / "tb"))
        except Exception:  # tensorboard is optional
            self.tb = None

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        with self.path.open("a", newline="") as fh:
            w = csv.writer(fh)
            for name, value in values.items():
                w.writerow([step, split, name, f"{float(value):.6g}"])
                if self.tb is not None:
                    self.tb.add_scalar(f"{split}/{name}", float(value), step)

    def close(self) -> None:
        """Flush and close the TensorBoard writer, if any (the CSV is written line by line)."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def read(self) -> list[tuple[int, str, str, float]]:
        with self.path.open() as fh:
            return [(int(r["step"]), r["split"], r["name"], float(r["value"])) for r in csv.DictReader(fh)]

    def plot(self, path: Path | None = None, size: tuple[int, int] = (800, 450)) -> Path:
        """Draw the training loss curves (log-scale y) to `loss_curves.png`."""
        rows = [r for r in self.read() if r[1] == "train" and r[2] in CURVES and r[3] > 0]
        path = Path(path or self.out_dir / "loss_curves.png")
        img = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(img)
        w, h, pad = size[0], size[1], 50
        if rows:
            steps = [r[0] for r in rows]
            logs = [math.log10(r[3]) for r in rows]
            x0, x1 = min(steps), max(max(steps), min(steps) + 1)
            y0, y1 = min(logs), max(max(logs), min(logs) + 1e-3)
            sx = lambda s: pad + (s - x0) / (x1 - x0) * (w - 2 * pad)  # noqa: E731
            sy = lambda v: h - pad - (v - y0) / (y1 - y0) * (h - 2 * pad)  # noqa: E731
            draw.rectangle([pad, pad, w - pad, h - pad], outline=(180, 180, 180))
            for i, name in enumerate(CURVES):
                pts = [(sx(s), sy(math.log10(v))) for s, _, n, v in rows if n == name]
                if len(pts) > 1:
                    draw.line(pts, fill=COLOURS[name], width=2)
                draw.text((pad + 10 + 120 * i, 10), name, fill=COLOURS[name])
            draw.text((pad, h - pad + 8), f"step {x0}", fill=(0, 0, 0))
            draw.text((w - pad - 80, h - pad + 8), f"step {x1}", fill=(0, 0, 0))
            draw.text((5, pad), f"{10**y1:.3g}", fill=(0, 0, 0))
            draw.text((5, h - pad - 10), f"{10**y0:.3g}", fill=(0, 0, 0))
        img.save(path)
        return path
