"""FP8 (E4M3, row scales) linear layers: the codes reconstruct their input to E4M3's rounding, the layer computes
exactly the dequantized product (float64 reference), and a quantized DiT stays close to the bf16 one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import StateSpec
from arl2rt.model.fp8 import E4M3_MAX, Fp8Linear, quantize_linears, quantize_rows_plain
from arl2rt.model.random import random_context, random_model
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend
from micro_configs import micro_config

E4M3_HALF_ULP = 2.0**-4  # 3 mantissa bits: relative rounding error of a normal value
E4M3_SUBNORMAL_STEP = 2.0**-9  # absolute spacing below the smallest normal (in units of the scale)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_row_codes_reconstruct_each_row_to_e4m3_rounding():
    x = (
        torch.randn(32, 96, generator=_gen(0), dtype=torch.float64)
        * torch.logspace(-3, 3, 32, dtype=torch.float64)[:, None]
    )
    codes, scale = quantize_rows_plain(x)
    assert codes.dtype == torch.float8_e4m3fn and scale.shape == (32, 1)
    back = codes.double() * scale.double()
    bound = E4M3_HALF_ULP * x.abs() + E4M3_SUBNORMAL_STEP * scale.double()
    assert ((back - x).abs() <= bound).all()
    # each row's largest magnitude lands on the largest code: the row's whole range is used, whatever its size
    assert torch.equal(codes.double().abs().amax(dim=1), torch.full((32,), E4M3_MAX, dtype=torch.float64))


def test_a_zero_row_stays_zero():
    codes, scale = quantize_rows_plain(torch.zeros(2, 16))
    assert torch.isfinite(scale).all() and (codes.float() == 0).all()


def _linear(k: int, n: int, seed: int) -> nn.Linear:
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=_gen(seed)) / k**0.5)
        lin.bias.copy_(torch.randn(n, generator=_gen(seed + 1)))
    return lin.to(torch.bfloat16)


@pytest.mark.parametrize("gelu", [False, True])
def test_the_layer_computes_the_dequantized_product(gelu):
    lin = _linear(64, 48, seed=1)
    layer = Fp8Linear(lin, gelu_input=gelu)
    x = torch.randn(2, 10, 64, generator=_gen(3)).to(torch.bfloat16)
    got = layer(x)
    assert got.dtype == torch.bfloat16 and got.shape == (2, 10, 48)
    # float64 reference of what the layer must compute from its codes and scales
    xin = x.double().reshape(-1, 64)
    if gelu:
        xin = nn.functional.gelu(xin, approximate="tanh")
    xc, xs = quantize_rows_plain(xin)
    wc, ws = layer.weight_codes.double(), layer.weight_scale.double()
    want = (xc.double() * xs) @ (wc * ws.reshape(-1, 1)).T + lin.bias.double()
    torch.testing.assert_close(got.double().reshape(-1, 48), want, rtol=2**-7, atol=2**-7 * want.abs().max().item())
    # and the quantization costs what E4M3 costs, not more (a wrong or transposed scale would be far off)
    plain = (xin @ lin.weight.double().T + lin.bias.double()).reshape(2, 10, 48)
    rel = (got.double() - plain).norm() / plain.norm()
    assert rel < 0.06, rel


def test_a_float32_layer_is_refused():
    with pytest.raises(Arl2rtError, match="need a bfloat16 or float16 model.*torch.float32"):
        Fp8Linear(nn.Linear(16, 16))


def test_quantize_linears_swaps_the_per_pass_projections_once():
    cfg = micro_config("micro-fp8", num_layers=2, hybrid_layers=(0,))
    model = random_model(cfg, seed=0).to(torch.bfloat16).eval()
    assert quantize_linears(model) == 8 * cfg.num_layers
    for block in model.blocks:
        assert isinstance(block.self_attn.q, Fp8Linear) and isinstance(block.cross_attn.o, Fp8Linear)
        assert isinstance(block.cross_attn.k, nn.Linear)  # text K/V: once per prompt, stays 16-bit
        assert isinstance(block.ffn[1], nn.Identity) and block.ffn[2].gelu_input
    assert quantize_linears(model) == 0  # a second backend on the same model changes nothing


def test_an_fp8_stream_stays_close_to_the_bf16_stream():
    cfg = micro_config("micro-fp8-stream", num_layers=2, hybrid_layers=(0,))
    context = random_context(cfg, seed=1).to(torch.bfloat16)
    streams = {}
    for fp8 in (False, True):
        backend = TorchBackend(random_model(cfg, seed=0), StateSpec(cfg, "bfloat16"), "cpu", fp8=fp8)
        with backend:
            streams[fp8] = Streamer(backend, seed=2).generate(context, 3).double()
    a, b = streams[False].flatten(), streams[True].flatten()
    assert torch.isfinite(b).all() and not torch.equal(a, b)  # the FP8 layers ran
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99


def test_fp8_needs_a_16_bit_spec():
    cfg = micro_config("micro-fp8-f32")
    with pytest.raises(Arl2rtError, match="--fp8 needs --dtype bfloat16 or float16; found float32"):
        TorchBackend(random_model(cfg, seed=0), StateSpec(cfg, "float32"), "cpu", fp8=True)
