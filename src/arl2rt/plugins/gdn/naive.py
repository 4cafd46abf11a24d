"""Pure-torch references for the gated delta rule (docs/arl2.md §3), beside the Triton kernels they check.

Layout follows flash-linear-attention and ONNX ``LinearAttention``: q, k ``[B, T, H, K]``, v ``[B, T, H, V]``,
g (log decay, <= 0) and beta ``[B, T, H]``, state ``[B, H, K, V]``. Per token and head::

    S <- exp(g_t) S;   u_t = beta_t (v_t - S^T k_t);   S <- S + k_t u_t^T;   o_t = S^T (scale q_t)

Every function computes in ``float64`` when given float64 and in ``float32`` otherwise (the state is fp32 by contract),
returning outputs in the dtype of ``v`` and the state in the compute dtype. These are the oracles that the Triton
kernels, the ONNX graphs and the TensorRT plugin are checked against, and what the model runs on a CPU, while tracing
and in training (they have autograd). The ``naive_`` names follow flash-linear-attention, where the naive reference sits
beside the fast kernel of the same name.
"""

from __future__ import annotations

import torch

from arl2rt.plugins.gdn.constants import CHUNK_SIZE


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check(k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor | None) -> None:
    if k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"k and v must be [B, T, H, D]; got k {tuple(k.shape)}, v {tuple(v.shape)}")
    b, t, h, dk = k.shape
    if v.shape[:3] != (b, t, h):
        raise ValueError(f"v must be [B={b}, T={t}, H={h}, V]; got {tuple(v.shape)}")
    for name, x in (("g", g), ("beta", beta)):
        if tuple(x.shape) != (b, t, h):
            raise ValueError(f"{name} must be [B={b}, T={t}, H={h}]; got {tuple(x.shape)}")
    if state is not None and tuple(state.shape) != (b, h, dk, v.shape[-1]):
        raise ValueError(f"initial state must be [B={b}, H={h}, K={dk}, V={v.shape[-1]}]; got {tuple(state.shape)}")


def _initial(state: torch.Tensor | None, b: int, h: int, dk: int, dv: int, dtype, device) -> torch.Tensor:
    if state is None:
        return torch.zeros(b, h, dk, dv, dtype=dtype, device=device)
    return state.to(dtype)


def naive_recurrent_gated_delta_rule(
    q: torch.Tensor | None,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Token-by-token recurrence. Returns ``(o [B,T,H,V] or None when q is None, final_state [B,H,K,V])``."""
    _check(k, v, g, beta, initial_state)
    b, t, h, dk = k.shape
    dv = v.shape[-1]
    dt = _compute_dtype(k, v, initial_state if initial_state is not None else k)
    scale = dk**-0.5 if scale is None else scale
    s = _initial(initial_state, b, h, dk, dv, dt, k.device).clone()
    kk, vv, gg, bb = k.to(dt), v.to(dt), g.to(dt), beta.to(dt)
    qq = q.to(dt) * scale if q is not None else None
    outs = []
    for i in range(t):
        s = s * gg[:, i].exp()[..., None, None]
        u = bb[:, i, :, None] * (vv[:, i] - torch.einsum("bhkv,bhk->bhv", s, kk[:, i]))
        s = s + torch.einsum("bhk,bhv->bhkv", kk[:, i], u)
        if qq is not None:
            outs.append(torch.einsum("bhkv,bhk->bhv", s, qq[:, i]))
    o = torch.stack(outs, dim=1).to(v.dtype) if qq is not None and t > 0 else None
    return o, s


def _chunk_terms(kc: torch.Tensor, vc: torch.Tensor, gc: torch.Tensor, bc: torch.Tensor):
    """WY/UT terms of one chunk (leading dims [B, H], rows n <= C): cumulative log decay G, U and W."""
    n = kc.shape[-2]
    G = gc.cumsum(-1)  # [B,H,n]
    lower = torch.ones(n, n, dtype=torch.bool, device=kc.device).tril()
    diff = G[..., :, None] - G[..., None, :]
    gamma_mat = torch.where(lower, diff, torch.full_like(diff, float("-inf"))).exp()  # Γ_ri, zero above diagonal
    nmat = (bc[..., :, None] * (kc @ kc.transpose(-1, -2)) * gamma_mat).tril(-1)
    eye = torch.eye(n, dtype=kc.dtype, device=kc.device)
    # (I + N)^{-1} by forward substitution: N is strictly lower triangular.
    tmat = torch.linalg.solve_triangular(eye + nmat, eye, upper=False, unitriangular=True)
    u = tmat @ (bc[..., None] * vc)
    w = tmat @ ((bc * G.exp())[..., None] * kc)
    return G, gamma_mat, u, w


def naive_chunk_gated_delta_rule(
    q: torch.Tensor | None,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Chunked (WY/UT) form, chunk ``C = chunk_size``; any T (the last chunk is ragged).

    Same arguments and return as :func:`naive_recurrent_gated_delta_rule`. With ``q=None`` only the final state is
    computed (ARL2's clean-pass write).
    """
    _check(k, v, g, beta, initial_state)
    b, t, h, dk = k.shape
    dv = v.shape[-1]
    dt = _compute_dtype(k, v, initial_state if initial_state is not None else k)
    scale = dk**-0.5 if scale is None else scale
    s = _initial(initial_state, b, h, dk, dv, dt, k.device)
    # [B,H,T,D] so that every chunk is a contiguous slice along the token axis
    kk, vv = k.to(dt).transpose(1, 2), v.to(dt).transpose(1, 2)
    gg, bb = g.to(dt).transpose(1, 2), beta.to(dt).transpose(1, 2)
    qq = q.to(dt).transpose(1, 2) * scale if q is not None else None
    outs = []
    for start in range(0, t, chunk_size):
        sl = slice(start, min(start + chunk_size, t))
        G, gamma_mat, u, w = _chunk_terms(kk[..., sl, :], vv[..., sl, :], gg[..., sl], bb[..., sl])
        v_new = u - w @ s
        if qq is not None:
            qc = qq[..., sl, :]
            outs.append(G.exp()[..., None] * (qc @ s) + ((qc @ kk[..., sl, :].transpose(-1, -2)) * gamma_mat) @ v_new)
        decay_to_end = (G[..., -1:] - G).exp()  # exp(G_n - G_r)
        s = G[..., -1].exp()[..., None, None] * s + (decay_to_end[..., None] * kk[..., sl, :]).transpose(-1, -2) @ v_new
    o = None
    if qq is not None:
        o = (torch.cat(outs, dim=-2) if outs else vv.new_zeros(b, h, 0, dv)).transpose(1, 2).to(v.dtype)
    return o, s


def naive_chunk_gated_delta_rule_state(
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> torch.Tensor:
    """State-only chunked update: the final state ``[B,H,K,V]`` and nothing else (ARL2's clean-pass write)."""
    return naive_chunk_gated_delta_rule(None, k, v, g, beta, initial_state=initial_state, chunk_size=chunk_size)[1]


def naive_block_read(q: torch.Tensor, state: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """ARL2's block-level read ``o[b,t,h] = scale * q[b,t,h] @ S[b,h]``: every token reads the same state.

    q ``[B,T,H,K]``, state ``[B,H,K,V]`` -> ``[B,T,H,V]`` in q's dtype (the state is cast to q's dtype, as upstream).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.einsum("bthk,bhkv->bthv", q * scale, state.to(q.dtype))


__all__ = [
    "naive_block_read",
    "naive_chunk_gated_delta_rule",
    "naive_chunk_gated_delta_rule_state",
    "naive_recurrent_gated_delta_rule",
]
