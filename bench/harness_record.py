"""The JSON record of a bench run, written as it goes: :class:`Record` (contender -> figures, printed and
rewritten as partial JSON the moment each is added, SIGTERM handling), :func:`write_record` (one record from a
finished dict of results, what ``Record`` calls), :func:`summary_line`, and what a record says about where it was
measured (:func:`git_state`, :func:`device_info`, :func:`versions`).

bench/harness.py re-exports its public names: scripts import them from ``harness``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
_NOT_RATIOS = {"repeats"}
_VERSIONED = ("torch", "triton", "transformers", "liger-kernel", "numpy", "trl", "vt_core")


def git_state() -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository holding bench/."""
    def git(*cmd: str) -> str | None:
        proc = subprocess.run(["git", "-C", str(REPO_ROOT), *cmd], capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def device_info(device: str) -> dict[str, Any]:
    """What the figures were measured on: CPU model and cores, or GPU name, memory and capability."""
    info: dict[str, Any] = {"kind": device, "platform": platform.platform()}
    cpu_model = platform.processor() or None
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    info["cpu"] = {"model": cpu_model, "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if hasattr(os, "getloadavg"):
        info["cpu"]["load_average_1_5_15m"] = [round(x, 2) for x in os.getloadavg()]  # other work on the machine
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu"] = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 2),
            "capability": f"{props.major}.{props.minor}",
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
        }
    return info


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages that matter for the figures."""
    found = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _ratios(results: dict[str, dict], baseline: str) -> dict[str, dict[str, float | None]]:
    base = results[baseline]
    ratios: dict[str, dict[str, float | None]] = {}
    for contender, figures in results.items():
        ratios[contender] = {}
        for key, value in figures.items():
            if key in _NOT_RATIOS:
                continue
            ref = base.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(ref, (int, float)):
                ratios[contender][key] = value / ref if ref else None
    return ratios


def _static_record_fields(device: str) -> dict[str, Any]:
    return {**git_state(), "device": device_info(device), "versions": versions()}


def write_record(
    name: str,
    args: argparse.Namespace,
    shapes: dict,
    results: dict[str, dict],
    baseline: str | None = None,
    notes: str = "",
    partial: bool = False,
    _static: dict[str, Any] | None = None,
) -> Path:
    """Write ``<args.out>/<name>_<args.device>.json`` and return its path.

    The record holds: commit and dirty flag, UTC timestamp, device description, package versions, the
    command line, ``shapes``, each contender's figures (``results``: contender -> dict from
    :func:`measure` plus any derived figures) and, when ``baseline`` names a contender, ``ratios``:
    for every numeric figure, contender value / baseline value (so < 1 is faster for ``*_ms`` and
    leaner for ``peak_mem_mb``; > 1 is better for throughputs such as tokens/s).
    ``partial``: the run has not finished (``"partial": true`` in the record); a partial record may lack
    its baseline, and then has no ratios yet.
    """
    if baseline is not None and baseline not in results and not partial:
        raise ValueError(f"write_record: baseline {baseline!r} is not one of the contenders {sorted(results)}")
    static = _static if _static is not None else _static_record_fields(args.device)
    record = {
        "name": name,
        "commit": static["commit"],
        "dirty": static["dirty"],
        "partial": bool(partial),
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": static["device"],
        "versions": static["versions"],
        "command": shlex.join(["python", *sys.argv]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "shapes": shapes,
        "results": results,
        "baseline": baseline,
        "ratios": _ratios(results, baseline) if baseline is not None and baseline in results else None,
        "notes": notes,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}_{args.device}.json"
    tmp = path.with_suffix(f".json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


_SUMMARY_SKIP = {"p20_ms", "p80_ms", "min_ms", "timer", "repeats"}


def summary_line(key: str, figures: Any, limit: int = 220) -> str:
    """One line for a contender: its error, or median (p20..p80) and its other scalar figures."""
    if not isinstance(figures, dict):
        return f"{key}: {figures}"[:limit]
    if "error" in figures:
        return f"{key}: error {figures['error']}"[:limit]
    parts = []
    if isinstance(figures.get("median_ms"), (int, float)):
        med = f"{figures['median_ms']:.4g} ms"
        if isinstance(figures.get("p20_ms"), (int, float)) and isinstance(figures.get("p80_ms"), (int, float)):
            med += f" ({figures['p20_ms']:.4g}..{figures['p80_ms']:.4g})"
        parts.append(med)
    for name, value in figures.items():
        if name in _SUMMARY_SKIP or name == "median_ms":
            continue
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float):
            parts.append(f"{name} {value:.4g}")
        elif isinstance(value, (int, str)):
            parts.append(f"{name} {value}")
    return f"{key}: " + "  ".join(parts)[:limit]


class Record(dict):
    """The results of one bench run (contender -> figures), written as they come.

    ``record[contender] = figures`` prints the contender's line (:func:`summary_line`, flushed) and
    rewrites ``<out>/<name>_<device>.json`` with ``"partial": true``; ``finish()`` writes it with
    ``"partial": false`` (and the ratios, which need the baseline). ``running(label)`` prints what starts
    next. A SIGTERM (gpu_check.sh's timeout) writes the partial record once more, naming the contender
    that was running, and exits with 143, so a bench cut short still reports what it measured.
    ``shapes``, ``baseline`` and ``notes`` are attributes: set them whenever they are known.
    """

    def __init__(self, name: str, args: argparse.Namespace, shapes: dict | None = None,
                 baseline: str | None = None, notes: str = "", prefix: str | None = None):
        super().__init__()
        self.name, self.args = name, args
        self.shapes = shapes if shapes is not None else {}
        self.baseline, self.notes = baseline, notes
        self.prefix = prefix if prefix is not None else f"[{name}]"
        self.current: str | None = None
        self.path: Path | None = None
        self.started = time.perf_counter()
        self._static = _static_record_fields(args.device)
        self._finished = False
        self._previous_handler = None
        if threading_is_main():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def __setitem__(self, key: str, figures: Any) -> None:
        super().__setitem__(key, figures)
        if self.current == key:
            self.current = None
        print(f"{self.prefix} {summary_line(key, figures)}", flush=True)
        self.write(partial=True)

    def update(self, other=(), **kwargs) -> None:  # route through __setitem__ (print + write)
        for key, value in dict(other, **kwargs).items():
            self[key] = value

    def running(self, label: str) -> None:
        """Say (flushed) which contender or phase starts now; a SIGTERM names it in the record."""
        self.current = label
        print(f"{self.prefix} ... {label} ({time.perf_counter() - self.started:.0f} s in)", flush=True)

    def write(self, partial: bool, extra_note: str = "") -> Path:
        notes = self.notes
        if partial:
            notes = (notes + " " if notes else "") + "PARTIAL: written before the run finished." + extra_note
        self.path = write_record(self.name, self.args, self.shapes, dict(self), baseline=self.baseline,
                                 notes=notes, partial=partial, _static=self._static)
        return self.path

    def finish(self) -> Path:
        """Write the final record (the baseline must be among the contenders) and return its path."""
        self._finished = True
        if self._previous_handler is not None and threading_is_main():
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
        return self.write(partial=False)

    def _on_sigterm(self, signum, frame) -> None:
        if not self._finished:
            running = f" Stopped by SIGTERM (a timeout) while running {self.current!r}." if self.current else (
                " Stopped by SIGTERM (a timeout).")
            try:
                path = self.write(partial=True, extra_note=running)
                print(f"{self.prefix} SIGTERM: wrote the partial record {path}", flush=True)
            except Exception as exc:  # noqa: BLE001 - dying anyway; say why the record was not written
                print(f"{self.prefix} SIGTERM: could not write the partial record: {exc!r}", flush=True)
        os._exit(143)


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
