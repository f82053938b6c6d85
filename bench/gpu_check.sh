#!/usr/bin/env bash
# One-shot GPU entry: every GPU correctness test, then every GPU bench, in one call of under 8 minutes.
#
#   bash bench/gpu_check.sh --build      # fresh GPU machine: install carried wheels, build vt_core, then all below
#   bash bench/gpu_check.sh              # GPU machine with vt_core built: pytest -m gpu, then bench_*.py --device cuda
#   bash bench/gpu_check.sh --dry-run    # list the steps and write the summary without running anything
#   bash bench/gpu_check.sh --cpu-smoke  # same steps on CPU: benches with --device cpu --quick
#
# As one device call from the project root (the device tool copies the working tree; ../shared does not
# travel, the ignored .whl/ folder only when carried):
#   command: bash bench/gpu_check.sh --build        carry: [".whl"]        timeout_s: 540
# Fill .whl/ once on a machine with internet (the wheels the GPU machine lacks; liger-kernel today):
#   python -m pip download --no-deps --only-binary=:all: -d .whl liger-kernel==0.8.5
#
# --build: (1) wheels: every .whl/*.whl (or $VT_WHEEL_DIR) is installed with pip --no-index --no-deps
# --target into a temporary folder put first on PYTHONPATH (the machine's own packages stay untouched);
# (2) build: pip install --no-deps --no-build-isolation -C cmake.define.VT_CUDA_ARCHITECTURES=90 -e .
# (~19 s on the H200; $VT_CUDA_ARCH changes 90; log in build.log). A failed build stops the run (the
# tests and benches would only fail to import). With --cpu-smoke, --build installs the wheels but never
# rebuilds vt_core (the shared CPU install is used as it is); with --dry-run it lists both steps.
#
# Steps: pytest_gpu (pytest -m gpu tests; -v, a line per test, so a run cut short still says which
# passed), then the GPU benches in this order: bench_rl_step, bench_model, bench_attention, bench_losses,
# bench_engine, then any other bench_*.py. bench_trl, bench_rl_vs_sft and bench_sandbox measure CPU work
# by design: listed as cpu-only on the GPU (bench_sandbox refuses --device cuda), run in --cpu-smoke.
# Each step has a cap (GPU: pytest 150 s; rl_step 75, model 60, attention 75, losses 130, engine 130,
# others 60; CPU smoke: 150 each), cut further so that no step runs past the total budget
# (VT_GPU_CHECK_BUDGET_S, default 450 s, counted from the script's start, build included, 15 s kept for
# packing). A step past its cap gets SIGTERM (10 s later SIGKILL); benches then write their partial record
# (bench/harness.py Record). Each bench is told when its cap ends (VT_BENCH_DEADLINE, a Unix time) and
# prints every contender as it finishes (PYTHONUNBUFFERED=1).
# Expected on an H200 with --build: wheels ~3 s, build ~20 s, pytest ~70-100 s (70 s on 2026-12-04, when
# most Triton tests failed at compile time), rl_step ~40 s, model ~25 s, attention ~35 s, losses ~90 s,
# engine ~80 s: ~365-395 s of the 450. The caps add up to more than the budget on purpose: a slow step
# leaves the later ones less time, and those adapt to their deadline (bench_losses skips contenders,
# bench_engine bounds transformers' generate) or are cut with their partial record.
#
# Results: each bench writes its JSON to $VT_BENCH_OUT; logs go to $VT_BENCH_OUT/gpu_check_logs/, and
# $VT_BENCH_OUT/gpu_check_summary.json lists every step with its status (ok, failed, timeout, skipped,
# cpu-only, not-run, dry-run), exit code and seconds. A failing step does not stop the others; the
# script exits non-zero at the end if any step did not pass.
# Packing: when $VT_GPU_CHECK_PACK (default: $OUT, the device tool's output folder) is set, everything
# lands there as 4 files: run.log (this console), build.log (wheels + build, with --build),
# gpu_check_summary.json, results.tar.gz (results/: the JSON records and gpu_check_logs/); and
# VT_BENCH_OUT then defaults to a temporary folder instead of bench/results.
#
# Environment: VT_BENCH_OUT; PYTHON (default python3, else python); VT_GPU_CHECK_ONLY (a regex: only
# benches whose name matches, e.g. 'model|attention'); VT_GPU_CHECK_TESTS=0 skips the pytest step;
# VT_GPU_CHECK_BUDGET_S; VT_GPU_TEST_TIMEOUT_S and VT_BENCH_TIMEOUT_S (override the caps above);
# VT_WHEEL_DIR (default .whl); VT_CUDA_ARCH (default 90); VT_GPU_CHECK_PACK.
set -u
cd "$(dirname "$0")/.."

