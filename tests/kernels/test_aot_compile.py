"""Every Triton kernel compiles ahead of time for sm_90 and sm_80, at the configurations the dispatch launches.

The interpreter is not a compiler (DESIGN.md): it accepts what real Triton refuses, such as a plain module global
read inside ``@triton.jit`` code. Each case here runs ``triton.compile(ASTSource(...), target=GPUTarget("cuda",
arch, 32))`` through ptxas to a cubin on this CPU machine, with no GPU, and checks it against the chip: shared
memory per block within 227 KiB (H100/H200) or 163 KiB (A100), registers x threads per block <= 65,536. The
cases come from the launch tables the launchers themselves read (``attention.packed.fused.CUDA_FWD``,
``attention.paged.fused.CUDA_SPLIT``,
``linear_logprobs.fused.CUDA_LAUNCH``, ``kl_distill.fused.CUDA_LAUNCH``, ...): every table entry, every dtype the public
functions take (fp16, bf16, fp32), every head-dim tile, every constexpr flag.

Compiles run in worker processes (this file run as a script: cases as JSON on stdin, results as JSON on stdout)
whose environment lacks ``TRITON_INTERPRET`` (tests/conftest.py sets it for this process, and under it
``@triton.jit`` yields interpreter functions that cannot be compiled) and ``TRITON_ALLOW_NON_CONSTEXPR_GLOBALS``
(it would hide the very error this guard exists for), and which use a fresh Triton cache. Run with ``-s`` to
see each kernel's shared memory, registers and spills.
"""

import importlib
import json
import os
import re
import subprocess
import sys
import time

import pytest

# Shared memory per block (bytes) the chip allows a kernel to opt into: H100/H200 (sm_90), A100 (sm_80).
SHARED_LIMIT = {90: 232448, 80: 166912}
REGISTERS_PER_BLOCK = 65536
DTYPES = ("fp16", "bf16", "fp32")
# Head dims of real models, one per head-dim tile of the attention tables (12: masked in its 16-wide tile) and,
# in bf16 (the dtype models train and generate in), also 80: masked in the 128-wide tile.
HEAD_DIMS = (12, 32, 64, 128, 256)
BF16_HEAD_DIMS = (12, 32, 64, 80, 128, 256)
_PKG = "vt_core.kernels."
PACKED, PAGED = "attention.packed.fused", "attention.paged.fused"
LOGPROBS, KL = "linear_logprobs.fused", "kl_distill.fused"


def _case(module, kernel, arch, tag, types, consts, launch):
    options = {k: launch[k] for k in ("num_warps", "num_stages")}
    consts = dict(consts, **{k: v for k, v in launch.items() if k not in options})
    return dict(id=f"sm{arch}-{kernel}-{tag}", module=_PKG + module, kernel=kernel, arch=arch, types=types,
                constexprs=consts, options=options)


def _attention_cases(arch):
    from vt_core.kernels.attention.packed import fused as varlen

    for dt in DTYPES:
        p = "*" + dt
        fwd = dict(q=p, k=p, v=p, o=p, lse="*fp32", cu_seqlens="*i32", qk_scale="fp32", T="i32", WINDOW="i32")
        bwd = dict(fwd, do=p, delta="*fp32", dq=p, dk=p, dv=p, sm_scale="fp32")
        del bwd["o"]
        pre = dict(o=p, do=p, delta="*fp32", T="i32")
        precision = "ieee" if dt == "fp32" else "tf32"
        for d in BF16_HEAD_DIMS if dt == "bf16" else HEAD_DIMS:
            bd = varlen.block_d(d)
            flags = [(True, False)]
            if dt == "bf16" and d == 64:
                flags += [(True, True), (False, False), (False, True)]
            for causal, window in flags:
                tag = f"{dt}-d{d}" + ("" if causal else "-noncausal") + ("-window" if window else "")
                c = dict(H=16, HKV=2, D=d, BLOCK_D=bd, CAUSAL=causal, HAS_WINDOW=window, PRECISION=precision)
                yield _case(PACKED, "packed_attn_fwd_kernel", arch, tag, fwd, c, varlen.CUDA_FWD[bd])
                for kernel in ("packed_attn_bwd_dq_kernel", "packed_attn_bwd_dkdv_kernel"):
                    yield _case(PACKED, kernel, arch, tag, bwd, c, varlen.CUDA_BWD[bd])
            yield _case(PACKED, "packed_attn_bwd_preprocess_kernel", arch, f"{dt}-d{d}", pre,
                        dict(H=16, D=d, BLOCK_D=bd), varlen.CUDA_PREPROCESS)


