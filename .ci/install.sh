#!/usr/bin/env bash
# Installs vt_core (editable, with its C++ extension) and everything the recipes and tests need into the
# `python` on PATH, once per checkout and environment. The README's two commands start with it, and so
# does .ci/run. A repeated call checks a stamp and returns in about a second.
#
#   bash .ci/install.sh                    # the tested versions: pip -c .ci/constraints.txt (default; CI)
#   VT_DEPS=newest bash .ci/install.sh     # today's newest resolvable versions (what `pip install -e ".[test]"`
#                                          # gives a user); torch stays as below in both modes
#   bash .ci/install.sh --drift            # print which packages have newer releases than the tested set
#   bash .ci/install.sh --freeze           # print a constraints file of what is installed now (after a
#                                          # green `VT_DEPS=newest bash .ci/run`: > .ci/constraints.txt)
#
# Version policy: .ci/constraints.txt pins every distribution the tests ran with, except torch. CI installs
# exactly those, so a red CI is our change, not a release of someone else's. CI prints the drift (newer
# releases) each run, and each closing note reports one full run with VT_DEPS=newest.
# torch: an installed torch >= 2.11 is kept (the GPU machine brings its own CUDA build). Without one,
# torch==$VT_TORCH (2.13.0; the CPU wheel on this project's CPU machines) is installed first, so that nothing
# else pulls a multi-GB CUDA build onto a CPU machine; VT_TORCH_INDEX, if set, is passed to pip as
# --index-url for that one install (a CPU wheel index elsewhere). A CUDA build on a machine without an
# NVIDIA driver is reported.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=(python)
PIP=(python -m pip --quiet)
DEPS=${VT_DEPS:-tested}
TORCH=${VT_TORCH:-2.13.0}
CONSTRAINTS=.ci/constraints.txt

case "$DEPS" in tested|newest) ;; *) echo "install.sh: VT_DEPS must be 'tested' or 'newest', got '$DEPS'" >&2; exit 2 ;; esac

if [ "${1:-}" = --freeze ]; then
  echo "# Tested versions (bash .ci/install.sh --freeze, $(date -u +%F), Python $("${PY[@]}" -c 'import sys; print(sys.version.split()[0])'))."
  echo "# torch is left out on purpose: see .ci/install.sh."
  "${PY[@]}" -m pip freeze --exclude-editable | grep -viE '^(torch|vt[-_]core|pip|setuptools|wheel)==' | sort -f
  exit 0
fi

if [ "${1:-}" = --drift ]; then
  report=$(mktemp)
  trap 'rm -f "$report"' EXIT
  "${PIP[@]}" install --dry-run --ignore-installed --report "$report" -e ".[test]" "torch==$("${PY[@]}" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || echo "$TORCH")"
  "${PY[@]}" - "$report" "$CONSTRAINTS" <<'EOF'
import json, re, sys
tested = {}
for line in open(sys.argv[2]):
    m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line)
    if m:
        tested[re.sub(r"[-_.]+", "-", m[1]).lower()] = m[2]
newer = []
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    name, version = re.sub(r"[-_.]+", "-", meta["name"]).lower(), meta["version"]
    if name in tested and tested[name] != version:
        newer.append(f"{name} {tested[name]} -> {version}")
print("dependency drift (tested -> newest resolvable): " + (", ".join(newer) if newer else "none"))
EOF
  exit 0
fi

# What an install depends on: the build and dependency files, the C++/CUDA sources, and the list of Python
# files (the editable install maps each module to its file when it is made, so a moved or new module needs a
# new install), plus which versions and which interpreter.
stamp_key() {
  { cat pyproject.toml CMakeLists.txt "$CONSTRAINTS" .ci/install.sh csrc/*; find kernels vt_core -name '*.py' | sort
    echo "$DEPS"; "${PY[@]}" -c 'import sys; print(sys.prefix, sys.executable)'; } | sha256sum | cut -c1-32
}
STAMP="build/install-stamp-$("${PY[@]}" -c 'import hashlib, sys; print(hashlib.sha1(sys.prefix.encode()).hexdigest()[:12])')"
key=$(stamp_key)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$key" ] && "${PY[@]}" -P - <<'EOF'
import importlib.util, os, sys
spec = importlib.util.find_spec("vt_core")
if spec is None or os.path.dirname(os.path.realpath(spec.origin)) != os.path.realpath("vt_core"):
    sys.exit(1)  # not installed, or installed from another checkout
missing = [m for m in ("torch", "triton", "transformers", "pytest", "trl", "liger_kernel", "vt_core._C")
           if importlib.util.find_spec(m) is None]
sys.exit(1 if missing else 0)
EOF
then
  echo "install.sh: vt_core and its dependencies are installed for this checkout ($DEPS versions)"
  exit 0
fi

# The sandbox compiles its small C launcher with the system C compiler.
if ! command -v cc >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq gcc
  else
    echo "install.sh: no C compiler (cc): install gcc or clang; the code sandbox builds its launcher with it" >&2
    exit 1
  fi
fi

"${PIP[@]}" install --upgrade pip
have_torch=$("${PY[@]}" -c 'import torch; v = torch.__version__.split("+")[0]; print(v if tuple(map(int, v.split(".")[:2])) >= (2, 11) else "")' 2>/dev/null || true)
if [ -z "$have_torch" ]; then
  "${PIP[@]}" install ${VT_TORCH_INDEX:+--index-url "$VT_TORCH_INDEX"} "torch==$TORCH"
  have_torch=$TORCH
fi

pin=$(mktemp)
trap 'rm -f "$pin"' EXIT
echo "torch==$have_torch" > "$pin"  # whatever else resolves, the torch chosen above stays
if [ "$DEPS" = tested ]; then
  "${PIP[@]}" install -c "$pin" -c "$CONSTRAINTS" -e ".[test]"
else
  "${PIP[@]}" install -c "$pin" --upgrade --upgrade-strategy eager -e ".[test]"
fi
"${PY[@]}" -c "import shutil, vt_core, vt_core.kernels, vt_core._C, torch, transformers
if torch.version.cuda and not shutil.which('nvidia-smi'):
    print('install.sh: warning: torch', torch.__version__, 'is a CUDA build on a machine without an NVIDIA driver:',
          'reinstall it from a CPU wheel index (VT_TORCH_INDEX)')
print('install.sh: vt_core installed; torch', torch.__version__, '| transformers', transformers.__version__,
      '| vt_core._C built with CUDA:', vt_core._C.built_with_cuda())"
mkdir -p build
echo "$key" > "$STAMP"