mode=gpu
build=0
for arg in "$@"; do
  case "$arg" in
    --build) build=1 ;;
    --dry-run) mode=dry-run ;;
    --cpu-smoke) mode=cpu-smoke ;;
    *) echo "usage: bash bench/gpu_check.sh [--build] [--dry-run | --cpu-smoke]" >&2; exit 2 ;;
  esac
done

START=$(date +%s)
export PYTHONUNBUFFERED=1
PACK=${VT_GPU_CHECK_PACK:-${OUT:-}}
WORK=$(mktemp -d)
if [ -n "$PACK" ]; then
  mkdir -p "$PACK"
  exec > >(tee -a "$PACK/run.log") 2>&1
  TEE_PID=$!
fi
# python3 first: the 2026-12-04 GPU machine ran its venv's python3 (a bare "python" may be another interpreter)
if [ -z "${PYTHON:-}" ]; then if command -v python3 >/dev/null 2>&1; then PYTHON=python3; else PYTHON=python; fi; fi
if [ -n "${VT_BENCH_OUT:-}" ]; then RES=$VT_BENCH_OUT
elif [ -n "$PACK" ]; then RES="$WORK/results"
else RES=bench/results; fi
ONLY=${VT_GPU_CHECK_ONLY:-}
BUDGET=${VT_GPU_CHECK_BUDGET_S:-450}
PACK_RESERVE=15
WHEELS=${VT_WHEEL_DIR:-.whl}
ARCH=${VT_CUDA_ARCH:-90}
CPU_ONLY="bench_trl bench_rl_vs_sft bench_sandbox"  # benches that measure CPU-only work
ORDER="bench_rl_step bench_model bench_attention bench_losses bench_engine"  # then any other bench_*.py
mkdir -p "$RES/gpu_check_logs"
RES=$(cd "$RES" && pwd)
LOGS="$RES/gpu_check_logs"
BUILD_LOG=${PACK:+$PACK/build.log}
BUILD_LOG=${BUILD_LOG:-$LOGS/build.log}
export VT_BENCH_OUT="$RES"
STEPS="$WORK/steps.tsv"
: > "$STEPS"
trap 'rm -rf "$WORK"' EXIT
FAILED=0
STOP=""  # set when a step failed in a way that makes the rest pointless (the build)

if [ "$mode" != cpu-smoke ]; then  # --dry-run lists the GPU run's commands and caps
  DEVICE_ARGS=(--device cuda)
else
  DEVICE_ARGS=(--device cpu --quick)
fi

# cap_for NAME: the step's own cap in seconds (before the total budget cuts it)
cap_for() {
  if [ "$1" = pytest_gpu ]; then
    echo "${VT_GPU_TEST_TIMEOUT_S:-150}"
    return
  fi
  if [ -n "${VT_BENCH_TIMEOUT_S:-}" ]; then echo "$VT_BENCH_TIMEOUT_S"; return; fi
  if [ "$mode" = cpu-smoke ]; then echo 150; return; fi
  case "$1" in
    wheels) echo 60 ;;
    build) echo 150 ;;
    bench_rl_step) echo 75 ;;
    bench_model) echo 60 ;;
    bench_attention) echo 75 ;;
    bench_losses) echo 130 ;;
    bench_engine) echo 130 ;;
    *) echo 60 ;;
  esac
}

