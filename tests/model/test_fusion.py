"""The fused pointwise chains and the copy-free attention over a cache: same numbers as the plain composition."""

from __future__ import annotations

import os
import shutil
import sysconfig

import pytest
import torch

from arl2rt.model import dit, layers
from arl2rt.model.attention import gated_sum
from arl2rt.model.fusion import fusion_wanted
from micro_configs import micro_config

CUDA = torch.cuda.is_available()


def _rand(*shape, dtype=torch.float64, device="cpu", seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device, dtype)


def test_merged_attention_equals_attention_over_the_concatenation():
    q = _rand(2, 7, 3, 16, seed=1)
    k_past, v_past = _rand(2, 11, 3, 16, seed=2), _rand(2, 11, 3, 16, seed=3)
    k, v = _rand(2, 7, 3, 16, seed=4) * 3, _rand(2, 7, 3, 16, seed=5)  # scaled: the two parts' maxima differ
    o_a, lse_a = layers.attention_lse(q, k_past, v_past)
    o_b, lse_b = layers.attention_lse(q, k, v)
    merged = layers.merge_attention(o_a, lse_a, o_b, lse_b)
    full = layers.attention(q, torch.cat([k_past, k], 1), torch.cat([v_past, v], 1))
    torch.testing.assert_close(merged, full, rtol=1e-12, atol=1e-12)
    scores = torch.einsum("blhd,bshd->bhls", q, torch.cat([k_past, k], 1)) / 4.0
    torch.testing.assert_close(torch.logaddexp(lse_a, lse_b), torch.logsumexp(scores, -1).transpose(1, 2))


def test_fusion_is_off_on_the_cpu_with_autograd_and_when_switched_off(monkeypatch):
    x = torch.zeros(1)
    assert not fusion_wanted(x)
    if CUDA:
        xc = x.cuda()
        with torch.no_grad():
            assert fusion_wanted(xc)
            monkeypatch.setenv("ARL2RT_FUSE", "0")
            assert not fusion_wanted(xc)
        assert not fusion_wanted(xc.requires_grad_())


