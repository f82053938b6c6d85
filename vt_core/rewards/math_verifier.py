"""Math verifier: the last ``\\boxed{}`` answer, checked against the gold answer with math-verify.

Extraction
    Only the text after the last ``</think>`` counts; a completion that opens ``<think>`` and never closes it
    scores 0. In that answer region the last top-level ``\\boxed{...}`` (or ``\\fbox{...}``; nested braces
    handled, ``\\boxed{\\boxed{x}}`` unwrapped) is the answer. With no box, a completion that had a
    ``</think>`` hands the text after it to math-verify's own extraction ("the final answer is ..."); a
    completion without think tags and without a box scores 0.

Verification and timeouts
    math-verify (sympy) decides equivalence: ``\\frac{1}{2}`` = ``0.5`` = ``1/2``, sets, intervals, equations
    ``x=2`` vs ``2``. Its own timeout relies on SIGALRM, which only works in a process's main thread, so it is
    disabled here. Instead each check runs in a persistent worker subprocess (a small pool, one request at
    a time per worker, JSON lines over pipes); the caller waits with a deadline and, past it, kills that
    worker (which also ends any uninterruptible C-level sympy work) and starts a fresh one. This works
    from any thread and from worker processes (daemonic ones included) and never touches signals of the
    caller. Workers run under an address-space limit (``memory_mb``) and exit when their parent closes
    their stdin. ``VT_REWARDS_INLINE=1`` (set by ``RewardScorer(mode="process")`` workers, which enforce a
    hard timeout themselves) or ``timeout_s=None`` runs the check in-process without a timeout.
    A check that times out is the answer's failure (reward 0); a worker that dies or cannot start is the
    verifier's: the result then has ``infra_error`` set (an infrastructure failure, not a reward).

Problem fields: ``answer`` (gold: a string such as ``"\\frac{1}{2}"``, a number, or a list of accepted
answers), optional ``timeout_s`` (default 5.0).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from functools import lru_cache

from vt_core.rewards.base import RewardResult
from vt_core.rewards.registry import register_verifier

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MEMORY_MB = 4096
_STARTUP_TIMEOUT_S = 120.0
_MAX_UNBOXED_CHARS = 4000
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_WHOLE_BOX_RE = re.compile(r"^\s*\\(?:boxed|fbox)\s*\{")


def answer_region(completion: str) -> str | None:
    """The part of ``completion`` that holds the answer: the text after the last ``</think>``.

    Returns the whole completion when it has no think tags, and None when ``<think>`` is opened but
    never closed (the model ran out of budget while thinking).
    """
    if "</think>" in completion:
        return completion.rsplit("</think>", 1)[1]
    if "<think>" in completion:
        return None
    return completion


def _matching_brace(text: str, open_idx: int) -> int:
    """Index of the brace closing ``text[open_idx] == '{'`` (escaped braces skipped), or -1."""
    depth = 0
    i = open_idx
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def extract_boxed(text: str) -> str | None:
    """Content of the last top-level ``\\boxed{...}`` / ``\\fbox{...}`` in ``text`` (None if there is none).

    Braces nest (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``); a box that is never closed is ignored;
    a box whose whole content is another box is unwrapped.
    """
    last = None
    pos = 0
    while True:
        m = _BOX_RE.search(text, pos)
        if m is None:
            break
        end = _matching_brace(text, m.end() - 1)
        if end < 0:
            pos = m.end()
            continue
        last = text[m.end() : end]
        pos = end + 1
    while last is not None:
        m = _WHOLE_BOX_RE.match(last)
        stripped = last.rstrip()
        if m is None or _matching_brace(stripped, m.end() - 1) != len(stripped) - 1:
            break
        last = stripped[m.end() : -1]
    return last.strip() if last is not None else None


def _gold_texts(gold) -> list[str]:
    """Gold answer(s) as strings math-verify can parse (bare answers are wrapped in ``\\boxed{}``)."""
    golds = gold if isinstance(gold, (list, tuple)) else [gold]
    out = []
    for g in golds:
        g = str(g).strip()
        if not g:
            continue
        out.append(g if ("\\boxed" in g or "$" in g) else f"\\boxed{{{g}}}")
    if not out:
        raise ValueError(f"the problem has an empty gold answer: {gold!r}")
    return out


# ---------------------------------------------------------------- the check itself (worker or inline)


@lru_cache(maxsize=4096)
def _parse_gold(text: str):
    from math_verify import parse

    return parse(text, parsing_timeout=None)


def _check(gold_texts: list[str], pred_text: str) -> dict:
    """Parse and compare with math-verify, no timeout of its own. Returns {"correct", "reason", "parsed"}."""
    import math_verify.grader
    import math_verify.parser
    from math_verify import parse, verify

    math_verify.parser.TIMEOUT_WARNING_SHOWN = True  # we enforce timeouts ourselves; silence its warning
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    pred = parse(pred_text, parsing_timeout=None)
    if not pred:
        return {"correct": False, "reason": "math-verify could not parse the answer", "parsed": ""}
    parsed = str(pred[0])
    for g in gold_texts:
        gold = _parse_gold(g)
        if not gold:
            return {"correct": False, "reason": f"math-verify could not parse the gold answer {g!r}", "parsed": parsed}
        if verify(gold, pred, timeout_seconds=None):
            return {"correct": True, "reason": "", "parsed": parsed}
    return {"correct": False, "reason": "answer is not equivalent to the gold answer", "parsed": parsed}


def worker_main() -> None:
    """Entry point of a worker subprocess: one JSON request per stdin line, one JSON reply per stdout line."""
    import resource

    memory_mb = int(sys.argv[1])
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # nothing a library prints may corrupt the reply stream
    _check(["\\boxed{\\frac{1}{2}}"], "\\boxed{0.5}")  # lazy imports and parser set-up happen before "ready"
    out.write('{"ready": true}\n')
    for line in sys.stdin:
        req = json.loads(line)
        try:
            reply = _check(req["gold"], req["pred"])
        except MemoryError:
            reply = {"correct": False, "reason": f"math verification exceeded {memory_mb} MB", "parsed": ""}
        out.write(json.dumps(reply) + "\n")


# ---------------------------------------------------------------- worker subprocess pool


class _WorkerDied(RuntimeError):
    pass


class _Worker:
    def __init__(self, memory_mb: int):
        code = "from vt_core.rewards.math_verifier import worker_main; worker_main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, str(memory_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        self._buf = b""
        try:
            reply = self._read_line(_STARTUP_TIMEOUT_S)
        except (TimeoutError, _WorkerDied) as e:
            self.kill()
            raise _WorkerDied(f"math worker did not start within {_STARTUP_TIMEOUT_S:g} s ({e!r})") from e
        if not reply.get("ready"):
            self.kill()
            raise _WorkerDied(f"math worker sent {reply!r} instead of ready")

    def _read_line(self, timeout_s: float) -> dict:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                raise _WorkerDied(f"math worker exited (code {self.proc.wait()})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, request: dict, timeout_s: float) -> dict:
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError as e:
            raise _WorkerDied(f"math worker exited (code {self.proc.wait()})") from e
        return self._read_line(timeout_s)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


class MathWorkerPool:
    """Persistent math-verify worker subprocesses; thread-safe; at most ``max_workers`` alive at once.

    A worker that times out or dies is killed and replaced on the next call.
    """

    def __init__(self, max_workers: int | None = None, memory_mb: int = DEFAULT_MEMORY_MB):
        self.max_workers = max_workers or max(2, os.cpu_count() or 2)
        self.memory_mb = memory_mb
        self.pid = os.getpid()
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.max_workers)
        self.restarts = 0

    def check(self, gold_texts: list[str], pred_text: str, timeout_s: float) -> dict:
        with self._slots:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            try:
                if worker is None:
                    worker = _Worker(self.memory_mb)
                reply = worker.call({"gold": gold_texts, "pred": pred_text}, timeout_s)
            except TimeoutError:
                worker.kill()
                self.restarts += 1
                return {"correct": False, "reason": f"math verification timed out after {timeout_s:g} s", "parsed": ""}
            except _WorkerDied as e:
                if worker is not None:
                    worker.kill()
                self.restarts += 1
                return {"correct": False, "reason": f"math verification crashed: {e}", "parsed": "", "infra": True}
            with self._lock:
                self._idle.append(worker)
            return reply

    def close(self) -> None:
        with self._lock:
            workers, self._idle = self._idle, []
        for w in workers:
            w.close()


_POOL: MathWorkerPool | None = None
_POOL_LOCK = threading.Lock()


def worker_pool() -> MathWorkerPool:
    """This process's shared worker pool (a forked child gets its own, never its parent's pipes)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = MathWorkerPool()
        return _POOL


