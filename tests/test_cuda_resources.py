"""Build-time resource guard for the CUDA kernels in csrc/: no GPU needed, only nvcc.

Every kernel is compiled for sm_80 (A100) and sm_90 (H100/H200) with the flags CMakeLists.txt builds
vt_core._C with, and ptxas' figures (-Xptxas -v) are checked against the launch configuration its
launcher uses:

- registers x threads per block <= 65,536 (registers allocated per warp in units of 256),
- static + dynamic shared memory per block <= the chip's limit (227 KiB sm_90, 163 KiB sm_80),
- no register spills.

The first H200 run (2026-12-04) failed every packing_metadata_cuda launch with "too many resources
requested for launch": cu_seqlens_kernel took 80 registers on sm_90 and was launched with 1024 threads
(81,920 registers per block). sm_80 gave it 32, so an A100 build would not have shown it.

Launch configurations come from the sources, so they cannot drift from what runs: each kernel is
declared `__launch_bounds__(BLOCK)` (or `(BLOCK, MIN_BLOCKS)`) and launched as
`kernel<<<grid, BLOCK, SMEM, stream>>>`, with BLOCK (and SMEM unless 0) a constant of
csrc/launch_config.h.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc"
LAUNCH_CONFIG = CSRC / "launch_config.h"
ARCHS = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}  # shared memory per block (opt-in maximum)
REGISTERS_PER_BLOCK = 65536
DEFAULT_SHARED = 48 * 1024  # above this a kernel must opt in with cudaFuncSetAttribute
# As CMakeLists.txt compiles csrc/*.cu (CMAKE_BUILD_TYPE=Release, VT_WITH_CUDA).
NVCC_FLAGS = ["-O3", "-DNDEBUG", "-DVT_WITH_CUDA=1", "-std=c++17", f"-I{CSRC}", "-Xptxas", "-v"]


def _find_nvcc() -> str | None:
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


NVCC = _find_nvcc()
CU_FILES = sorted(CSRC.glob("*.cu"))
pytestmark = pytest.mark.skipif(
    NVCC is None, reason="nvcc not found (CUDACXX, PATH, /usr/local/cuda/bin): the CUDA sources are not built here"
)


@dataclass
class Launch:
    kernel: str
    block: str
    shared: str
    where: str


@dataclass
class Usage:
    registers: int
    shared: int
    spill_stores: int
    spill_loads: int


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)


def _constants(path: Path) -> dict[str, int]:
    pattern = r"constexpr\s+int\s+(\w+)\s*=\s*(\d+)\s*;"
    return {m[1]: int(m[2]) for m in re.finditer(pattern, _strip_comments(path.read_text()))}


def _split_args(text: str) -> list[str]:
    args, depth, current = [], 0, ""
    for ch in text:
        if ch in "(<[":
            depth += 1
        elif ch in ")>]":
            depth -= 1
        if ch == "," and depth == 0:
            args.append(current.strip())
            current = ""
        else:
            current += ch
    return args + [current.strip()]


def _kernels(source: str) -> dict[str, tuple[str, ...]]:
    """__global__ kernels of a source -> the arguments of their __launch_bounds__ (empty without)."""
    found = {}
    for m in re.finditer(r"__global__\s+void\s+(?:__launch_bounds__\s*\(([^)]*)\)\s*)?(\w+)\s*\(", source):
        found[m[2]] = tuple(a.strip() for a in m[1].split(",")) if m[1] else ()
    return found


def _launches(source: str, name: str) -> list[Launch]:
    out = []
    for m in re.finditer(r"(\w+)\s*<<<(.*?)>>>", source, flags=re.S):
        args = _split_args(m[2])
        line = source[: m.start()].count("\n") + 1
        out.append(Launch(m[1], args[1], args[2] if len(args) > 2 else "0", f"{name}:{line}"))
    return out


def _ptxas_usage(path: Path, workdir: str) -> dict[tuple[str, str], Usage]:
    """(mangled kernel, arch) -> ptxas figures for one .cu file compiled for every arch in ARCHS."""
    gencode = [f"--generate-code=arch=compute_{a[3:]},code={a}" for a in ARCHS]
    cmd = [NVCC, *NVCC_FLAGS, *gencode, "-c", str(path), "-o", str(Path(workdir) / f"{path.stem}.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    usage, current = {}, None
    for line in (proc.stdout + proc.stderr).splitlines():
        if m := re.search(r"Compiling entry function '([^']+)' for '(sm_\d+)'", line):
            current = (m[1], m[2])
            usage[current] = Usage(0, 0, 0, 0)
        elif current and (m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            usage[current].spill_stores, usage[current].spill_loads = int(m[1]), int(m[2])
        elif current and (m := re.search(r"Used (\d+) registers", line)):
            usage[current].registers = int(m[1])
            smem = re.search(r"(\d+) bytes smem", line)
            usage[current].shared = int(smem[1]) if smem else 0
    return usage


@pytest.fixture(scope="module")
def compiled():
    """Per .cu file: its kernels, launches and ptxas usage (files compiled in parallel)."""
    with tempfile.TemporaryDirectory() as workdir, ThreadPoolExecutor(max_workers=2) as pool:
        usages = dict(zip(CU_FILES, pool.map(lambda p: _ptxas_usage(p, workdir), CU_FILES)))
    result = {}
    for path in CU_FILES:
        source = _strip_comments(path.read_text())
        result[path.name] = (_kernels(source), _launches(source, path.name), usages[path])
    return result


def _usage_of(kernel: str, arch: str, usage: dict[tuple[str, str], Usage]) -> Usage:
    # Itanium mangling writes a nested name's last part as <length><name> followed by E (or I for templates).
    pattern = re.compile(rf"{len(kernel)}{kernel}[EI]|^{kernel}$")
    hits = [u for (mangled, a), u in usage.items() if a == arch and pattern.search(mangled)]
    assert len(hits) == 1, f"ptxas reported {len(hits)} entry functions named {kernel} for {arch}"
    return hits[0]


def _value(expr: str, constants: dict[str, int], where: str) -> int:
    if expr.isdigit():
        return int(expr)
    assert expr in constants, f"{where}: {expr!r} is neither a literal nor a constant of csrc/launch_config.h"
    return constants[expr]


def _block_registers(registers: int, threads: int) -> int:
    per_warp = -(-registers * 32 // 256) * 256
    return per_warp * -(-threads // 32)


def test_every_cuda_file_has_kernels_and_launch_sites():
    assert CU_FILES, "no csrc/*.cu files"
    for path in CU_FILES:
        source = _strip_comments(path.read_text())
        kernels, launches = _kernels(source), _launches(source, path.name)
        assert kernels, f"{path.name}: no __global__ kernel found (parser out of date?)"
        assert set(kernels) == {launch.kernel for launch in launches}, (
            f"{path.name}: kernels {sorted(kernels)} vs launched {sorted({x.kernel for x in launches})}"
        )


def test_launches_use_launch_config_constants_and_bounds(compiled):
    """Every launch's block size is a constant of launch_config.h and the kernel's __launch_bounds__ names
    it: ptxas then keeps registers x threads within the register file for exactly that block size."""
    constants = _constants(LAUNCH_CONFIG) if LAUNCH_CONFIG.exists() else {}
    problems = []
    for name, (kernels, launches, _) in compiled.items():
        for launch in launches:
            if launch.block not in constants:
                problems.append(f"{launch.where}: {launch.kernel} launched with block {launch.block!r}, "
                                "not a constant of csrc/launch_config.h")
            bounds = kernels.get(launch.kernel, ())
            if not bounds or bounds[0] != launch.block:
                problems.append(f"{launch.where}: {launch.kernel} has __launch_bounds__({', '.join(bounds)}) "
                                f"but is launched with {launch.block} threads")
    assert not problems, "\n".join(problems)


def test_registers_and_shared_memory_fit_the_chip(compiled):
    constants = {}
    for path in [LAUNCH_CONFIG, *CU_FILES, *CSRC.glob("*.cuh")]:
        if path.exists():
            constants.update(_constants(path))
    rows, problems = [], []
    for name, (_, launches, usage) in compiled.items():
        for launch in launches:
            threads = _value(launch.block, constants, launch.where)
            dynamic = _value(launch.shared, constants, launch.where)
            for arch, shared_limit in ARCHS.items():
                u = _usage_of(launch.kernel, arch, usage)
                regs = _block_registers(u.registers, threads)
                shared = u.shared + dynamic
                rows.append(f"{launch.kernel:>18} {arch} {threads:5d} threads x {u.registers:3d} registers = "
                            f"{regs:6d} (<= {REGISTERS_PER_BLOCK}), shared {shared} B")
                if threads > 1024:
                    problems.append(f"{launch.where} {arch}: {launch.kernel} launched with {threads} > 1024 threads")
                if regs > REGISTERS_PER_BLOCK:
                    problems.append(f"{launch.where} {arch}: {launch.kernel} needs {u.registers} registers x "
                                    f"{threads} threads = {regs} > {REGISTERS_PER_BLOCK} per block "
                                    "(the launch fails: too many resources requested for launch)")
                if shared > shared_limit:
                    problems.append(f"{launch.where} {arch}: {launch.kernel} uses {shared} B shared > {shared_limit}")
                opted_in = "cudaFuncAttributeMaxDynamicSharedMemorySize" in (CSRC / name).read_text()
                if shared > DEFAULT_SHARED and not opted_in:
                    problems.append(f"{launch.where} {arch}: {launch.kernel} uses {shared} B shared > 48 KiB "
                                    "without cudaFuncSetAttribute(MaxDynamicSharedMemorySize)")
    print("\n".join(rows))
    assert not problems, "\n".join(problems)


def test_no_register_spills(compiled):
    spills = [f"{name} {arch}: {mangled}: {u.spill_stores} B spill stores, {u.spill_loads} B spill loads"
              for name, (_, _, usage) in compiled.items() for (mangled, arch), u in usage.items()
              if u.spill_stores or u.spill_loads]
    assert not spills, "\n".join(spills)
