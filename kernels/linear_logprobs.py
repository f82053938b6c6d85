"""Per-token statistics of ``softmax(hidden @ weight.T / temperature)`` without a [T, V] logits tensor.

One fused op, :func:`linear_token_stats`, returns for every token (all fp32, at the temperature):

- ``target_logit``  z[t, y_t] (0 where the target is negative, i.e. "no target"),
- ``lse``           logsumexp_v z[t, v],
- ``entropy``       -sum_v p log p (optional),
- ``logit_sum``     sum_v z[t, v] (optional; label smoothing needs it),

and its backward takes the upstream gradients of those [T] statistics and produces the gradients of
``hidden`` [T, D] and ``weight`` [V, D]. :func:`linear_logprobs`, ``linear_cross_entropy`` and
``linear_rl_loss`` are [T]-sized torch math on top of it, with autograd carrying [T] gradients back here.

Two backends, both bounded in memory, share one structure: tokens go in chunks of ``Tc`` rows; per chunk one
GEMM gives the logits chunk ``h_c @ W.T`` [Tc, V], a reduction pass gives the rows' statistics, and for
gradients the chunk is overwritten in place with d(loss)/d(logits) and two more GEMMs give the chunk's rows
of d hidden (``dlogits @ W``) and its share of d weight (``dlogits.T @ h_c``). Peak extra memory is one
[Tc, V] chunk plus [T] statistics.

- Triton (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``): the GEMMs run on the vendor BLAS in the
  input dtype (fp32 accumulation); Triton kernels do the passes between them (an online logsumexp over
  vocab tiles; the in-place logits gradient). Tc is chosen per device so that a chunk stays near
  ``_CHUNK_BYTES``. In half precision the weight gradient is summed over token chunks in the weight's dtype
  (no fp32 [V, D] buffer), as the un-fused torch graph's own per-GEMM rounding would.
- torch (the reference, the CPU path and the test oracle): fp32 chunks of ``_TORCH_TOKEN_CHUNK`` rows (a
  fixed count: ``vt_core.generation.exact`` pads batches by it for per-row bitwise invariance) times the
  whole vocabulary, one GEMM each for fp32 weights (wide GEMMs use a CPU core better than vocabulary
  tiles do); half weights are converted to fp32 ``_TORCH_VOCAB_CHUNK`` rows at a time, and
  the elementwise passes walk vocabulary tiles of that width so their temporaries stay small.

Two ways to get gradients:

- recompute (:func:`linear_token_stats`, any upstream gradient of the [T] statistics): the forward keeps
  only [T] statistics; the backward computes each logits chunk again. Forward + backward = 4 GEMMs per
  chunk (8 T D V flops). Used by :func:`linear_logprobs` and by the no-grad scoring path.
- gradient in the forward (:func:`linear_token_loss`, a scalar loss that is a sum of per-token terms, each
  a function of its own token's statistics): once a chunk's statistics are known, the terms' gradients for
  those rows are known too, so the chunk becomes its logits gradient at once and the backward only scales
  the stored d hidden / d weight by the incoming scalar. 3 GEMMs per chunk (6 T D V flops), no second
  pass over the vocabulary; the gradient buffers (the size of the inputs' gradients) exist from the
  forward on. The losses pick it automatically when gradients are needed (``grad_mode``).

Gradient of the statistics with respect to the scaled logits z = x / temperature, used by both paths:
d lse / dz_v = p_v;  d target / dz_v = [v = y];  d sum / dz_v = 1;  d entropy / dz_v = -p_v (z_v - lse + H).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
import triton
import triton.language as tl

from ._dispatch import resolve_backend, triton_interpret

_CHUNK_BYTES = 512 * 2**20
_TORCH_TOKEN_CHUNK = 128  # 78 MiB of fp32 logits at V=151936: 1/15 of the naive CE's extra memory at T=1024
_TORCH_VOCAB_CHUNK = 8192
_INTERPRET_TOKEN_CHUNK = 32
_INTERPRET_BV = 512
# CUDA launch of both kernels: BT rows x BV vocab columns per tile (tests/kernels/test_aot_compile.py compiles
# them with it for sm_80 and sm_90).
CUDA_LAUNCH = dict(BT=4, BV=1024, num_warps=8, num_stages=3)
_NEG = tl.constexpr(-1.0e30)  # running maxima start here: finite, so a fully masked lane stays NaN-free


@triton.jit
def _stats_fwd_kernel(x, targets, tgt, lse, ent, lsum, T, V, inv_temp,
                      BT: tl.constexpr, BV: tl.constexpr, ENTROPY: tl.constexpr, SUM: tl.constexpr):
    """One program per BT token rows of the logits chunk x [T, V]: online logsumexp over vocab tiles."""
    i_t = tl.program_id(0)
    o_t = i_t.to(tl.int64) * BT + tl.arange(0, BT)
    m_t = o_t < T
    p_rows = x + o_t[:, None] * V
    b_m = tl.full([BT, BV], _NEG, tl.float32)
    b_s = tl.zeros([BT, BV], tl.float32)
    b_u = tl.zeros([BT, BV], tl.float32)
    b_sum = tl.zeros([BT, BV], tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_z = tl.load(p_rows + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32) * inv_temp
        b_z = tl.where(m_tv, b_z, _NEG)
        b_mn = tl.maximum(b_m, b_z)
        b_a = tl.exp(b_m - b_mn)
        b_e = tl.where(m_tv, tl.exp(b_z - b_mn), 0.0)
        b_s = b_s * b_a + b_e
        if ENTROPY:
            b_u = b_u * b_a + b_e * tl.where(m_tv, b_z, 0.0)
        if SUM:
            b_sum += tl.where(m_tv, b_z, 0.0)
        b_m = b_mn
    b_max = tl.max(b_m, 1)
    b_a = tl.exp(b_m - b_max[:, None])
    b_tot = tl.where(m_t, tl.sum(b_s * b_a, 1), 1.0)
    b_lse = b_max + tl.log(b_tot)
    tl.store(lse + o_t, b_lse, mask=m_t)
    if ENTROPY:
        tl.store(ent + o_t, b_lse - tl.sum(b_u * b_a, 1) / b_tot, mask=m_t)
    if SUM:
        tl.store(lsum + o_t, tl.sum(b_sum, 1), mask=m_t)
    b_y = tl.load(targets + o_t, mask=m_t, other=-1)
    b_tz = tl.load(x + o_t * V + b_y, mask=m_t & (b_y >= 0), other=0.0).to(tl.float32) * inv_temp
    tl.store(tgt + o_t, b_tz, mask=m_t)


@triton.jit
def _stats_bwd_kernel(x, targets, lse, ent, g_tgt, g_lse, g_ent, g_sum, T, V, inv_temp,
                      BT: tl.constexpr, BV: tl.constexpr, ENTROPY: tl.constexpr, SUM: tl.constexpr):
    """Overwrite BT rows of the recomputed logits chunk x [T, V] with d(loss)/d(logits)."""
    i_t = tl.program_id(0)
    o_t = i_t.to(tl.int64) * BT + tl.arange(0, BT)
    m_t = o_t < T
    p_rows = x + o_t[:, None] * V
    b_lse = tl.load(lse + o_t, mask=m_t, other=0.0)[:, None]
    b_gt = tl.load(g_tgt + o_t, mask=m_t, other=0.0)[:, None]
    b_gl = tl.load(g_lse + o_t, mask=m_t, other=0.0)[:, None]
    b_y = tl.load(targets + o_t, mask=m_t, other=-1)[:, None]
    if ENTROPY:
        b_h = tl.load(ent + o_t, mask=m_t, other=0.0)[:, None]
        b_gh = tl.load(g_ent + o_t, mask=m_t, other=0.0)[:, None]
    if SUM:
        b_gs = tl.load(g_sum + o_t, mask=m_t, other=0.0)[:, None]
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_z = tl.load(p_rows + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32) * inv_temp
        b_p = tl.exp(b_z - b_lse)
        b_d = b_gl * b_p
        if ENTROPY:
            b_d -= b_gh * b_p * (b_z - b_lse + b_h)
        if SUM:
            b_d += b_gs
        b_d = tl.where(o_v[None, :] == b_y, b_d + b_gt, b_d)
        tl.store(p_rows + o_v[None, :], (b_d * inv_temp).to(x.dtype.element_ty), mask=m_tv)


def _triton_tiles(hidden: torch.Tensor, V: int) -> tuple[int, dict]:
    """(token chunk, launch options: row block BT, vocab tile BV, num_warps, num_stages) for this device.

    Under the interpreter one program takes a whole small chunk (its cost is per program, not per element).
    """
    if not hidden.is_cuda and triton_interpret():
        return _INTERPRET_TOKEN_CHUNK, dict(BT=_INTERPRET_TOKEN_CHUNK, BV=_INTERPRET_BV, num_warps=1, num_stages=1)
    rows = max(128, _CHUNK_BYTES // (V * hidden.element_size()) // 128 * 128)
    return rows, CUDA_LAUNCH


def _vocab_tiles(V: int) -> list[tuple[int, int]]:
    return [(v0, min(V, v0 + _TORCH_VOCAB_CHUNK)) for v0 in range(0, V, _TORCH_VOCAB_CHUNK)]


def _weight_tiles(weight: torch.Tensor):
    """(v0, v1, fp32 rows of the weight): one tile of all V for fp32 weights (the fastest GEMM), else
    vocabulary tiles converted one at a time (never an fp32 copy of the whole head)."""
    if weight.dtype == torch.float32:
        return [(0, weight.shape[0], weight)]
    return [(v0, v1, weight[v0:v1].float()) for v0, v1 in _vocab_tiles(weight.shape[0])]


def _torch_logits(hs: torch.Tensor, weight: torch.Tensor, z: torch.Tensor) -> None:
    """z [n, V] (fp32) = hs @ weight.T, hs: fp32 rows already divided by the temperature."""
    if weight.dtype == torch.float32:
        torch.mm(hs, weight.T, out=z)
        return
    for v0, v1, w in _weight_tiles(weight):
        z[:, v0:v1] = hs @ w.T


def _torch_stats(z, y, tgt, lse, ent, lsum, need_ent, need_sum):
    """Statistics of the fp32 logits chunk z [n, V] into the [n] slices tgt/lse/ent/lsum."""
    m = z.amax(dim=1, keepdim=True)
    s = torch.zeros_like(lse)
    u = torch.zeros_like(lse)
    for v0, v1 in _vocab_tiles(z.shape[1]):
        e = torch.sub(z[:, v0:v1], m).exp_()
        s += e.sum(dim=1)
        if need_ent:
            u += e.mul_(z[:, v0:v1]).sum(dim=1)
    torch.add(m[:, 0], torch.log(s), out=lse)
    if need_ent:
        torch.sub(lse, u / s, out=ent)
    if need_sum:
        torch.sum(z, dim=1, out=lsum)
    tgt.copy_(torch.where(y >= 0, z.gather(1, y.clamp(min=0)[:, None])[:, 0], 0.0))


def _torch_dlogits(z, y, lse, ent, g_tgt, g_lse, g_ent, g_sum):
    """Overwrite the fp32 logits chunk z [n, V] with d(loss)/dz, given the upstream [n] gradients."""
    lse_minus_h = None if g_ent is None else (lse - ent)[:, None]
    for v0, v1 in _vocab_tiles(z.shape[1]):
        zt = z[:, v0:v1]
        p = torch.sub(zt, lse[:, None]).exp_()
        if g_ent is None:
            zt.copy_(p.mul_(g_lse[:, None]))
        else:
            zt.sub_(lse_minus_h).mul_(-g_ent[:, None]).add_(g_lse[:, None]).mul_(p)
        if g_sum is not None:
            zt.add_(g_sum[:, None])
    z.scatter_add_(1, y.clamp(min=0)[:, None], torch.where(y >= 0, g_tgt, 0.0)[:, None])


def _row_chunks(hidden: torch.Tensor, V: int, backend: str) -> list[tuple[int, int]]:
    T = hidden.shape[0]
    rows = _triton_tiles(hidden, V)[0] if backend == "triton" else _TORCH_TOKEN_CHUNK
    return [(t0, min(T, t0 + rows)) for t0 in range(0, T, rows)]


def _logits_buffer(hidden, weight, backend, chunks) -> torch.Tensor:
    """One logits chunk, reused by every chunk: fp32 on the torch path, the input dtype for Triton."""
    rows = max((t1 - t0 for t0, t1 in chunks), default=0)
    dtype = torch.float32 if backend == "torch" else hidden.dtype
    return torch.empty(rows, weight.shape[0], device=hidden.device, dtype=dtype)


def _chunk_logits(backend, hidden, weight, t0, t1, inv_temp, buf):
    """(logits chunk in ``buf``, the rows the weight gradient multiplies): the raw logits in the input dtype for
    Triton (its kernels apply the temperature), fp32 logits of rows pre-divided by the temperature for torch."""
    x = buf[: t1 - t0]
    if backend == "triton":
        h = hidden[t0:t1]
        torch.mm(h, weight.T, out=x)
        return x, h
    hs = hidden[t0:t1].float()
    hs = hs * inv_temp if inv_temp != 1.0 else hs
    _torch_logits(hs, weight, x)
    return x, hs


def _chunk_stats(backend, x, y, inv_temp, tgt, lse, ent, lsum, need_ent, need_sum):
    if backend == "torch":
        _torch_stats(x, y, tgt, lse, ent, lsum, need_ent, need_sum)
        return
    launch = _triton_tiles(x, x.shape[1])[1]
    _stats_fwd_kernel[(triton.cdiv(x.shape[0], launch["BT"]),)](
        x, y, tgt, lse, ent, lsum, x.shape[0], x.shape[1], inv_temp, ENTROPY=need_ent, SUM=need_sum, **launch,
    )


def _chunk_grads(backend, x, hs, weight, y, inv_temp, lse, ent, g_tgt, g_lse, g_ent, g_sum, dh, dw, first):
    """Turn the logits chunk x into d(loss)/d(logits) in place, then write the chunk's rows of dh and add its
    share of dw (``first``: dw holds no earlier chunk yet, so it is written rather than accumulated)."""
    beta = 0.0 if first else 1.0
    if backend == "torch":
        _torch_dlogits(x, y, lse, ent, g_tgt, g_lse, g_ent, g_sum)
        for v0, v1, w in _weight_tiles(weight):
            d = x[:, v0:v1]
            if dh is not None:
                dh.addmm_(d, w, beta=0.0 if v0 == 0 else 1.0, alpha=inv_temp)
            if dw is not None:
                dw[v0:v1].addmm_(d.T, hs, beta=beta)
        return
    launch = _triton_tiles(x, x.shape[1])[1]
    _stats_bwd_kernel[(triton.cdiv(x.shape[0], launch["BT"]),)](
        x, y, lse, ent if g_ent is not None else lse, g_tgt, g_lse,
        g_ent if g_ent is not None else g_lse, g_sum if g_sum is not None else g_lse,
        x.shape[0], x.shape[1], inv_temp, ENTROPY=g_ent is not None, SUM=g_sum is not None, **launch,
    )
    if dh is not None:
        torch.mm(x, weight, out=dh)
    if dw is not None:
        dw.addmm_(x.T, hs, beta=beta)


def _grad_buffers(hidden, weight, backend, need_dh, need_dw):
    """Gradient buffers: fp32 on the torch path, the input dtype on the Triton path (whose GEMMs accumulate in
    fp32 and round once per chunk). Left uninitialised: every row of dh is written once, and dw is written by
    the first chunk (zeros when there are no tokens)."""
    dtype = torch.float32 if backend == "torch" else hidden.dtype
    dh = torch.empty(hidden.shape, device=hidden.device, dtype=dtype) if need_dh else None
    alloc = torch.zeros if hidden.shape[0] == 0 else torch.empty
    dw = alloc(weight.shape, device=weight.device, dtype=dtype) if need_dw else None
    return dh, dw


def _new_stats(hidden: torch.Tensor) -> list[torch.Tensor]:
    return [torch.zeros(hidden.shape[0], device=hidden.device, dtype=torch.float32) for _ in range(4)]


def _forward(hidden, weight, targets, inv_temp, need_ent, need_sum, backend):
    stats = _new_stats(hidden)
    chunks = _row_chunks(hidden, weight.shape[0], backend)
    buf = _logits_buffer(hidden, weight, backend, chunks)
    for t0, t1 in chunks:
        x, _ = _chunk_logits(backend, hidden, weight, t0, t1, inv_temp, buf)
        _chunk_stats(backend, x, targets[t0:t1], inv_temp, *(s[t0:t1] for s in stats), need_ent, need_sum)
    return stats


def _backward(hidden, weight, targets, inv_temp, lse, ent, g_tgt, g_lse, g_ent, g_sum, need_dh, need_dw, backend):
    """The recompute backward: every logits chunk is computed again and turned into its gradient."""
    dh, dw = _grad_buffers(hidden, weight, backend, need_dh, need_dw)
    chunks = _row_chunks(hidden, weight.shape[0], backend)
    buf = _logits_buffer(hidden, weight, backend, chunks)
    for t0, t1 in chunks:
        x, hs = _chunk_logits(backend, hidden, weight, t0, t1, inv_temp, buf)
        rows = slice(t0, t1)
        _chunk_grads(backend, x, hs, weight, targets[rows], inv_temp, lse[rows], ent[rows], g_tgt[rows],
                     g_lse[rows], None if g_ent is None else g_ent[rows], None if g_sum is None else g_sum[rows],
                     None if dh is None else dh[rows], dw, t0 == 0)
    return (None if dh is None else dh.to(hidden.dtype)), (None if dw is None else dw.to(weight.dtype))


def _upstream(g, like):
    return torch.zeros_like(like) if g is None else g.float().contiguous()


class _LinearTokenStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temp, need_ent, need_sum, backend):
        tgt, lse, ent, lsum = _forward(hidden, weight, targets, inv_temp, need_ent, need_sum, backend)
        ctx.save_for_backward(hidden, weight, targets, lse, ent)
        ctx.inv_temp, ctx.backend = inv_temp, backend
        ctx.set_materialize_grads(False)
        if not need_ent:
            ctx.mark_non_differentiable(ent)
        if not need_sum:
            ctx.mark_non_differentiable(lsum)
        return tgt, lse, ent, lsum

    @staticmethod
    def backward(ctx, g_tgt, g_lse, g_ent, g_sum):
        hidden, weight, targets, lse, ent = ctx.saved_tensors
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_dh or need_dw) or all(g is None for g in (g_tgt, g_lse, g_ent, g_sum)):
            return None, None, None, None, None, None, None
        g_ent = None if g_ent is None else g_ent.float().contiguous()
        g_sum = None if g_sum is None else g_sum.float().contiguous()
        dh, dw = _backward(hidden, weight, targets, ctx.inv_temp, lse, ent, _upstream(g_tgt, lse),
                           _upstream(g_lse, lse), g_ent, g_sum, need_dh, need_dw, ctx.backend)
        return dh, dw, None, None, None, None, None


def _token_loss_grads(token_loss, rows, stats, need_ent, need_sum):
    """(sum of ``token_loss`` over the rows, its gradients with respect to the rows' four statistics)."""
    with torch.enable_grad():
        leaves = [s.detach().requires_grad_() for s in stats]
        view = TokenStats(leaves[0], leaves[1], leaves[2] if need_ent else None, leaves[3] if need_sum else None)
        loss = token_loss(view, rows).sum()
        if not loss.requires_grad:
            return loss.detach(), [None] * 4
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return loss.detach(), [None if g is None else g.float().contiguous() for g in grads]


class _LinearTokenLoss(torch.autograd.Function):
    """Gradient in the forward: each logits chunk, once its statistics and their per-token loss gradients are
    known, becomes d(loss)/d(logits) right away, so the backward only scales dh/dw by the incoming scalar."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temp, need_ent, need_sum, token_loss, backend):
        dh, dw = _grad_buffers(hidden, weight, backend, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        stats = _new_stats(hidden)
        loss = torch.zeros((), device=hidden.device, dtype=torch.float32)
        chunks = _row_chunks(hidden, weight.shape[0], backend)
        buf = _logits_buffer(hidden, weight, backend, chunks)
        for t0, t1 in chunks:
            rows = slice(t0, t1)
            x, hs = _chunk_logits(backend, hidden, weight, t0, t1, inv_temp, buf)
            tgt, lse, ent, lsum = (s[rows] for s in stats)
            _chunk_stats(backend, x, targets[rows], inv_temp, tgt, lse, ent, lsum, need_ent, need_sum)
            part, (g_tgt, g_lse, g_ent, g_sum) = _token_loss_grads(token_loss, rows, (tgt, lse, ent, lsum),
                                                                   need_ent, need_sum)
            loss += part
            _chunk_grads(backend, x, hs, weight, targets[rows], inv_temp, lse, ent, _upstream(g_tgt, lse),
                         _upstream(g_lse, lse), g_ent, g_sum, None if dh is None else dh[rows], dw, t0 == 0)
        ctx.grads = (dh, dw)
        ctx.dtype = hidden.dtype
        ctx.mark_non_differentiable(*stats)
        return (loss, *stats)

    @staticmethod
    def backward(ctx, g_loss, *_):
        grads, ctx.grads = ctx.grads, None
        scale = None if bool(g_loss == 1) else g_loss.float()
        out = []
        for g in grads:
            if g is not None and scale is not None:
                g = g.mul_(scale) if g.dtype == torch.float32 else g.float().mul_(scale)
            out.append(None if g is None else g.to(ctx.dtype))
        return (*out, None, None, None, None, None, None)


class TokenStats(NamedTuple):
    """Per-token fp32 statistics at the temperature; ``entropy``/``logit_sum`` are None unless asked for."""

    target_logit: torch.Tensor
    lse: torch.Tensor
    entropy: Optional[torch.Tensor]
    logit_sum: Optional[torch.Tensor]


def _pick_backend(op: str, tensor: torch.Tensor, backend: Optional[str]) -> str:
    if backend is None:
        return resolve_backend(op, tensor)
    if backend not in ("torch", "triton"):
        raise ValueError(f"{op}: backend must be None, 'torch' or 'triton', got {backend!r}")
    return backend


def check_linear_inputs(op: str, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> None:
    """Shared argument checks of the fused linear ops (raise ValueError naming the argument and shape)."""
    if hidden.dim() != 2:
        raise ValueError(f"{op}: hidden must be 2-D [T, D], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"{op}: weight must be [V, D] with D = hidden.shape[1] = {hidden.shape[1]}, got shape {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype or weight.device != hidden.device:
        raise ValueError(
            f"{op}: hidden and weight must share dtype and device, got {hidden.dtype}/{hidden.device} "
            f"and {weight.dtype}/{weight.device}"
        )
    if not hidden.dtype.is_floating_point:
        raise ValueError(f"{op}: hidden must be a floating-point tensor, got {hidden.dtype}")
    if targets.dim() != 1 or targets.shape[0] != hidden.shape[0]:
        raise ValueError(f"{op}: targets must be 1-D [T] with T = {hidden.shape[0]}, got shape {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"{op}: targets must be an integer tensor, got {targets.dtype}")


def _check_stats_args(op, hidden, weight, targets, temperature) -> None:
    check_linear_inputs(op, hidden, weight, targets)
    if not temperature > 0:
        raise ValueError(f"{op}: temperature must be > 0, got {temperature}")
    V = weight.shape[0]
    if targets.numel() and int(targets.max()) >= V:
        raise ValueError(f"{op}: targets must be < V = {V}, got max {int(targets.max())}")


def linear_token_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    entropy: bool = False,
    logit_sum: bool = False,
    backend: Optional[str] = None,
) -> TokenStats:
    """Fused per-token softmax statistics of ``hidden @ weight.T / temperature``, never building [T, V].

    hidden: [T, D] float (fp32/fp16/bf16); weight: [V, D], same dtype and device;
    targets: [T] integer in [0, V), or negative for "no target" (its target_logit is 0).
    Returns :class:`TokenStats` of fp32 [T] tensors, differentiable with respect to hidden and weight.
    ``backend`` overrides ``VT_BACKEND`` ("torch" or "triton").
    """
    op = "linear_token_stats"
    _check_stats_args(op, hidden, weight, targets, temperature)
    chosen = _pick_backend(op, hidden, backend)
    tgt, lse, ent, lsum = _LinearTokenStats.apply(
        hidden.contiguous(), weight.contiguous(), targets.to(torch.int64).contiguous(),
        1.0 / float(temperature), bool(entropy), bool(logit_sum), chosen,
    )
    return TokenStats(tgt, lse, ent if entropy else None, lsum if logit_sum else None)


GRAD_MODES = ("fused", "recompute")


def wants_fused_grad(op: str, grad_mode: Optional[str], *tensors: torch.Tensor) -> bool:
    """Whether a scalar loss takes the gradient-in-the-forward path: ``grad_mode`` None (auto) or "fused" when
    autograd will want gradients of ``tensors``; "recompute" never. Without gradients there is nothing to fuse."""
    if grad_mode not in (None, *GRAD_MODES):
        raise ValueError(f"{op}: grad_mode must be None, 'fused' or 'recompute', got {grad_mode!r}")
    return grad_mode != "recompute" and torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def linear_token_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    token_loss: Callable[[TokenStats, slice], torch.Tensor],
    temperature: float = 1.0,
    entropy: bool = False,
    logit_sum: bool = False,
    backend: Optional[str] = None,
    grad_mode: Optional[str] = None,
) -> tuple[torch.Tensor, TokenStats]:
    """A scalar loss ``sum_t token_loss(stats, rows)[t]`` over the fused statistics, with its gradient taken in
    the forward where that pays (see the module docstring).

    hidden, weight, targets, temperature, entropy, logit_sum, backend: as :func:`linear_token_stats`.
    token_loss(stats, rows): given the :class:`TokenStats` of the token rows ``rows`` (a slice of range(T)),
    returns their [n] loss terms, differentiable in the statistics. A row's term may depend only on that
    row's statistics (and on fixed per-token data the callable indexes with ``rows``): the fused path calls
    it chunk by chunk. grad_mode: None (auto: "fused" when autograd needs gradients of hidden or weight),
    "fused" or "recompute" (:func:`linear_token_stats`, then token_loss over all rows); both give the same
    loss and gradients up to fp32 rounding.
    Returns (loss, stats): a 0-d fp32 loss differentiable w.r.t. hidden and weight, and the detached fp32
    [T] statistics (for metrics).
    """
    op = "linear_token_loss"
    fused = wants_fused_grad(op, grad_mode, hidden, weight)
    if not fused:
        stats = linear_token_stats(hidden, weight, targets, temperature, entropy, logit_sum, backend)
        loss = token_loss(stats, slice(0, hidden.shape[0])).sum()
        return loss, TokenStats(*(None if s is None else s.detach() for s in stats))
    _check_stats_args(op, hidden, weight, targets, temperature)
    loss, tgt, lse, ent, lsum = _LinearTokenLoss.apply(
        hidden.contiguous(), weight.contiguous(), targets.to(torch.int64).contiguous(), 1.0 / float(temperature),
        bool(entropy), bool(logit_sum), token_loss, _pick_backend(op, hidden, backend),
    )
    return loss, TokenStats(tgt, lse, ent if entropy else None, lsum if logit_sum else None)


def linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    return_entropy: bool = False,
    backend: Optional[str] = None,
):
    """Log-probability of each target token under ``softmax(hidden @ weight.T / temperature)``.

    hidden: [T, D]; weight: [V, D] (the LM head); targets: [T] integer in [0, V).
    Returns logprobs [T] fp32, or (logprobs [T], entropy [T]) with ``return_entropy``; both differentiable
    with respect to hidden and weight. Under ``torch.no_grad()`` nothing is saved for backward (the path
    used to score rollouts with the old / reference policy).
    """
    if targets.numel() and int(targets.min()) < 0:
        raise ValueError(f"linear_logprobs: targets must be >= 0, got min {int(targets.min())}")
    stats = linear_token_stats(hidden, weight, targets, temperature, entropy=return_entropy, backend=backend)
    logprobs = stats.target_logit - stats.lse
    return (logprobs, stats.entropy) if return_entropy else logprobs


def linear_logprobs_reference(hidden, weight, targets, temperature: float = 1.0, return_entropy: bool = False):
    """The chunked pure-torch path of :func:`linear_logprobs` whatever ``VT_BACKEND`` says."""
    return linear_logprobs(hidden, weight, targets, temperature, return_entropy, backend="torch")