@atexit.register
def _close_pool() -> None:
    if _POOL is not None and _POOL.pid == os.getpid():
        _POOL.close()


# ---------------------------------------------------------------- public API


def math_reward(completion: str, gold, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> RewardResult:
    """Reward 1.0 when the completion's final answer is equivalent to ``gold`` (str, number or list of them).

    ``timeout_s`` bounds parsing + comparison (worker subprocess, see module docstring); None runs
    in-process without a bound. ``extra`` holds the extracted answer and what math-verify parsed.
    """
    golds = _gold_texts(gold)
    region = answer_region(completion)
    if region is None:
        return RewardResult(0.0, 0, 1, ["unclosed <think>: no answer after the reasoning"], {"answer": None})
    boxed = extract_boxed(region)
    if boxed is not None:
        pred_text = f"\\boxed{{{boxed}}}"
    elif "</think>" in completion and region.strip():
        pred_text = region[-_MAX_UNBOXED_CHARS:]
    else:
        return RewardResult(0.0, 0, 1, ["no \\boxed{} answer found"], {"answer": None})
    if timeout_s is None or os.environ.get("VT_REWARDS_INLINE") == "1":
        reply = _check(golds, pred_text)
    else:
        reply = worker_pool().check(golds, pred_text, timeout_s)
    extra = {"answer": boxed if boxed is not None else pred_text, "parsed": reply["parsed"]}
    if reply.get("infra"):  # the verifier's worker died: no fact about the answer
        return RewardResult(0.0, 0, 1, [reply["reason"]], extra, infra_error=reply["reason"])
    if reply["correct"]:
        return RewardResult(1.0, 1, 1, [], extra)
    return RewardResult(0.0, 0, 1, [reply["reason"]], extra)


@register_verifier("math")
def math_verifier(problem: dict, completion: str) -> RewardResult:
    """Registry entry: ``problem["answer"]`` is the gold answer; optional ``problem["timeout_s"]``."""
    if "answer" not in problem:
        raise KeyError(f"math problem has no 'answer' field (keys: {sorted(problem)})")
    return math_reward(completion, problem["answer"], problem.get("timeout_s", DEFAULT_TIMEOUT_S))
