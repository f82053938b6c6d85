"""Per-token statistics of ``softmax(hidden @ weight.T / temperature)`` without a [T, V] logits tensor.

One fused op, :func:`linear_token_stats`, returns for every token (all fp32, at the temperature):

- ``target_logit``  z[t, y_t] (0 where the target is negative, i.e. "no target"),
- ``lse``           logsumexp_v z[t, v],
- ``entropy``       -sum_v p log p (optional),
- ``logit_sum``     sum_v z[t, v] (optional; label smoothing needs it),

and its backward takes the upstream gradients of those [T] statistics and produces the gradients of
``hidden`` [T, D] and ``weight`` [V, D]. :func:`linear_logprobs`, ``linear_cross_entropy`` and
``linear_rl_loss`` are [T]-sized torch math on top of it, with autograd carrying [T] gradients back here.

Two paths, both bounded in memory:

- Triton (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``): tokens go in chunks of ``Tc`` rows.
  The matmul-shaped work (logits chunk ``h_c @ W.T`` [Tc, V], ``dlogits @ W`` and ``dlogits.T @ h_c``)
  runs on the vendor GEMM in the input dtype; the Triton kernels do everything between the GEMMs in one
  pass over the chunk: the forward kernel reduces each row with an online logsumexp over vocab tiles, the
  backward kernel overwrites the recomputed logits chunk with d(loss)/d(logits) in place. Peak extra
  memory is one [Tc, V] chunk (Tc chosen per device so that it stays near ``_CHUNK_BYTES``) plus [T] stats.
  Each GEMM accumulates in fp32; in half precision the weight gradient is summed over token chunks in the
  weight's dtype (no fp32 [V, D] buffer), as the un-fused torch graph's own per-GEMM rounding would.
- torch (the reference, the CPU path and the test oracle): fp32 tiles of [Tc, Vc] with the same online
  logsumexp; the backward recomputes each tile. Never more than one tile of logits.

Gradient of the statistics with respect to the scaled logits z = x / temperature, used by both paths:
d lse / dz_v = p_v;  d target / dz_v = [v = y];  d sum / dz_v = 1;  d entropy / dz_v = -p_v (z_v - lse + H).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from ._dispatch import resolve_backend, triton_interpret

_CHUNK_BYTES = 512 * 2**20
_TORCH_TOKEN_CHUNK = 512
_TORCH_VOCAB_CHUNK = 8192
_INTERPRET_TOKEN_CHUNK = 32
_INTERPRET_BV = 512
_CUDA_BT = 4
_CUDA_BV = 1024
_NEG_LARGE = -1e30


@triton.jit
def _stats_fwd_kernel(x, targets, tgt, lse, ent, lsum, T, V, inv_temp,
                      BT: tl.constexpr, BV: tl.constexpr, ENTROPY: tl.constexpr, SUM: tl.constexpr):
    """One program per BT token rows of the logits chunk x [T, V]: online logsumexp over vocab tiles."""
    i_t = tl.program_id(0)
    o_t = i_t.to(tl.int64) * BT + tl.arange(0, BT)
    m_t = o_t < T
    p_rows = x + o_t[:, None] * V
    b_m = tl.full([BT, BV], -1e30, tl.float32)
    b_s = tl.zeros([BT, BV], tl.float32)
    b_u = tl.zeros([BT, BV], tl.float32)
    b_sum = tl.zeros([BT, BV], tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_z = tl.load(p_rows + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32) * inv_temp
        b_z = tl.where(m_tv, b_z, -1e30)
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


def _triton_tiles(hidden: torch.Tensor, V: int) -> tuple[int, int, int, int]:
    """(token chunk, row block BT, vocab tile BV, num_warps) for this device.

    Under the interpreter one program takes a whole small chunk (its cost is per program, not per element).
    """
    if not hidden.is_cuda and triton_interpret():
        return _INTERPRET_TOKEN_CHUNK, _INTERPRET_TOKEN_CHUNK, _INTERPRET_BV, 1
    rows = max(128, _CHUNK_BYTES // (V * hidden.element_size()) // 128 * 128)
    return rows, _CUDA_BT, _CUDA_BV, 8


def _fwd_triton(hidden, weight, targets, inv_temp, need_ent, need_sum):
    T, V = hidden.shape[0], weight.shape[0]
    chunk, BT, BV, warps = _triton_tiles(hidden, V)
    tgt, lse, ent, lsum = (torch.empty(T, device=hidden.device, dtype=torch.float32) for _ in range(4))
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        x = hidden[t0:t1] @ weight.T
        _stats_fwd_kernel[(triton.cdiv(t1 - t0, BT),)](
            x, targets[t0:t1], tgt[t0:t1], lse[t0:t1], ent[t0:t1], lsum[t0:t1], t1 - t0, V, inv_temp,
            BT=BT, BV=BV, ENTROPY=need_ent, SUM=need_sum, num_warps=warps,
        )
    return tgt, lse, ent, lsum


def _bwd_triton(hidden, weight, targets, inv_temp, lse, ent, g_tgt, g_lse, g_ent, g_sum, need_dh, need_dw):
    T, V = hidden.shape[0], weight.shape[0]
    chunk, BT, BV, warps = _triton_tiles(hidden, V)
    dh = torch.empty_like(hidden) if need_dh else None
    dw = torch.zeros_like(weight) if need_dw else None
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        h = hidden[t0:t1]
        x = h @ weight.T
        _stats_bwd_kernel[(triton.cdiv(t1 - t0, BT),)](
            x, targets[t0:t1], lse[t0:t1], ent[t0:t1] if g_ent is not None else lse[t0:t1],
            g_tgt[t0:t1], g_lse[t0:t1],
            g_ent[t0:t1] if g_ent is not None else g_lse[t0:t1],
            g_sum[t0:t1] if g_sum is not None else g_lse[t0:t1],
            t1 - t0, V, inv_temp, BT=BT, BV=BV, ENTROPY=g_ent is not None, SUM=g_sum is not None, num_warps=warps,
        )
        if need_dh:
            torch.mm(x, weight, out=dh[t0:t1])
        if need_dw:
            dw.addmm_(x.T, h)
    return dh, dw


def _fwd_torch(hidden, weight, targets, inv_temp, need_ent, need_sum):
    T, V = hidden.shape[0], weight.shape[0]
    f32 = dict(device=hidden.device, dtype=torch.float32)
    tgt, lse, ent, lsum = (torch.zeros(T, **f32) for _ in range(4))
    for t0 in range(0, T, _TORCH_TOKEN_CHUNK):
        t1 = min(T, t0 + _TORCH_TOKEN_CHUNK)
        h, y = hidden[t0:t1].float(), targets[t0:t1]
        m = torch.full((t1 - t0,), _NEG_LARGE, **f32)
        s, u, zsum, zt = (torch.zeros(t1 - t0, **f32) for _ in range(4))
        for v0 in range(0, V, _TORCH_VOCAB_CHUNK):
            v1 = min(V, v0 + _TORCH_VOCAB_CHUNK)
            z = (h @ weight[v0:v1].float().T).mul_(inv_temp)
            m_new = torch.maximum(m, z.amax(dim=1))
            a = torch.exp(m - m_new)
            e = torch.exp(z - m_new[:, None])
            s = s * a + e.sum(dim=1)
            if need_ent:
                u = u * a + (e * z).sum(dim=1)
            if need_sum:
                zsum += z.sum(dim=1)
            hit = (y >= v0) & (y < v1)
            zt += torch.where(hit, z.gather(1, (y - v0).clamp(0, v1 - v0 - 1)[:, None])[:, 0], 0.0)
            m = m_new
        lse[t0:t1] = m + torch.log(s)
        tgt[t0:t1] = zt
        if need_ent:
            ent[t0:t1] = lse[t0:t1] - u / s
        if need_sum:
            lsum[t0:t1] = zsum
    return tgt, lse, ent, lsum


def _bwd_torch(hidden, weight, targets, inv_temp, lse, ent, g_tgt, g_lse, g_ent, g_sum, need_dh, need_dw):
    T, V = hidden.shape[0], weight.shape[0]
    dh = torch.zeros(hidden.shape, device=hidden.device, dtype=torch.float32) if need_dh else None
    dw = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_dw else None
    for t0 in range(0, T, _TORCH_TOKEN_CHUNK):
        t1 = min(T, t0 + _TORCH_TOKEN_CHUNK)
        h, y, l_c = hidden[t0:t1].float(), targets[t0:t1], lse[t0:t1, None]
        for v0 in range(0, V, _TORCH_VOCAB_CHUNK):
            v1 = min(V, v0 + _TORCH_VOCAB_CHUNK)
            w = weight[v0:v1].float()
            z = (h @ w.T).mul_(inv_temp)
            p = torch.exp(z - l_c)
            d = p * g_lse[t0:t1, None]
            if g_ent is not None:
                d -= g_ent[t0:t1, None] * p * (z - l_c + ent[t0:t1, None])
            if g_sum is not None:
                d += g_sum[t0:t1, None]
            hit = (y >= v0) & (y < v1)
            d.scatter_add_(1, (y - v0).clamp(0, v1 - v0 - 1)[:, None], torch.where(hit, g_tgt[t0:t1], 0.0)[:, None])
            d.mul_(inv_temp)
            if need_dh:
                dh[t0:t1].addmm_(d, w)
            if need_dw:
                dw[v0:v1].addmm_(d.T, h)
    return (dh.to(hidden.dtype) if need_dh else None), (dw.to(weight.dtype) if need_dw else None)


class _LinearTokenStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temp, need_ent, need_sum, backend):
        fwd = _fwd_triton if backend == "triton" else _fwd_torch
        tgt, lse, ent, lsum = fwd(hidden, weight, targets, inv_temp, need_ent, need_sum)
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
        g_tgt = torch.zeros_like(lse) if g_tgt is None else g_tgt.float().contiguous()
        g_lse = torch.zeros_like(lse) if g_lse is None else g_lse.float().contiguous()
        g_ent = None if g_ent is None else g_ent.float().contiguous()
        g_sum = None if g_sum is None else g_sum.float().contiguous()
        bwd = _bwd_triton if ctx.backend == "triton" else _bwd_torch
        dh, dw = bwd(hidden, weight, targets, ctx.inv_temp, lse, ent, g_tgt, g_lse, g_ent, g_sum, need_dh, need_dw)
        return dh, dw, None, None, None, None, None


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
    check_linear_inputs(op, hidden, weight, targets)
    if not temperature > 0:
        raise ValueError(f"{op}: temperature must be > 0, got {temperature}")
    V = weight.shape[0]
    if targets.numel() and int(targets.max()) >= V:
        raise ValueError(f"{op}: targets must be < V = {V}, got max {int(targets.max())}")
    chosen = _pick_backend(op, hidden, backend)
    tgt, lse, ent, lsum = _LinearTokenStats.apply(
        hidden.contiguous(), weight.contiguous(), targets.to(torch.int64).contiguous(),
        1.0 / float(temperature), bool(entropy), bool(logit_sum), chosen,
    )
    return TokenStats(tgt, lse, ent if entropy else None, lsum if logit_sum else None)


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
