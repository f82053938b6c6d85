"""Atomic, rotating checkpoints.

A checkpoint is a folder ``<root>/step_00000042`` written in full under a hidden temp name in the same
filesystem, fsynced, then renamed into place; ``<root>/latest`` (a one-line file, itself replaced
atomically) names the newest complete one. A process killed while saving leaves at most a stale
``.tmp-*`` folder, which is never read and is removed by the next save; the previous checkpoint stays intact.
What goes inside is up to the caller (``write_fn(tmp_dir)``): the trainer writes the model in Hugging Face
format plus optimizer, scheduler, RNG, data-position and RL state.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def _fsync_tree(path: Path) -> None:
    for dirpath, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temp folders are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    root = Path(root)
    marker = root / "latest"
    if marker.is_file():
        named = root / marker.read_text().strip()
        if named.is_dir() and _STEP_DIR.match(named.name):
            return named
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(root: str | Path, step: int, write_fn: Callable[[Path], None], keep_last: int = 3) -> Path:
    """Write a checkpoint for ``step`` atomically with ``write_fn(tmp_dir)``; keep the newest ``keep_last``."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        write_fn(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # the same step saved again (e.g. after a resume): swap, then drop the old one
        old = root / f".tmp-old-{final.name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _atomic_write_text(root / "latest", final.name + "\n")
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def rng_state() -> dict:
    """Python, numpy and torch (CPU and CUDA) RNG states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = ["save_checkpoint", "latest_checkpoint", "list_checkpoints", "rng_state", "set_rng_state"]
