import os
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from vt_core.checkpoint import latest_checkpoint, list_checkpoints, rng_state, save_checkpoint, set_rng_state


def _writer(value):
    def write(d):
        torch.save({"w": torch.full((4,), float(value))}, d / "state.pt")

    return write


def test_rotation_and_latest(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, _writer(step), keep_last=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step_00000004", "step_00000005"]
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_00000005"
    assert torch.load(latest / "state.pt")["w"][0] == 5


def test_failed_write_leaves_previous_intact(tmp_path):
    save_checkpoint(tmp_path, 1, _writer(1))

    def broken(d):
        (d / "partial.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(tmp_path, 2, broken)
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())


def test_resave_same_step_replaces(tmp_path):
    save_checkpoint(tmp_path, 3, _writer(1))
    save_checkpoint(tmp_path, 3, _writer(2))
    assert torch.load(latest_checkpoint(tmp_path) / "state.pt")["w"][0] == 2


def test_kill_during_save_keeps_old_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 1, _writer(1))
    script = textwrap.dedent(
        f"""
        import time, torch
        from vt_core.checkpoint import save_checkpoint
        def slow(d):
            torch.save({{"w": torch.zeros(4)}}, d / "state.pt")
            print("writing", flush=True)
            time.sleep(60)
        save_checkpoint({str(tmp_path)!r}, 2, slow)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    assert torch.load(latest_checkpoint(tmp_path) / "state.pt")["w"][0] == 1
    save_checkpoint(tmp_path, 2, _writer(2))  # the next save clears the stale temp folder
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())


def test_rng_roundtrip():
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
