"""The chunked gated delta rule on torch tensors, through the Triton kernels (the fast twin of the references).

Same contract as :func:`arl2rt.plugins.gdn.naive.naive_chunk_gated_delta_rule`; the kernels, their plan and their
raw-pointer launches are :mod:`.chunk_kernels`, :mod:`.chunk_plan` and :mod:`.chunk_launch`.
"""

from __future__ import annotations

import torch

from arl2rt.plugins.common import check_kernel_sizes
from arl2rt.plugins.gdn.chunk_launch import launch_gdn_forward, launch_gdn_state_update
from arl2rt.plugins.gdn.chunk_plan import ChunkConfig, plan_chunk


def _check_inputs(q, k, v, g, beta, initial_state) -> None:
    if k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"k and v must be [B, T, H, D]; got k {tuple(k.shape)}, v {tuple(v.shape)}")
    b, t, h, dk = k.shape
    if v.shape[:3] != (b, t, h):
        raise ValueError(f"v must be [B={b}, T={t}, H={h}, V]; got {tuple(v.shape)}")
    if q is not None and tuple(q.shape) != tuple(k.shape):
        raise ValueError(f"q must be shaped like k {tuple(k.shape)}; got {tuple(q.shape)}")
    for name, x in (("g", g), ("beta", beta)):
        if tuple(x.shape) != (b, t, h):
            raise ValueError(f"{name} must be [B={b}, T={t}, H={h}]; got {tuple(x.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (b, h, dk, v.shape[-1]):
        raise ValueError(
            f"initial state must be [B={b}, H={h}, K={dk}, V={v.shape[-1]}]; got {tuple(initial_state.shape)}"
        )
    if v.dtype != k.dtype or (q is not None and q.dtype != k.dtype):
        raise ValueError(
            f"q, k, v must share one dtype; got k {k.dtype}, v {v.dtype}, q {None if q is None else q.dtype}"
        )


def chunk_gated_delta_rule(
    q: torch.Tensor | None,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    config: ChunkConfig | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Chunked gated delta rule (Triton), same contract as the reference :func:`~.naive.naive_chunk_gated_delta_rule`.

    q (optional), k ``[B,T,H,K]``, v ``[B,T,H,V]`` in bf16/fp16/fp32; g (log decay ≤ 0), beta ``[B,T,H]`` (cast to
    fp32); initial_state ``[B,H,K,V]`` (cast to fp32; None = zeros); scale defaults to K^-0.5. Returns
    ``(o [B,T,H,V] in v's dtype or None when q is None, final_state [B,H,K,V] fp32)``. With q None nothing per-token
    or per-chunk is stored: the state-only path.
    """
    _check_inputs(q, k, v, g, beta, initial_state)
    b, t, h, dk = k.shape
    dv = v.shape[-1]
    dtype = k.dtype
    s0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
    if t == 0:
        state = s0.clone() if s0 is not None else k.new_zeros(b, h, dk, dv, dtype=torch.float32)
        return (v.new_empty(b, 0, h, dv) if q is not None else None), state
    check_kernel_sizes(b, t, h, dk, dv, dtype, "q/k/v")
    args = (k.contiguous(), v.contiguous(), g.to(torch.float32).contiguous(), beta.to(torch.float32).contiguous(), s0)
    state = torch.empty(b, h, dk, dv, dtype=torch.float32, device=k.device)
    if q is None:
        plan = plan_chunk(b, t, h, dk, dv, dtype, has_initial_state=s0 is not None, config=config)
        ws = torch.empty(plan.workspace_bytes, dtype=torch.uint8, device=k.device)
        launch_gdn_state_update(*args, state, ws, b, t, h, dk, dv, dtype, config=config)
        return None, state
    plan = plan_chunk(
        b, t, h, dk, dv, dtype, with_output=True, scale=scale, has_initial_state=s0 is not None, config=config
    )
    ws = torch.empty(plan.workspace_bytes, dtype=torch.uint8, device=k.device)
    o = torch.empty_like(v)
    launch_gdn_forward(q.contiguous(), *args, o, state, ws, b, t, h, dk, dv, dtype, scale=scale, config=config)
    return o, state


def chunk_gated_delta_rule_state(
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    config: ChunkConfig | None = None,
) -> torch.Tensor:
    """State-only update (ARL2's clean-pass write): the final state ``[B,H,K,V]`` fp32 and nothing else."""
    return chunk_gated_delta_rule(None, k, v, g, beta, initial_state=initial_state, config=config)[1]


__all__ = ["chunk_gated_delta_rule", "chunk_gated_delta_rule_state"]
