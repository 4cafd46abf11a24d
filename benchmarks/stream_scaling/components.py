"""Every component of a block timed alone at the block's shapes, with the model's own modules."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from arl2rt.model.attention import memory_read
from arl2rt.model.layers import attention, attention_with_past
from arl2rt.plugins.gdn.naive import naive_block_read
from arl2rt.plugins.gdn.op import gdn_state_update
from benchmarks._harness import quantiles, time_calls
from benchmarks.stream_scaling.plan import Plan, log
from benchmarks.stream_scaling.workload import (
    STATE_STD,
    build_backend,
    capture_or_eager,
    cudnn_accepts,
    free,
    step_model,
)

ROTATE = 3  # input sets per component timing, so that small inputs do not sit in the 60 MB L2
ROTATE_MAX_BYTES = 256 * 2**20  # above this an input set is far larger than L2: one set
COMPONENT_REPLAYS = 20


def time_op(make, plan: Plan, replays: int = COMPONENT_REPLAYS) -> float:
    """Seconds per call of the op ``make(i)`` returns for input set i (graph of ROTATE calls, median per call)."""
    first = make(0)
    nbytes = getattr(first, "input_bytes", 0)
    sets = 1 if nbytes > ROTATE_MAX_BYTES else ROTATE
    fns = [first] + [make(i) for i in range(1, sets)]

    def run_all():
        return [fn() for fn in fns]

    run_all()  # compile, plan builds
    call, _, _ = capture_or_eager(run_all, plan)
    med = quantiles(time_calls(call, replays, plan.device))[0] / len(fns)
    call.release()
    return med


class Op:
    """A component call on fixed inputs; ``input_bytes`` decides whether input sets rotate."""

    def __init__(self, fn, *inputs: torch.Tensor) -> None:
        self.fn, self.inputs = fn, inputs
        self.input_bytes = sum(t.numel() * t.element_size() for t in inputs)

    def __call__(self):
        return self.fn(*self.inputs)


def measure_components(plan: Plan) -> dict[str, Any]:
    """Seconds per call of every component of a block, alone, at the block's shapes, with the model's own modules."""
    cfg = replace(plan.base, name=f"{plan.base.name}:components", num_layers=2, hybrid_layers=(0,))
    backend = build_backend(cfg, plan)
    model = step_model(backend)
    hyb = model.blocks[0]
    attn = hyb.self_attn
    device, dt = plan.device, backend.spec.config_dtype
    t, dim, h, d, f = cfg.tokens_per_block, cfg.dim, cfg.num_heads, cfg.head_dim, cfg.frames_per_block
    gen = torch.Generator(device).manual_seed(plan.seed + 9)

    def rnd(*shape, dtype=dt):
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    def heads():
        return rnd(1, t, h, d)

    def gdn_inputs():
        k = F.normalize(rnd(1, t, h, d, dtype=torch.float32), dim=-1).to(dt)
        g = 0.5 * F.logsigmoid(rnd(1, t, h, dtype=torch.float32) + 2.0)
        beta = 2.0 * torch.rand(1, t, h, generator=gen, device=device)
        return k, heads(), g, beta, STATE_STD * rnd(1, h, d, d, dtype=torch.float32)

    w32 = attn.a_proj.weight.to(torch.float32)
    makers = {
        "intra": lambda i: Op(attention, heads(), heads(), heads()),
        "text": lambda i: Op(attention, heads(), rnd(1, cfg.text_len, h, d), rnd(1, cfg.text_len, h, d)),
        "gemm_square": lambda i: Op(attn.q, rnd(1, t, dim)),
        "gemm_ffn_up": lambda i: Op(hyb.ffn[0], rnd(1, t, dim)),
        "gemm_ffn_down": lambda i: Op(hyb.ffn[2], rnd(1, t, cfg.ffn_dim)),
        "gemm_lora": lambda i: Op(lambda x: (x @ attn.lora_q_A) @ attn.lora_q_B, rnd(1, t, dim)),
        "gemm_phi": lambda i: Op(attn.phi_q, heads()),
        "gemm_gate": lambda i: Op(attn.gate_proj, rnd(1, t, dim)),
        "gemm_decay_fp32": lambda i: Op(lambda x: F.linear(x, w32), rnd(1, t, dim, dtype=torch.float32)),
        "gemm_patch": lambda i: Op(
            model.patch_embedding, rnd(1, cfg.in_channels, f, cfg.latent_height, cfg.latent_width)
        ),
        "gemm_head": lambda i: Op(model.head.head, rnd(1, t, dim)),
        "read": lambda i: Op(
            memory_read, F.normalize(heads(), dim=-1), STATE_STD * rnd(1, h, d, d, dtype=torch.float32)
        ),
        "read_reference_einsum": lambda i: Op(
            naive_block_read, F.normalize(heads(), dim=-1), STATE_STD * rnd(1, h, d, d, dtype=torch.float32)
        ),
        "write": lambda i: Op(gdn_state_update, *gdn_inputs()),
    }
    seconds: dict[str, float] = {}
    cudnn: dict[str, str] = {}
    with torch.inference_mode():
        for name, make in makers.items():
            seconds[name] = time_op(make, plan)
            log(f"component {name}: {seconds[name] * 1e3:.3f} ms")
        if device.type == "cuda" and plan.sdpa == "cudnn":
            cudnn["intra"] = cudnn_accepts(heads(), heads(), heads())
            cudnn["text"] = cudnn_accepts(heads(), rnd(1, cfg.text_len, h, d), rnd(1, cfg.text_len, h, d))
        cross: dict[int, float] = {}
        for n in plan.softmax_positions():
            past = (1, (n - f) * cfg.tokens_per_frame, h, d)

            def make(i, past=past):
                def run(q, k, v, pk, pv):  # what SoftmaxSelfAttention does after its projections
                    return attention_with_past(q, pk, pv, k, v)

                return Op(run, heads(), heads(), heads(), rnd(*past), rnd(*past))

            cross[n] = time_op(make, plan)
            if device.type == "cuda" and plan.sdpa == "cudnn" and n == max(plan.softmax_positions()):
                cudnn[f"cross at {n} frames"] = cudnn_accepts(
                    heads(), rnd(1, n * cfg.tokens_per_frame, h, d), rnd(1, n * cfg.tokens_per_frame, h, d)
                )
            log(f"component cross-frame at {n} frames: {cross[n] * 1e3:.3f} ms")
            free(device)
    return {"seconds": seconds, "cross_seconds": {str(n): s for n, s in cross.items()}, "cudnn": cudnn}