record() {  # record NAME STATUS RC SECONDS LOG COMMAND
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$STEPS"
}

# run_step NAME CMD...: runs CMD under its cap, logs it and appends a line to $STEPS.
# LOG_TO (optional, set by the caller) sends the output to another log file.
run_step() {
  local name=$1 cap status rc=0 t0 t1 left
  shift
  local log=${LOG_TO:-$LOGS/$name.log}
  cap=$(cap_for "$name")
  t0=$(date +%s)
  left=$((BUDGET - PACK_RESERVE - 10 - (t0 - START)))  # 10: the SIGKILL grace after the cap
  [ "$cap" -gt "$left" ] && cap=$left
  if [ "$mode" = dry-run ]; then
    status=dry-run
    echo "== $name (cap $(cap_for "$name")s): $*"
  elif [ -n "$STOP" ]; then
    status=skipped; rc=-1; echo "skipped: $STOP" >> "$log"
  elif [ "$cap" -lt 10 ]; then
    status=skipped; rc=-1; echo "skipped: total budget of ${BUDGET}s spent" >> "$log"
  else
    echo "== $name (timeout ${cap}s, $((BUDGET - (t0 - START)))s of the budget left): $*"
    VT_BENCH_DEADLINE=$((t0 + cap - 3)) timeout --kill-after=10 "$cap" "$@" >> "$log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then status=ok; elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status=timeout; else status=failed; fi
    if [ "$status" = ok ]; then tail -n 4 "$log"; else tail -n 25 "$log"; fi
  fi
  t1=$(date +%s)
  [ "$status" = ok ] || [ "$status" = dry-run ] || FAILED=$((FAILED + 1))
  echo "== $name: $status (rc $rc, $((t1 - t0))s)"
  record "$name" "$status" "$rc" "$((t1 - t0))" "$log" "$*"
  [ "$status" = ok ] || [ "$status" = dry-run ]
}

