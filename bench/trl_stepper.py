"""TRL's ``Trainer.train()`` driven one optimizer step at a time from a helper thread (bench/bench_trl.py times
each step as one call, like vt_core's own step)."""

from __future__ import annotations

import threading

import torch
from torch.profiler import ProfilerActivity, profile


class _Stop(Exception):
    """Raised inside TRL's training loop (from the pausing callback) to end it."""


class ThreadStepper:
    """Runs ``trainer.train()`` in a helper thread and lets the caller advance it one optimizer step at a time.

    ``step()`` resumes the loop and returns when the next step has ended (``on_step_end``); the first call
    also covers ``train()``'s set-up. ``close()`` ends the loop. An exception in the thread is re-raised
    by ``step()``. The torch profiler records only the allocations of the thread it runs in, so
    ``peak_memory_mb()`` profiles one step inside the helper thread.
    """

    def __init__(self, trainer, threads: int):
        from transformers import TrainerCallback

        stepper = self

        class Pause(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if stepper._prof is not None:
                    stepper._prof.__exit__(None, None, None)
                    stepper._profiled, stepper._prof = stepper._prof, None
                stepper._done.release()
                stepper._go.acquire()
                if stepper._stop:
                    raise _Stop
                if stepper._want_profile:
                    stepper._want_profile = False
                    stepper._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
                    stepper._prof.__enter__()
                return control

        self.trainer, self.threads = trainer, threads
        self._go, self._done = threading.Semaphore(0), threading.Semaphore(0)
        self._stop, self._error, self._thread = False, None, None
        self._want_profile, self._prof, self._profiled = False, None, None
        self.thread_num_threads = None
        trainer.add_callback(Pause())

    def _run(self) -> None:
        torch.set_num_threads(self.threads)
        self.thread_num_threads = torch.get_num_threads()
        try:
            self.trainer.train()
        except _Stop:
            return
        except BaseException as e:  # re-raised in the caller's thread by step()
            self._error = e
        self._done.release()  # the loop ended without being stopped: wake step()

    def step(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="trl-train", daemon=True)
            self._thread.start()
        else:
            self._go.release()
        self._done.acquire()
        if self._error is not None:
            raise RuntimeError(f"TRL training loop failed: {self._error!r}") from self._error
        if not self._thread.is_alive():
            raise RuntimeError("TRL training loop ended before the benchmark did (max_steps too small)")

    def peak_memory_mb(self) -> float:
        """Peak torch CPU memory (MiB) one step allocates beyond what was allocated before it, integrated from
        the profiler's memory events as harness.cpu_peak_memory_mb does (the loop must have started)."""
        if self._thread is None:
            raise RuntimeError("peak_memory_mb: step() the loop at least once first")
        self._want_profile = True
        self.step()
        events = sorted((e.start_ns(), i, e.nbytes())
                        for i, e in enumerate(self._profiled.profiler.kineto_results.events())
                        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
        live = peak = 0
        for _, _, nbytes in events:
            live += nbytes
            peak = max(peak, live)
        return peak / 2**20

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._stop = True
            self._go.release()
            self._thread.join()
