"""Observability for every stage: metrics as JSONL and TensorBoard events, a PNG of the main curves,
and a one-line progress bar (step, tokens/s, loss, reward, ETA).

Only rank 0 writes (pass ``enabled=False`` elsewhere). The JSONL is appended and flushed each step, so a
killed run keeps every step it logged; the PNG is rewritten atomically (temp file + rename).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

# Curves drawn in the PNG, in this order, when the run logs them.
PLOT_KEYS = (
    "loss",
    "reward",
    "pass_rate",
    "heldout_pass@1",
    "entropy_mean",
    "clip_frac_high",
    "clip_frac_low",
    "kl_mean",
    "response_len",
    "zero_variance_frac",
    "sampler_logp_diff",
    "lr",
    "grad_norm",
)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class MetricsLogger:
    """Writes ``metrics.jsonl``, TensorBoard events under ``tb/`` and ``curves.png`` in ``out_dir``."""

    def __init__(self, out_dir: str | Path, total_steps: int | None = None, enabled: bool = True,
                 tensorboard: bool = True, progress: bool = True, plot_every: int = 10,
                 plot_min_interval_s: float = 30.0):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.total_steps = total_steps
        # curves.png is redrawn every `plot_every` steps, but not sooner than `plot_min_interval_s` after the
        # last redraw: a redraw costs 0.5-1.6 s (measured: 1,656 SFT rows 0.47 s, 147 RL rows with 11 panels
        # 1.6 s), which every 10 steps of a 0.3 s SFT step was 16% of the run.
        self.plot_every = plot_every
        self.plot_min_interval_s = plot_min_interval_s
        self._last_plot = -math.inf
        self.history: list[dict] = []
        self._t0 = time.perf_counter()
        self._tb = None
        self._bar = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.out_dir / "tb"))
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, dynamic_ncols=True, desc="train")

    def log(self, step: int, metrics: dict) -> None:
        """Record the metrics of optimizer step ``step``."""
        if not self.enabled:
            return
        row = {"step": step, "time_s": round(time.perf_counter() - self._t0, 3)}
        row.update({k: (float(v) if _is_number(v) else v) for k, v in metrics.items()})
        self.history.append(row)
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in row.items():
                if _is_number(v) and k != "step" and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        if self._bar is not None:
            shown = {k: f"{row[k]:.4g}" for k in ("loss", "reward", "tokens_per_s") if _is_number(row.get(k))}
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(1)
        if self.plot_every and len(self.history) % self.plot_every == 0 \
                and time.perf_counter() - self._last_plot >= self.plot_min_interval_s:
            self.plot()

    def write(self, message: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def plot(self, path: str | Path | None = None) -> Path | None:
        """Draw every logged curve of PLOT_KEYS into one PNG (atomic replace). Returns its path."""
        if not self.enabled or not self.history:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = [k for k in PLOT_KEYS if any(_is_number(r.get(k)) for r in self.history)]
        if not keys:
            return None
        cols = min(3, len(keys))
        rows = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            pts = [(r["step"], r[key]) for r in self.history if _is_number(r.get(key))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50 else None)
            ax.set_title(key)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.tight_layout()
        path = Path(path) if path is not None else self.out_dir / "curves.png"
        tmp = path.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=90)
        plt.close(fig)
        os.replace(tmp, path)
        self._last_plot = time.perf_counter()
        return path

    def close(self) -> None:
        if not self.enabled:
            return
        self.plot()
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()


__all__ = ["MetricsLogger", "PLOT_KEYS"]