echo "gpu_check: mode $mode, build $build, budget ${BUDGET}s, results in $RES${PACK:+, packed into $PACK}"
echo "gpu_check: commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%FT%TZ), $(getconf _NPROCESSORS_ONLN) cores"
if [ "$mode" = gpu ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 4
fi

if [ "$build" = 1 ]; then
  if compgen -G "$WHEELS/*.whl" > /dev/null; then
    LOG_TO=$BUILD_LOG run_step wheels "$PYTHON" -m pip install --no-index --no-deps --no-compile --upgrade \
      --target "$WORK/site" "$WHEELS"/*.whl \
      && [ "$mode" != dry-run ] && echo "wheels: $(cd "$WORK/site" && ls -d ./*.dist-info | sed 's|^\./||; s|\.dist-info$||' | tr '\n' ' ')"
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "wheels: no $WHEELS/*.whl (fill it with: python -m pip download --no-deps --only-binary=:all: -d .whl liger-kernel==0.8.5)"
    record wheels not-run 0 0 - "no $WHEELS/*.whl"
  fi
  if [ "$mode" = cpu-smoke ]; then
    echo "build: not run in --cpu-smoke (the installed vt_core is used)"
    record build not-run 0 0 - "cpu-smoke: vt_core used as installed"
  else
    export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(getconf _NPROCESSORS_ONLN)}
    if ! LOG_TO=$BUILD_LOG run_step build "$PYTHON" -m pip install --no-deps --no-build-isolation \
        -C "cmake.define.VT_CUDA_ARCHITECTURES=$ARCH" -e .; then
      [ "$mode" = dry-run ] || STOP="the build failed (see build.log)"
    fi
  fi
fi
if [ "$mode" != dry-run ] && [ -z "$STOP" ]; then
  "$PYTHON" - <<'EOF' 2>&1 | tail -n 4
import importlib.metadata as md, torch, triton
have = {}
for dist in ("transformers", "liger-kernel", "trl", "vt_core"):
    try:
        have[dist] = md.version(dist)
    except md.PackageNotFoundError:
        have[dist] = "missing"
print("versions: torch", torch.__version__, "triton", triton.__version__, *(f"{k} {v}" for k, v in have.items()),
      "| cuda available:", torch.cuda.is_available())
try:
    import liger_kernel
    print("liger_kernel from", liger_kernel.__path__[0])
except Exception as exc:  # noqa: BLE001
    print("liger_kernel:", repr(exc))
try:
    import vt_core._C as c
    print("vt_core._C built with CUDA:", c.built_with_cuda())
except Exception as exc:  # noqa: BLE001
    print("vt_core._C:", repr(exc))
EOF
fi

if [ "${VT_GPU_CHECK_TESTS:-1}" != 0 ]; then
  run_step pytest_gpu "$PYTHON" -m pytest -m gpu tests -v --tb=short -p no:cacheprovider --durations=10
fi

BENCHES=""
for name in $ORDER; do [ -e "bench/$name.py" ] && BENCHES="$BENCHES $name"; done
for script in bench/bench_*.py; do
  [ -e "$script" ] || continue
  name=$(basename "$script" .py)
  [[ " $BENCHES " == *" $name "* ]] || BENCHES="$BENCHES $name"
done
for name in $BENCHES; do
  if [ -n "$ONLY" ] && ! [[ "$name" =~ $ONLY ]]; then
    continue
  fi
  if [ "$mode" != cpu-smoke ] && [[ " $CPU_ONLY " == *" $name "* ]]; then
    # CPU work by design (the embedded CPU demo, TRL on CPU, sandbox processes): listed, not run, not a failure
    record "$name" cpu-only 0 0 - "bench/$name.py (CPU only)"
    continue
  fi
  run_step "$name" "$PYTHON" "bench/$name.py" "${DEVICE_ARGS[@]}" --out "$RES"
done

"$PYTHON" - "$STEPS" "$RES/gpu_check_summary.json" "$mode" "$FAILED" "$START" "$BUDGET" <<'EOF'
import datetime, json, subprocess, sys, time

steps_file, out, mode, failed, start, budget = sys.argv[1:7]
steps = []
for line in open(steps_file):
    name, status, rc, seconds, log, command = line.rstrip("\n").split("\t", 5)
    steps.append({"name": name, "status": status, "rc": int(rc), "seconds": int(seconds), "log": log,
                  "command": command})
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
summary = {
    "mode": mode,
    "commit": commit,
    "started_utc": datetime.datetime.fromtimestamp(int(start), datetime.timezone.utc).isoformat(),
    "seconds": sum(s["seconds"] for s in steps),
    "wall_seconds": int(time.time()) - int(start),
    "budget_seconds": int(budget),
    "failed": int(failed),
    "steps": steps,
}
with open(out, "w") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")
print(f"summary: {out} ({len(steps)} steps, {failed} not ok)")
for s in steps:
    print(f"  {s['name']:<16} {s['status']:<8} {s['seconds']:>4} s")
EOF

RC=0
[ "$FAILED" -eq 0 ] || RC=1
if [ -n "$PACK" ]; then
  cp "$RES/gpu_check_summary.json" "$PACK/gpu_check_summary.json"
  tar -czf "$PACK/results.tar.gz" -C "$(dirname "$RES")" --transform "s|^$(basename "$RES")|results|" "$(basename "$RES")"
  echo "packed: $(cd "$PACK" && ls | tr '\n' ' ')($(du -sh "$PACK/results.tar.gz" | cut -f1) results.tar.gz)"
fi
echo "gpu_check: done in $(( $(date +%s) - START ))s of ${BUDGET}s, exit $RC"
if [ -n "$PACK" ]; then
  exec >&- 2>&-   # close the pipe to tee so that it writes the last lines and ends
  wait "$TEE_PID" 2>/dev/null
fi
exit $RC
