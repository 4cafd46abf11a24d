"""The timed path checked against float64: one block of a 2-layer model at the real dims, and each GDN kernel
alone."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from arl2rt.export.state_spec import StateSpec
from arl2rt.model.attention import memory_read
from arl2rt.plugins.gdn.naive import naive_block_read
from arl2rt.plugins.gdn.op import gdn_state_update
from arl2rt.runtime.cuda_graph import StaticBlock
from benchmarks._harness import rel_rms
from benchmarks.stream_scaling.plan import Plan
from benchmarks.stream_scaling.workload import (
    STATE_STD,
    build_backend,
    capture_or_eager,
    encode,
    free,
    noise_pool,
    prepared_store,
)


def check_path(plan: Plan) -> dict[str, Any]:
    """A 2-layer model at the real dims (layer 0 hybrid, layer 1 softmax, one past block) runs the benchmark's exact
    path (StaticBlock, CUDA graph, cuDNN SDPA, Triton read and write) in ``plan.dtype``, against the same weights,
    noise, states and caches in float64 (reference ops). Also each GDN kernel alone vs float64."""
    cfg = replace(plan.base, name=f"{plan.base.name}:check", num_layers=2, hybrid_layers=(0,))
    f, device = plan.f, plan.device
    fast = build_backend(cfg, plan)
    exact = build_backend(cfg, plan, dtype="float64")
    stores = [prepared_store(be, encode(be, plan), 2 * f, plan.seed + 5) for be in (fast, exact)]
    # same past for both: the float64 store gets the fast store's (already rounded) K/V and states
    for name, state in stores[0].states.items():
        stores[1].states[name].copy_(state)
    for i, cache in stores[0].caches.items():
        stores[1].caches[i].key.copy_(cache.key)
        stores[1].caches[i].value.copy_(cache.value)
    noise = noise_pool(fast.spec, device, plan.seed + 6)
    pool = [noise() for _ in cfg.timesteps]  # one cycle of it, for the float64 run
    exact_noise = itertools.cycle([n.double() for n in pool])
    blocks = [StaticBlock(fast, stores[0], f, noise=noise), StaticBlock(exact, stores[1], f, exact_noise.__next__)]
    eager = {k: v.clone() for k, v in blocks[0]().items()}
    call, _, mode = capture_or_eager(blocks[0], plan)
    replayed = call()
    reference = blocks[1]()
    result: dict[str, Any] = {"mode": mode, "dtype": plan.dtype}
    result["replay_vs_eager_max_abs"] = max(float((replayed[k] - eager[k]).abs().max()) for k in eager)
    result["rel_rms_vs_float64"] = {k: rel_rms(replayed[k], reference[k]) for k in reference}
    call.release()
    # the two GDN kernels alone, at the block's shapes
    t, h, d = cfg.tokens_per_block, cfg.num_heads, cfg.head_dim
    dt = StateSpec(cfg, plan.dtype).config_dtype
    gen = torch.Generator(device).manual_seed(plan.seed + 7)
    q = F.normalize(torch.randn(1, t, h, d, generator=gen, device=device), dim=-1)
    k = F.normalize(torch.randn(1, t, h, d, generator=gen, device=device), dim=-1)
    v = torch.randn(1, t, h, d, generator=gen, device=device)
    g = 0.5 * F.logsigmoid(torch.randn(1, t, h, generator=gen, device=device) + 2.0)
    beta = 2.0 * torch.rand(1, t, h, generator=gen, device=device)
    s0 = STATE_STD * torch.randn(1, h, d, d, generator=gen, device=device)
    result["gdn_read_rel_rms"] = rel_rms(memory_read(q.to(dt), s0), naive_block_read(q.to(dt).double(), s0.double()))
    ref_state = gdn_state_update(k.to(dt).double(), v.to(dt).double(), g.double(), beta.double(), s0.double())
    result["gdn_write_rel_rms"] = rel_rms(gdn_state_update(k.to(dt), v.to(dt), g, beta, s0), ref_state)
    del fast, exact, stores, blocks, call
    free(device)
    return result
