"""Triton GDN kernels (chunked state update, per-token outputs, block read) against the float64 references.

Without a GPU the kernels run under Triton's CPU interpreter (``TRITON_INTERPRET=1``, set here before the kernels are
defined), at small shapes; with a GPU the same cases run compiled. Every output and the whole workspace are poisoned
with NaN before a launch, so an element the kernels fail to write fails the test. Errors are relative RMS per tensor.
"""

from __future__ import annotations

import importlib
import math
import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="the GDN kernels need triton")

from arl2rt.plugins.common import is_interpreted  # noqa: E402
from arl2rt.plugins.gdn import chunk, chunk_kernels, chunk_launch, chunk_plan, naive, read, read_kernels  # noqa: E402

if not torch.cuda.is_available() and not is_interpreted(chunk_kernels._prep_kernel):
    # another module imported the kernels before the interpreter was switched on
    importlib.reload(chunk_kernels)
    importlib.reload(read_kernels)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# relative RMS error vs float64; fp32 is exact-ish under the interpreter, tf32x3 on the GPU
STATE_TOL = {"fp32": 1e-5, "bf16": 1.5e-2, "fp16": 3e-3}
OUT_TOL = {"fp32": 1e-5, "bf16": 1.5e-2, "fp16": 4e-3}


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double().cpu(), ref.double().cpu()
    assert not torch.isnan(x).any(), "NaN in output (unwritten element?)"
    return ((x - ref).norm() / ref.norm()).item()


def gdn_inputs(b, t, h, dk, dv, dtype, seed, correlated=False):
    """Fresh random inputs in the ARL2 ranges: unit-norm k, log decay < 0, beta in (0, 2), non-zero state.

    ``correlated`` keys share a common direction per head, as neighbouring video tokens do: β K Kᵀ then has entries
    near 2, the regime where an unstable triangular inverse blows up.
    """
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, dk, generator=gen)
    shared = torch.randn(b, 1, h, dk, generator=gen) if correlated else 0.0
    k = torch.nn.functional.normalize(shared + 0.7 * torch.randn(b, t, h, dk, generator=gen), dim=-1)
    v = torch.randn(b, t, h, dv, generator=gen)
    g = torch.nn.functional.logsigmoid(torch.randn(b, t, h, generator=gen) + 2.0) * 0.5
    beta = 2 * torch.rand(b, t, h, generator=gen)
    s0 = torch.randn(b, h, dk, dv, generator=gen)
    q, k, v = (x.to(dtype).to(DEVICE) for x in (q, k, v))
    return q, k, v, g.to(DEVICE), beta.to(DEVICE), s0.to(DEVICE)


def reference(q, k, v, g, beta, s0):
    o, s = naive.naive_chunk_gated_delta_rule(
        None if q is None else q.double(),
        k.double(),
        v.double(),
        g.double(),
        beta.double(),
        initial_state=None if s0 is None else s0.double(),
    )
    return o, s


def poisoned_workspace(plan) -> torch.Tensor:
    return torch.full((plan.workspace_bytes,), 0xFF, dtype=torch.uint8, device=DEVICE)  # all-ones bytes are NaN


def nan_like(x: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x, float("nan"))


STATE_CASES = [
    (b, t, h, d, d, dt, seg)
    for t in (1, 37, 64, 130)
    for d in (16, 32)
    for dt in ("fp32", "bf16", "fp16")
    for (b, h, seg) in ((1, 2, None), (2, 1, 1))
]
STATE_CASES += [(1, 130, 2, 16, 32, "fp32", 2), (2, 100, 1, 32, 16, "bf16", None), (1, 200, 1, 128, 128, "fp32", 3)]


def state_id(case):
    b, t, h, dk, dv, dt, seg = case
    return f"B{b}-T{t}-H{h}-K{dk}-V{dv}-{dt}-seg{seg or 'auto'}"


@pytest.mark.parametrize("case", STATE_CASES, ids=state_id)
def test_state_update_matches_float64(case):
    b, t, h, dk, dv, dt, seg = case
    _, k, v, g, beta, s0 = gdn_inputs(b, t, h, dk, dv, DTYPES[dt], seed=zlib.crc32(repr(case).encode()))
    cfg = chunk_plan.ChunkConfig(segments=seg)
    plan = chunk_plan.plan_chunk(b, t, h, dk, dv, DTYPES[dt], config=cfg)
    out, ws = nan_like(s0), poisoned_workspace(plan)
    chunk_launch.launch_gdn_state_update(k, v, g, beta, s0, out, ws, b, t, h, dk, dv, DTYPES[dt], config=cfg)
    _, s_ref = reference(None, k, v, g, beta, s0)
    assert rel_rms(out, s_ref) <= STATE_TOL[dt]


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
@pytest.mark.parametrize("t", [64, 130])
def test_state_update_with_correlated_keys(t, dt):
    _, k, v, g, beta, s0 = gdn_inputs(1, t, 2, 32, 32, DTYPES[dt], seed=t, correlated=True)
    plan = chunk_plan.plan_chunk(1, t, 2, 32, 32, DTYPES[dt])
    out = nan_like(s0)
    chunk_launch.launch_gdn_state_update(k, v, g, beta, s0, out, poisoned_workspace(plan), 1, t, 2, 32, 32, DTYPES[dt])
    assert rel_rms(out, reference(None, k, v, g, beta, s0)[1]) <= STATE_TOL[dt]


FORWARD_CASES = [(1, t, 2, d, d, dt) for t in (1, 37, 64, 130) for d in (16, 32) for dt in ("fp32", "bf16")]
FORWARD_CASES += [(2, 70, 1, 32, 16, "fp16"), (1, 70, 2, 16, 32, "fp32")]


