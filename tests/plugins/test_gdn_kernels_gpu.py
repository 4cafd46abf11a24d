"""The Triton GDN kernels at the H200 / ARL2 shapes (K = V = 128, H = 12, T up to 9360), against float64 references.

Needs a CUDA GPU; CI has none, so these run through the device tool (benchmarks/results/gdn_kernels.md records the
run). Contract: the final state within 1e-5 (fp32 inputs) and 1e-2 (bf16 inputs) relative RMS of float64.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for compiled Triton kernels")
pytest.importorskip("triton", reason="the GDN kernels need triton")

from arl2rt.plugins.gdn import chunk, chunk_launch, chunk_plan, naive, read  # noqa: E402

STATE_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
OUT_TOL = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2}


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(x).any(), "NaN in output (unwritten element?)"
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm()).item()


def inputs(b, t, h, d, dtype, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(b, t, h, d, generator=gen, device="cuda")
    k = torch.nn.functional.normalize(torch.randn(b, t, h, d, generator=gen, device="cuda"), dim=-1)
    v = torch.randn(b, t, h, d, generator=gen, device="cuda")
    g = torch.nn.functional.logsigmoid(torch.randn(b, t, h, generator=gen, device="cuda") + 2.0) * 0.5
    beta = 2 * torch.rand(b, t, h, generator=gen, device="cuda")
    s0 = torch.randn(b, h, d, d, generator=gen, device="cuda")
    return q.to(dtype), k.to(dtype), v.to(dtype), g, beta, s0


CASES = [(b, t, dt) for t in (1560, 4680, 9360) for b in (1, 2) for dt in (torch.float32, torch.bfloat16)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-T{c[1]}-H12-K128-{str(c[2])[6:]}")
def test_state_update_h200_shapes(case):
    b, t, dt = case
    _, k, v, g, beta, s0 = inputs(b, t, 12, 128, dt, seed=t + b)
    plan = chunk_plan.plan_chunk(b, t, 12, 128, 128, dt)
    out = torch.full_like(s0, float("nan"))
    ws = torch.full((plan.workspace_bytes,), 0xFF, dtype=torch.uint8, device="cuda")
    chunk_launch.launch_gdn_state_update(k, v, g, beta, s0, out, ws, b, t, 12, 128, 128, dt)
    ref = naive.naive_chunk_gated_delta_rule_state(k.double(), v.double(), g.double(), beta.double(), s0.double())
    assert rel_rms(out, ref) <= STATE_TOL[dt]


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_forward_outputs_h200_shape(dt):
    q, k, v, g, beta, s0 = inputs(1, 4680, 12, 128, dt, seed=3)
    o, s = chunk.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0)
    o_ref, s_ref = naive.naive_chunk_gated_delta_rule(
        q.double(), k.double(), v.double(), g.double(), beta.double(), initial_state=s0.double()
    )
    assert rel_rms(o, o_ref) <= OUT_TOL[dt]
    assert rel_rms(s, s_ref) <= STATE_TOL[dt]


def test_raw_pointer_launch_on_an_external_stream():
    """The TensorRT calling convention: integer addresses, int sizes and a raw cudaStream_t."""
    b, t, h, d, dt = 1, 4680, 12, 128, torch.bfloat16
    _, k, v, g, beta, s0 = inputs(b, t, h, d, dt, seed=9)
    plan = chunk_plan.plan_chunk(b, t, h, d, d, dt)
    out = torch.full_like(s0, float("nan"))
    ws = torch.full((plan.workspace_bytes,), 0xFF, dtype=torch.uint8, device="cuda")
    stream = torch.cuda.Stream()
    torch.cuda.synchronize()
    ptrs = [x.data_ptr() for x in (k, v, g, beta, s0, out, ws)]
    chunk_launch.launch_gdn_state_update(*ptrs, b, t, h, d, d, dt, stream=stream.cuda_stream)
    stream.synchronize()
    ref = naive.naive_chunk_gated_delta_rule_state(k.double(), v.double(), g.double(), beta.double(), s0.double())
    assert rel_rms(out, ref) <= STATE_TOL[dt]


def test_custom_op_dispatches_to_the_kernel():
    import arl2rt.plugins.gdn.op  # noqa: F401 - registers torch.ops.arl2.gdn_state_update

    _, k, v, g, beta, s0 = inputs(2, 1000, 12, 128, torch.bfloat16, seed=4)
    got = torch.ops.arl2.gdn_state_update(k, v, g, beta, s0)
    ref = naive.naive_chunk_gated_delta_rule_state(k.double(), v.double(), g.double(), beta.double(), s0.double())
    assert got.dtype == torch.float32 and rel_rms(got, ref) <= STATE_TOL[torch.bfloat16]


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "gate-add"])
@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_block_read_h200_shape(dt, fused):
    q, _, _, _, _, s = inputs(1, 4680, 12, 128, dt, seed=6)
    gate = torch.rand(1, 4680, 12, device="cuda")
    base = torch.randn(1, 4680, 12, 128, device="cuda").to(dt)
    ref = naive.naive_block_read(q.double(), s.double())
    if fused:
        got = read.block_read(q, s, gate=gate, out=base.clone())
        ref = base.double() + gate.double()[..., None] * ref
    else:
        got = torch.full((1, 4680, 12, 128), float("nan"), dtype=dt, device="cuda")
        read.launch_block_read(q, s, None, got, 1, 4680, 12, 128, 128, dt)
    assert rel_rms(got, ref) <= OUT_TOL[dt]
