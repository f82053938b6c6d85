#!/usr/bin/env bash
# One-shot GPU entry: every GPU correctness test, then every bench, in one call of under 8 minutes.
#
#   bash bench/gpu_check.sh              # on the GPU machine: pytest -m gpu, then bench/bench_*.py --device cuda
#   bash bench/gpu_check.sh --dry-run    # list the steps and write the summary without running anything
#   bash bench/gpu_check.sh --cpu-smoke  # same steps on CPU: benches with --device cpu --quick
#
# Results: each bench writes its JSON to $VT_BENCH_OUT (default bench/results); logs go to
# $VT_BENCH_OUT/gpu_check_logs/, and $VT_BENCH_OUT/gpu_check_summary.json lists every step with its
# status (ok, failed, timeout, skipped), exit code and seconds. A failing step does not stop the
# others; the script exits non-zero at the end if any step did not pass.
#
# Environment: VT_BENCH_OUT; PYTHON (default python); VT_GPU_CHECK_ONLY (a regex: only benches whose
# name matches, e.g. 'model|attention'; the test step always runs); VT_GPU_CHECK_BUDGET_S (total
# seconds, default 450); VT_GPU_TEST_TIMEOUT_S (default 180) and VT_BENCH_TIMEOUT_S (default 150):
# per-step caps, further cut so no step runs past the total budget.
set -u
cd "$(dirname "$0")/.."

mode=gpu
case "${1:-}" in
  "") ;;
  --dry-run) mode=dry-run ;;
  --cpu-smoke) mode=cpu-smoke ;;
  *) echo "usage: bash bench/gpu_check.sh [--dry-run | --cpu-smoke]" >&2; exit 2 ;;
esac

PYTHON=${PYTHON:-python}
OUT=${VT_BENCH_OUT:-bench/results}
ONLY=${VT_GPU_CHECK_ONLY:-}
BUDGET=${VT_GPU_CHECK_BUDGET_S:-450}
TEST_TIMEOUT=${VT_GPU_TEST_TIMEOUT_S:-180}
BENCH_TIMEOUT=${VT_BENCH_TIMEOUT_S:-150}
LOGS="$OUT/gpu_check_logs"
CPU_ONLY="bench_trl bench_rl_vs_sft"  # benches that measure CPU-only comparisons
mkdir -p "$OUT" "$LOGS"
export VT_BENCH_OUT="$OUT"
STEPS=$(mktemp)
trap 'rm -f "$STEPS"' EXIT
START=$(date +%s)
FAILED=0

if [ "$mode" = gpu ]; then
  DEVICE_ARGS=(--device cuda)
else
  DEVICE_ARGS=(--device cpu --quick)
fi

# run_step NAME CAP_SECONDS CMD...: runs CMD under timeout, logs it and appends a line to $STEPS.
run_step() {
  local name=$1 cap=$2 status rc=0 t0 t1 left
  shift 2
  local log="$LOGS/$name.log"
  t0=$(date +%s)
  left=$((BUDGET - (t0 - START)))
  [ "$cap" -gt "$left" ] && cap=$left
  if [ "$mode" = dry-run ]; then
    status=dry-run
  elif [ "$cap" -lt 10 ]; then
    status=skipped; rc=-1; echo "skipped: total budget of ${BUDGET}s spent" > "$log"
  else
    echo "== $name (timeout ${cap}s): $*"
    timeout --kill-after=10 "$cap" "$@" > "$log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then status=ok; elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status=timeout; else status=failed; fi
    tail -n 3 "$log"
  fi
  t1=$(date +%s)
  [ "$status" = ok ] || [ "$status" = dry-run ] || FAILED=$((FAILED + 1))
  echo "== $name: $status (rc $rc, $((t1 - t0))s)"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$((t1 - t0))" "$log" "$*" >> "$STEPS"
}

run_step pytest_gpu "$TEST_TIMEOUT" "$PYTHON" -m pytest -m gpu tests -q -p no:cacheprovider

for script in bench/bench_*.py; do
  [ -e "$script" ] || continue
  name=$(basename "$script" .py)
  if [ -n "$ONLY" ] && ! [[ "$name" =~ $ONLY ]]; then
    continue
  fi
  if [ "$mode" = gpu ] && [[ " $CPU_ONLY " == *" $name "* ]]; then
    # CPU comparisons by design (the embedded CPU demo, TRL on CPU): listed, not run, not a failure
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" cpu-only 0 0 - "$script (CPU only)" >> "$STEPS"
    continue
  fi
  run_step "$name" "$BENCH_TIMEOUT" "$PYTHON" "$script" "${DEVICE_ARGS[@]}" --out "$OUT"
done

"$PYTHON" - "$STEPS" "$OUT/gpu_check_summary.json" "$mode" "$FAILED" "$START" <<'EOF'
import datetime, json, subprocess, sys

steps_file, out, mode, failed, start = sys.argv[1:6]
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
    "failed": int(failed),
    "steps": steps,
}
with open(out, "w") as f:
    json.dump(summary, f, indent=2)
    f.write("\n")
print(f"summary: {out} ({len(steps)} steps, {failed} not ok)")
EOF

[ "$FAILED" -eq 0 ]
