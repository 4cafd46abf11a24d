"""FP8 (E4M3) linear layers for the DiT blocks' large GEMMs: weights per output row, activations per token row.

At Wan2.1-1.3B dims the blocks' GEMMs are ~45 % of an all-hybrid block (benchmarks/results/stream_scaling.md) and
already run near bf16 peak; Hopper's FP8 tensor cores double that peak. :func:`quantize_linears` swaps the
projections every pass runs (self-attention q, k, v, o; cross-attention q, o; both FFN matrices) for
:class:`Fp8Linear`: the weight is stored once as E4M3 with one fp32 scale per output row (amax / 448), each call
quantizes its input per token row the same way (one fused pass on CUDA) and ``torch._scaled_mm`` multiplies with both
scales applied to the fp32 accumulator, bias added, output in the model's 16-bit dtype. Per-row scales on both sides
keep one outlier token or channel from flattening the rest (LongLive's W8A8 recipe on the H100 used the same
granularity). What stays 16-bit: the text K/V projections (once per prompt), the LoRA and head-wise maps (skinny),
the gates, patch embedding and head, the attention itself and the GDN states.

The FFN's GELU moves from the first GEMM's epilogue into the second GEMM's input quantization (the same pass that
reads the hidden activation anyway). docs/performance.md § FP8 says what it changes and what it costs.
"""

from __future__ import annotations

import torch
from torch import nn

from arl2rt.errors import Arl2rtError
from arl2rt.model.fusion import fused

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # largest finite E4M3 value
_TINY = 1e-12  # an all-zero row gets this amax: its scale stays finite and its codes stay zero
FP8_DTYPES = (torch.bfloat16, torch.float16)  # what an FP8 model's activations may be (scaled_mm's outputs)
FP8_DTYPE_NAMES = ("bfloat16", "float16")  # the same, as --dtype names them
MIN_CAPABILITY = (8, 9)  # Ada and Hopper have FP8 tensor cores


def quantize_rows_plain(x: torch.Tensor, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """E4M3 codes of ``x`` ``[M, K]`` and their per-row fp32 scales ``[M, 1]``: ``x ≈ codes * scale``.

    ``gelu``: quantize GELU(tanh)(x) instead (the FFN's activation, applied in fp32)."""
    xf = x.float()
    if gelu:
        xf = torch.nn.functional.gelu(xf, approximate="tanh")
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp_min(_TINY) / E4M3_MAX
    return (xf / scale).to(E4M3), scale


quantize_rows = fused(quantize_rows_plain)  # one kernel on CUDA at inference, the plain body elsewhere


class Fp8Linear(nn.Module):
    """A frozen ``nn.Linear`` as E4M3 weight codes ``[N, K]`` with per-row scales ``[1, N]`` (inference only).

    ``gelu_input``: the layer applies GELU(tanh) to its input first (the FFN's second matrix)."""

    def __init__(self, linear: nn.Linear, gelu_input: bool = False) -> None:
        super().__init__()
        weight = linear.weight.detach()
        if weight.dtype not in FP8_DTYPES:
            raise Arl2rtError(
                f"FP8 linear layers need a bfloat16 or float16 model (scaled_mm's output); found {weight.dtype}"
            )
        codes, scale = quantize_rows_plain(weight)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.gelu_input = gelu_input
        self.register_buffer("weight_codes", codes)  # [N, K]: its transpose is the column-major B scaled_mm wants
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.out_dtype = weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.out_dtype:
            raise Arl2rtError(f"FP8 linear layer of a {self.out_dtype} model got a {x.dtype} input")
        codes, scale = quantize_rows(x.reshape(-1, self.in_features), self.gelu_input)
        out = torch._scaled_mm(
            codes,
            self.weight_codes.t(),
            scale_a=scale,
            scale_b=self.weight_scale,
            bias=self.bias,
            out_dtype=self.out_dtype,
        )
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        gelu = ", gelu_input" if self.gelu_input else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3 row scales{gelu}"


def check_fp8_device(device: torch.device) -> None:
    """FP8 GEMMs need an sm_89+ GPU (or the CPU, where torch emulates them: tests); else a named error."""
    if device.type != "cuda":
        return
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        raise Arl2rtError(
            f"--fp8: {name} is sm_{capability[0]}{capability[1]}; FP8 tensor cores need sm_89 or newer "
            "(Ada, Hopper, Blackwell)"
        )


def quantize_linears(model: nn.Module) -> int:
    """Swap, in place, every DiT block's per-pass projections for :class:`Fp8Linear`; returns how many were swapped
    (layers already FP8 stay as they are).

    The model must already be in its inference dtype (bfloat16 or float16) and on its device."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise Arl2rtError(f"FP8: expected a CausalDiT with .blocks, got {type(model).__name__}")
    swapped = 0
    for block in blocks:
        for attn, names in ((block.self_attn, ("q", "k", "v", "o")), (block.cross_attn, ("q", "o"))):
            for name in names:
                if isinstance(getattr(attn, name), nn.Linear):  # a second backend on the same model: already done
                    setattr(attn, name, Fp8Linear(getattr(attn, name)))
                    swapped += 1
        ffn = block.ffn
        if isinstance(ffn[0], nn.Linear):
            ffn[0], ffn[1], ffn[2] = Fp8Linear(ffn[0]), nn.Identity(), Fp8Linear(ffn[2], gelu_input=True)
            swapped += 2
    return swapped