@pytest.mark.parametrize("case", FORWARD_CASES, ids=lambda c: "B{}-T{}-H{}-K{}-V{}-{}".format(*c))
def test_forward_outputs_and_state_match_float64(case):
    b, t, h, dk, dv, dt = case
    q, k, v, g, beta, s0 = gdn_inputs(b, t, h, dk, dv, DTYPES[dt], seed=zlib.crc32(repr(case).encode()))
    plan = chunk_plan.plan_chunk(b, t, h, dk, dv, DTYPES[dt], with_output=True)
    o, out = nan_like(v), nan_like(s0)
    chunk_launch.launch_gdn_forward(q, k, v, g, beta, s0, o, out, poisoned_workspace(plan), b, t, h, dk, dv, DTYPES[dt])
    o_ref, s_ref = reference(q, k, v, g, beta, s0)
    assert rel_rms(o, o_ref) <= OUT_TOL[dt]
    assert rel_rms(out, s_ref) <= STATE_TOL[dt]


@pytest.mark.parametrize("with_q", [False, True], ids=["state-only", "with-q"])
def test_public_functions_without_initial_state(with_q):
    q, k, v, g, beta, _ = gdn_inputs(1, 90, 2, 32, 32, torch.float32, seed=5)
    o, s = chunk.chunk_gated_delta_rule(q if with_q else None, k, v, g, beta, scale=0.3)
    o_ref, s_ref = naive.naive_chunk_gated_delta_rule(
        q.double() if with_q else None, k.double(), v.double(), g.double(), beta.double(), scale=0.3
    )
    assert rel_rms(s, s_ref) <= STATE_TOL["fp32"]
    assert (o is None) == (not with_q)
    if with_q:
        assert rel_rms(o, o_ref) <= OUT_TOL["fp32"]


def test_empty_sequence_returns_initial_state():
    q, k, v, g, beta, s0 = gdn_inputs(1, 0, 2, 16, 16, torch.float32, seed=2)
    o, s = chunk.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0)
    assert torch.equal(s, s0) and o.shape == v.shape


def test_bad_shapes_are_named():
    q, k, v, g, beta, s0 = gdn_inputs(1, 10, 2, 16, 16, torch.float32, seed=1)
    with pytest.raises(ValueError, match="beta"):
        chunk.chunk_gated_delta_rule_state(k, v, g, beta[:, :9], s0)
    with pytest.raises(ValueError, match="initial state"):
        chunk.chunk_gated_delta_rule_state(k, v, g, beta, s0[:, :1])
    with pytest.raises(ValueError, match="K=24"):
        chunk_plan.plan_chunk(1, 10, 2, 24, 16, torch.float32)
    with pytest.raises(ValueError, match="state"):
        read.block_read(q, s0[..., :8, :])


@pytest.mark.parametrize("with_output", [False, True], ids=["state-only", "with-output"])
def test_plan_orders_arguments_and_cuts_an_aligned_workspace(with_output):
    plan = chunk_plan.plan_chunk(2, 4680, 12, 128, 128, torch.bfloat16, with_output=with_output)
    for launch in plan.launches:
        kinds = ["int" if launch.signature[a] == "i32" else "ptr" for a in launch.args]
        first_int = kinds.index("int") if "int" in kinds else len(kinds)
        last_int = len(kinds) - 1 - kinds[::-1].index("int") if "int" in kinds else first_int
        assert all(k == "int" for k in kinds[first_int : last_int + 1]), launch.name  # inputs → ints → outputs
        assert set(launch.signature) == set(launch.args) | set(launch.constexprs)
        assert all(n >= 1 for n in launch.grid)
    ends = sorted((off, off + n * torch.empty((), dtype=dt).element_size()) for off, dt, n in plan.buffers.values())
    assert all(off % 256 == 0 for off, _ in ends)
    assert all(a_end <= b_off for (_, a_end), (b_off, _) in zip(ends, ends[1:]))
    assert ends[-1][1] <= plan.workspace_bytes
    assert ("hs" in plan.buffers) == with_output and (plan.segments == 1) == with_output
    assert plan.segments * plan.chunks_per_segment >= math.ceil(4680 / 64)


READ_CASES = [(1, t, 2, d, d, dt) for t in (1, 37, 130) for d in (16, 32) for dt in ("fp32", "bf16", "fp16")]
READ_CASES += [(2, 70, 3, 16, 32, "bf16")]


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "gate-add"])
@pytest.mark.parametrize("case", READ_CASES, ids=lambda c: "B{}-T{}-H{}-K{}-V{}-{}".format(*c))
def test_block_read_matches_float64(case, fused):
    b, t, h, dk, dv, dt = case
    q, _, _, _, _, s = gdn_inputs(b, t, h, dk, dv, DTYPES[dt], seed=zlib.crc32(repr(case).encode()))
    gen = torch.Generator().manual_seed(11)
    gate = torch.rand(b, t, h, generator=gen).to(DEVICE)
    base = torch.randn(b, t, h, dv, generator=gen).to(DTYPES[dt]).to(DEVICE)
    cfg = read.ReadConfig(block_t=16, target_programs=4)
    ref = naive.naive_block_read(q.double(), s.double())
    if fused:
        got = read.block_read(q, s, gate=gate, out=base.clone(), config=cfg)
        ref = base.double() + gate.double()[..., None] * ref
    else:
        o = nan_like(torch.empty(b, t, h, dv, dtype=DTYPES[dt], device=DEVICE))
        read.launch_block_read(q, s, None, o, b, t, h, dk, dv, DTYPES[dt], config=cfg)
        got = o
    assert rel_rms(got, ref) <= OUT_TOL[dt]