def _paged_cases(arch):
    import triton

    from vt_core.kernels.attention.paged import fused as paged

    part = dict(part_o="*fp32", part_m="*fp32", part_l="*fp32", NUM_SPLITS="i32")
    for dt in DTYPES:
        p = "*" + dt
        split = dict(part, q=p, k_cache=p, v_cache=p, block_table="*i32", context_lens="*i32", qk_scale="fp32",
                     stride_bt="i32", SPLIT_LEN="i32")
        precision = "ieee" if dt == "fp32" else "tf32"
        for d in BF16_HEAD_DIMS if dt == "bf16" else HEAD_DIMS:
            bd = paged.block_d(d)
            groups = [(16, 2, 16)] + ([(32, 1, 64)] if dt == "bf16" else [])  # (H, Hkv, page): GQA 8; MQA 32
            for h, hkv, page in groups:
                c = dict(H=h, HKV=hkv, D=d, BLOCK_D=bd, BLOCK_G=max(16, triton.next_power_of_2(h // hkv)), PAGE=page,
                         PRECISION=precision)
                yield _case(PAGED, "paged_decode_split_kernel", arch, f"{dt}-d{d}-g{h // hkv}-page{page}",
                            split, c, paged.CUDA_SPLIT)
            # the merge is fp32 math with the dtype only at its store: other dtypes at one head dim
            for splits in (1, paged.MAX_SPLITS) if dt == "bf16" or d == 128 else ():
                c = dict(H=16, D=d, BLOCK_D=bd, BLOCK_S=max(2, triton.next_power_of_2(splits)))
                yield _case(PAGED, "paged_decode_merge_kernel", arch, f"{dt}-d{d}-splits{splits}",
                            dict(part, o=p), c, paged.CUDA_MERGE)
        for hkv, d in ((2, 12), (2, 128), (8, 128), (32, 128)):
            yield _case(PAGED, "write_kv_cache_kernel", arch, f"{dt}-hd{hkv * d}",
                        dict(k=p, v=p, k_cache=p, v_cache=p, slot_mapping="*i64"),
                        dict(HD=hkv * d, BLOCK=triton.next_power_of_2(hkv * d)), paged.CUDA_WRITE)


def _loss_cases(arch):
    # by module path: the package's attribute `linear_logprobs` is the function of that name
    kinds = importlib.import_module(_PKG + "kl_distill").KINDS
    kl_distill, linear_logprobs = (importlib.import_module(_PKG + m) for m in (KL, LOGPROBS))
    for dt in DTYPES:
        p = "*" + dt
        stats = dict(x=p, targets="*i64", T="i32", V="i32", inv_temp="fp32")
        fwd = dict(stats, tgt="*fp32", lse="*fp32", ent="*fp32", lsum="*fp32")
        bwd = dict(stats, lse="*fp32", ent="*fp32", g_tgt="*fp32", g_lse="*fp32", g_ent="*fp32", g_sum="*fp32")
        for ent in (False, True):
            for lsum in (False, True):
                tag, c = f"{dt}-entropy{int(ent)}-sum{int(lsum)}", dict(ENTROPY=ent, SUM=lsum)
                yield _case(LOGPROBS, "linear_logprobs_fwd_kernel", arch, tag, fwd, c, linear_logprobs.CUDA_LAUNCH)
                yield _case(LOGPROBS, "linear_logprobs_bwd_kernel", arch, tag, bwd, c, linear_logprobs.CUDA_LAUNCH)
        heads = dict(p_hs=p, p_ws=p, p_ht=p, p_wt=p, T="i32", V="i32", DS="i32", DT="i32", inv_temp="fp32")
        split = dict(V_PER_SPLIT="i32", NSPLIT="i32")
        ieee = dt == "fp32"
        for kind in kinds.values():
            yield _case(KL, "kl_distill_fwd_kernel", arch, f"{dt}-kind{kind}",
                        dict(heads, **split, p_stats="*fp32"), dict(KIND=kind, IEEE=ieee), kl_distill.CUDA_LAUNCH)
            yield _case(KL, "kl_distill_bwd_kernel", arch, f"{dt}-kind{kind}",
                        dict(heads, p_lse_s="*fp32", p_lse_t="*fp32", p_aux="*fp32", p_scale="*fp32", p_g=p,
                             beta="fp32"), dict(KIND=kind, IEEE=ieee), kl_distill.CUDA_LAUNCH)
        yield _case(KL, "kl_distill_jsd_fwd_kernel", arch, dt,
                    dict(heads, **split, p_lse_s="*fp32", p_lse_t="*fp32", p_parts="*fp32", beta="fp32"),
                    dict(IEEE=ieee), kl_distill.CUDA_LAUNCH)


CASES = [c for arch in SHARED_LIMIT for gen in (_attention_cases, _paged_cases, _loss_cases) for c in gen(arch)]


# ----------------------------------------------------------------------------------------------- worker side


def _resources(cubin: bytes, ptxas: str) -> dict:
    """Registers, static shared bytes, and stack / local bytes per thread (where spills go) of the cubin's kernel,
    read by cuobjdump."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([os.path.join(os.path.dirname(ptxas), "cuobjdump"), "-res-usage", f.name],
                             capture_output=True, text=True, check=True).stdout
    found = {key: int(re.search(rf"\b{key}:(\d+)", out).group(1)) for key in ("REG", "SHARED", "LOCAL", "STACK")}
    return dict(regs=found["REG"], static_shared=found["SHARED"], local=found["LOCAL"], stack=found["STACK"])


def _compile(case: dict) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(case["module"]), case["kernel"])
    consts = case["constexprs"]
    signature = {name: "constexpr" if name in consts else case["types"][name] for name in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(signature.values()) if t.startswith("*")}
    start = time.perf_counter()
    try:
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs),
                                  target=GPUTarget("cuda", case["arch"], 32), options=case["options"])
    except Exception as e:  # the guard reports every failing case, each with its own error
        return dict(id=case["id"], error=f"{type(e).__name__}: {e}"[:3000], seconds=time.perf_counter() - start)
    seconds = time.perf_counter() - start
    cubin = compiled.asm.get("cubin", b"")
    if cubin[:4] != b"\x7fELF":
        return dict(id=case["id"], error="triton.compile produced no cubin", seconds=seconds)
    return dict(id=case["id"], error=None, seconds=seconds, shared=compiled.metadata.shared,
                **_resources(cubin, get_ptxas(case["arch"]).path))


def _jit_functions() -> dict:
    """{name: source} of every @triton.jit function defined in any module of vt_core.kernels."""
    import pkgutil

    from triton.runtime.jit import JITFunction

    import vt_core.kernels

    found = {}
    for info in pkgutil.walk_packages(vt_core.kernels.__path__, _PKG):
        for name, obj in vars(importlib.import_module(info.name)).items():
            if isinstance(obj, JITFunction) and obj.fn.__module__ == info.name:
                found[name] = obj.src
    return found


def _worker() -> None:
    import triton

    assert not triton.knobs.runtime.interpret, "the compile worker must not run under TRITON_INTERPRET"
    cases = json.load(sys.stdin)
    json.dump(dict(results=[_compile(c) for c in cases], jit=_jit_functions()), sys.stdout)


# ----------------------------------------------------------------------------------------------- test side


def _shards(cases, n):
    """Greedy split by expected cost (fp32 attention is the slowest to compile)."""
    def cost(c):
        return (6 if "fp32" in c["id"] else 1) * (3 if "attn" in c["kernel"] else 1)

    shards, loads = [[] for _ in range(n)], [0] * n
    for c in sorted(cases, key=cost, reverse=True):
        i = loads.index(min(loads))
        shards[i].append(c)
        loads[i] += cost(c)
    return [s for s in shards if s]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TRITON_ALLOW_NON_CONSTEXPR_GLOBALS")}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton_cache"))
    start = time.perf_counter()
    shards = _shards(CASES, max(1, min(4, os.cpu_count() or 1)))
    procs = [subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in shards]
    outs = []
    for proc, shard in zip(procs, shards):
        stdout, stderr = proc.communicate(json.dumps(shard), timeout=900)
        assert proc.returncode == 0, f"compile worker failed:\n{stderr[-4000:]}"
        outs.append(json.loads(stdout))
    results = {r["id"]: r for out in outs for r in out["results"]}
    print(f"\nAOT compile: {len(results)} cases in {time.perf_counter() - start:.0f} s on {len(procs)} workers")
    for r in sorted(results.values(), key=lambda r: r["id"]):
        if r["error"] is None:
            print(f"  {r['id']:64s} {r['seconds']:5.1f} s  shared {r['shared'] + r['static_shared']:6d}  "
                  f"regs {r['regs']:3d}  stack {r['stack']:5d}  local {r['local']}")
    return dict(results=results, jit=outs[0]["jit"])


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_kernel_compiles_within_chip_limits(compiled, case):
    r = compiled["results"][case["id"]]
    if r["error"] is not None:
        pytest.fail(f"{case['kernel']} does not compile for sm_{case['arch']}:\n{r['error']}", pytrace=False)
    shared = r["shared"] + r["static_shared"]
    assert shared <= SHARED_LIMIT[case["arch"]], (
        f"{shared} bytes of shared memory per block; sm_{case['arch']} allows {SHARED_LIMIT[case['arch']]}")
    threads = 32 * case["options"]["num_warps"]
    assert r["regs"] * threads <= REGISTERS_PER_BLOCK, f"{r['regs']} registers x {threads} threads"


def test_every_jit_function_is_covered(compiled):
    """Each @triton.jit function is a compiled kernel, or a helper called from one (compiled inside it)."""
    kernels = {c["kernel"] for c in CASES}
    jit = compiled["jit"]
    assert kernels <= set(jit), sorted(kernels - set(jit))
    helpers = set(jit) - kernels
    uncovered = [h for h in helpers if not any(re.search(rf"\b{h}\(", jit[k]) for k in kernels)]
    assert not uncovered, f"@triton.jit functions no AOT case compiles: {uncovered}"


if __name__ == "__main__":
    _worker()