def _chains(device, dtype):
    """Each fused chain with fresh random inputs at a small DiT shape: (name, function, args)."""
    b, f, hw, heads, d = 2, 3, 4, 2, 16
    lt, dim = f * hw, heads * d
    angles = _rand(lt, d // 2, seed=9) * 3
    cos, sin = angles.cos().to(device, torch.float32), angles.sin().to(device, torch.float32)
    r = lambda *s, seed: _rand(*s, dtype=dtype, device=device, seed=seed)  # noqa: E731
    f32 = lambda *s, seed: _rand(*s, dtype=torch.float32, device=device, seed=seed)  # noqa: E731
    return [
        ("rms_norm", layers.rms_norm, (r(b, lt, dim, seed=1), r(dim, seed=2), 1e-6)),
        ("rms_norm_rope", layers.rms_norm_rope, (r(b, lt, dim, seed=1), r(dim, seed=2), 1e-6, cos, sin, heads)),
        ("layer_norm", layers.layer_norm, (r(b, lt, dim, seed=1), r(dim, seed=2), r(dim, seed=3), 1e-6)),
        ("rope_l2norm", layers.rope_l2norm, (r(b, lt, heads, d, seed=4), cos, sin)),
        (
            "norm_modulate",
            dit.norm_modulate,
            (r(b, lt, dim, seed=5), f32(b, f, dim, seed=6), f32(b, f, dim, seed=7), f, 1e-6),
        ),
        ("gated_add", dit.gated_add, (r(b, lt, dim, seed=8), r(b, lt, dim, seed=10), f32(b, f, dim, seed=11), f)),
        ("gated_sum", gated_sum, (r(b, lt, heads, d, seed=12), r(b, lt, heads, seed=13), r(b, lt, heads, d, seed=14))),
        (
            "merge_attention",
            layers.merge_attention,
            (
                r(b, lt, heads, d, seed=15),
                f32(b, lt, heads, seed=16),
                r(b, lt, heads, d, seed=17),
                f32(b, lt, heads, seed=18),
            ),
        ),
    ]


def _cpp_toolchain() -> bool:
    """Inductor's CPU backend builds C++ against Python's headers."""
    include = sysconfig.get_paths().get("include") or ""
    return shutil.which(os.environ.get("CXX", "g++")) is not None and os.path.exists(os.path.join(include, "Python.h"))


@pytest.mark.skipif(not _cpp_toolchain(), reason="inductor's CPU backend needs a C++ compiler and Python.h")
@pytest.mark.parametrize("name", [c[0] for c in _chains("cpu", torch.float32)])
def test_each_chain_compiles_as_one_graph_and_matches_its_plain_body(name):
    """fullgraph=True, as on CUDA: a graph break or a changed result fails here on the CPU (inductor's C++ backend)."""
    _, fn, args = next(c for c in _chains("cpu", torch.bfloat16) if c[0] == name)
    plain = fn.__wrapped__
    compiled = torch.compile(plain, dynamic=False, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), plain(*args), rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (the compiled chains and the cuDNN/flash statistics)")
def test_fused_chains_on_cuda_match_the_float64_plain_body():
    with torch.no_grad():
        for name, fn, args in _chains("cuda", torch.bfloat16):
            ref = fn.__wrapped__(*(a.double() if torch.is_tensor(a) else a for a in args))
            out = fn(*args)
            err = ((out.double() - ref).norm() / ref.norm()).item()
            assert err < 1e-2, f"{name}: relative error {err:.2e} vs float64"


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (cuDNN/flash attention statistics)")
@pytest.mark.parametrize("past", [0, 1, 300])
def test_attention_with_past_on_cuda_matches_float64(past):
    q = _rand(1, 96, 4, 64, seed=1).cuda()
    k_past, v_past = _rand(1, past, 4, 64, seed=2).cuda(), _rand(1, past, 4, 64, seed=3).cuda()
    k, v = _rand(1, 96, 4, 64, seed=4).cuda(), _rand(1, 96, 4, 64, seed=5).cuda()
    ref = layers.attention(q, torch.cat([k_past, k], 1), torch.cat([v_past, v], 1))
    with torch.no_grad():
        out = layers.attention_with_past(*(t.bfloat16() for t in (q, k_past, v_past, k, v)))
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (flash attention's variable-length kernel)")
@pytest.mark.parametrize(("batch", "used"), [(1, 1), (1, 300), (2, 257), (2, 511)])
def test_attention_over_a_whole_cache_reads_only_its_valid_keys(batch, used):
    cap = 512
    q = _rand(batch, 96, 4, 64, seed=1).cuda()
    k_buf, v_buf = _rand(batch, cap, 4, 64, seed=2).cuda(), _rand(batch, cap, 4, 64, seed=3).cuda()
    k_buf[:, used:], v_buf[:, used:] = float("nan"), float("nan")  # what lies beyond must never be read
    k, v = _rand(batch, 96, 4, 64, seed=4).cuda(), _rand(batch, 96, 4, 64, seed=5).cuda()
    ref = layers.attention(q, torch.cat([k_buf[:, :used], k], 1), torch.cat([v_buf[:, :used], v], 1))
    tokens = torch.tensor([used], device="cuda")
    with torch.no_grad():
        out = layers.attention_with_padded_past(
            *(t.bfloat16() for t in (q, k_buf, v_buf)), tokens, k.bfloat16(), v.bfloat16()
        )
        _, lse = layers.padded_attention_lse(*(t.bfloat16() for t in (q, k_buf, v_buf)), tokens)
    assert not layers._VARLEN_FAILED  # the flash kernel ran, not the masked fallback
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-2
    scores = q.transpose(1, 2) @ k_buf[:, :used].transpose(1, 2).transpose(-1, -2) / 64**0.5
    torch.testing.assert_close(lse.double(), torch.logsumexp(scores, -1).transpose(1, 2), rtol=0, atol=2e-2)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (cuBLASLt's GELU epilogue)")
def test_feed_forward_with_the_gelu_epilogue_matches_float64():
    ffn = layers.FeedForward(64, 368).cuda()
    x = _rand(2, 96, 64, seed=7).cuda()
    with torch.no_grad():
        ref = torch.nn.Sequential.forward(ffn.double(), x)
        out = ffn.bfloat16()(x.bfloat16())
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_a_fused_model_step_matches_the_unfused_one(monkeypatch):
    from arl2rt.model.dit import CausalDiT

    cfg = micro_config("fusion")
    torch.manual_seed(0)
    model = CausalDiT(cfg).cuda().to(torch.bfloat16).eval()
    n = cfg.frames_per_block * (cfg.latent_height // cfg.patch_size[1]) * (cfg.latent_width // cfg.patch_size[2])
    hd = cfg.dim // cfg.num_heads
    x = torch.randn(1, cfg.in_channels, cfg.frames_per_block, cfg.latent_height, cfg.latent_width, device="cuda")
    t = torch.full((1, cfg.frames_per_block), 700.0, device="cuda")
    with torch.no_grad():
        ctx = model.encode_context(torch.randn(1, 5, cfg.text_dim, device="cuda", dtype=torch.bfloat16))
        states = {i: torch.randn(1, cfg.num_heads, hd, hd, device="cuda") for i in cfg.hybrid_layers}
        soft = [i for i in range(cfg.num_layers) if i not in cfg.hybrid_layers]
        past = {
            i: tuple(torch.randn(1, 2 * n, cfg.num_heads, hd, device="cuda").bfloat16() for _ in "kv") for i in soft
        }
        fused_out = model.step(x, t, 2, ctx, states, past, True)
        monkeypatch.setenv("ARL2RT_FUSE", "0")
        plain_out = model.step(x, t, 2, ctx, states, past, True)
    for a, b in [(fused_out.velocity, plain_out.velocity), *zip(fused_out.states.values(), plain_out.states.values())]:
        assert ((a.double() - b.double()).norm() / b.double().norm()).item() < 2e-2


def _fused_double(monkeypatch, compile_fn):
    """``2 * x`` through ``fusion.fused`` with fusion wanted and ``torch.compile`` replaced by ``compile_fn``."""
    from arl2rt.model import fusion

    monkeypatch.setattr(fusion, "fusion_wanted", lambda x: True)
    monkeypatch.setattr(fusion.torch, "compile", compile_fn)

    @fusion.fused
    def double(x):
        return 2 * x

    return double


def test_a_chain_whose_compilation_fails_warns_once_and_runs_unfused(monkeypatch):
    calls = {"compile": 0}

    def broken_compile(fn, **kwargs):
        calls["compile"] += 1

        def run(*args, **kw):
            raise RuntimeError("no C++ compiler")

        return run

    double = _fused_double(monkeypatch, broken_compile)

    x = torch.arange(3.0)
    with pytest.warns(RuntimeWarning, match="could not fuse double"):
        assert torch.equal(double(x), 2 * x)
    assert torch.equal(double(x), 2 * x) and calls["compile"] == 1  # no second attempt, no second warning


def test_a_failure_after_a_compiled_call_succeeded_is_raised(monkeypatch):
    outcomes = iter([None, ValueError("bad input")])

    def flaky_compile(fn, **kwargs):
        def run(*args, **kw):
            outcome = next(outcomes)
            if outcome is not None:
                raise outcome
            return fn(*args, **kw)

        return run

    double = _fused_double(monkeypatch, flaky_compile)

    assert torch.equal(double(torch.ones(2)), torch.full((2,), 2.0))
    with pytest.raises(ValueError, match="bad input"):
        double(torch.ones(2))


def test_a_chain_past_the_recompile_limit_runs_new_shapes_unfused(monkeypatch):
    """A proven chain that dynamo refuses to recompile (its limit) answers with the plain body, warning once; any
    other failure after a success is still raised."""
    from arl2rt.model import fusion

    def double(x):
        return 2 * x

    chain = fusion._Chain(double)
    monkeypatch.setattr(fusion, "fusion_wanted", lambda x: True)
    calls = []

    def compiled(x):
        calls.append(x.shape)
        if len(calls) == 1:
            return x + x
        if len(calls) == 2:
            raise torch._dynamo.exc.FailOnRecompileLimitHit("Hard failure due to fullgraph=True")
        raise RuntimeError("a real failure")

    chain.compiled = compiled
    x = torch.randn(3)
    assert torch.equal(chain(x), 2 * x) and chain.proven
    y = torch.randn(5)
    with pytest.warns(RuntimeWarning, match="more shapes than torch.compile keeps"):
        assert torch.equal(chain(y), 2 * y)
    with pytest.raises(RuntimeError, match="a real failure"):
        chain(torch.randn(7))
