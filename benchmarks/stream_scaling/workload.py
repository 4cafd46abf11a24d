"""What a measurement runs on: the SDPA backend choice, models with random weights, streams with random past
K/V and states, noise, and a block captured as a CUDA graph (or run eagerly where capture fails)."""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections.abc import Callable

import torch

from arl2rt.export.state_spec import StateSpec
from arl2rt.model.config import ModelConfig
from arl2rt.model.layers import attention
from arl2rt.model.random import random_context, random_model
from arl2rt.runtime.cuda_graph import CapturedCall
from arl2rt.runtime.state_store import StateStore
from arl2rt.runtime.torch_backend import TorchBackend
from benchmarks._harness import time_calls
from benchmarks.stream_scaling.plan import Plan, log

STATE_STD = 0.1  # random GDN states: the size of a state after a few blocks of L2-normalised keys


def sdpa_context(choice: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Every SDPA call prefers cuDNN (then flash, mem-efficient, math) unless told otherwise."""
    if device.type != "cuda" or choice == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = {
        "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
        "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
    }[choice] + [SDPBackend.MATH]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # torch without priorities: the default order among the allowed ones
        return sdpa_kernel(order)


def cudnn_accepts(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str:
    """ "yes" if cuDNN's SDPA runs these inputs, else why not (the priority list then falls back)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            attention(q, k, v)
        return "yes"
    except RuntimeError as exc:
        return f"no: {str(exc).splitlines()[0][:160]}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_backend(cfg: ModelConfig, plan: Plan, dtype: str | None = None, seed: int | None = None) -> TorchBackend:
    """Random weights built on the device (fast at 1.3B), LoRA B factors made nonzero so that the LoRA path counts."""
    seed = plan.seed if seed is None else seed
    with torch.device(plan.device):
        model = random_model(cfg, seed)
    gen = torch.Generator(plan.device).manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name and name.endswith("_B"):
                p.normal_(0.0, 0.02, generator=gen)
    return TorchBackend(model, StateSpec(cfg, dtype or plan.dtype), plan.device).activate()


def step_model(backend: TorchBackend):
    return backend.modules["denoise_step"].model


def weight_bytes(backend: TorchBackend) -> int:
    model = step_model(backend)
    return sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))


def encode(backend: TorchBackend, plan: Plan) -> dict[str, torch.Tensor]:
    spec = backend.spec.context()
    context = random_context(backend.spec.config, seed=plan.seed).to(plan.device, spec.torch_dtype)
    return backend.run("encode_context", {"context": context})


def prepared_store(backend: TorchBackend, context_kv: dict, frames: int, seed: int) -> StateStore:
    """A stream about to make the block that ends at latent frame ``frames``: random past K/V and GDN states."""
    spec, cfg, device = backend.spec, backend.spec.config, backend.device
    store = StateStore(spec, 1, device, max_frames=frames)
    store.set_context(context_kv)
    gen = torch.Generator(device).manual_seed(seed)
    for state in store.states.values():
        state.normal_(0.0, STATE_STD, generator=gen)
    shape = (1, cfg.tokens_per_block, cfg.num_heads, cfg.head_dim)
    dtype = spec.config_dtype
    for cache in store.caches.values():
        for _ in range(frames // cfg.frames_per_block - 1):
            k = torch.randn(shape, generator=gen, device=device, dtype=dtype)
            cache.append(k, torch.randn(shape, generator=gen, device=device, dtype=dtype))
    return store


def capture_or_eager(fn, plan: Plan) -> tuple[CapturedCall, float, str]:
    """Capture ``fn`` after one timed warm-up; if a capture fails, time eagerly from then on and say why."""
    device = plan.device
    call = CapturedCall(fn, device)
    if not plan.graphs:
        return call, time_calls(call, 1, device)[0], f"eager ({plan.no_graphs_reason})"
    try:
        warm = call.capture(warmup=1)[0]
        return call, warm, "graph" if call.captured else "eager"
    except RuntimeError as exc:
        call.release()
        sync(device)
        plan.graphs, plan.no_graphs_reason = False, f"capture failed: {str(exc).splitlines()[0][:160]}"
        log("CUDA graphs off for the rest of the run:", plan.no_graphs_reason)
        call = CapturedCall(fn, device)
        return call, time_calls(call, 1, device)[0], f"eager ({plan.no_graphs_reason})"


def noise_pool(spec: StateSpec, device: torch.device, seed: int) -> Callable[[], torch.Tensor]:
    """Latent noise from a fixed pool of one block's worth, in turn: a captured graph holds no random number
    generator (a failed capture cannot leave one half-registered), and every replay does the same work."""
    cfg = spec.config
    gen = torch.Generator(device).manual_seed(seed)
    shape = (1, cfg.in_channels, cfg.frames_per_block, cfg.latent_height, cfg.latent_width)
    io_dtype = spec.velocity().torch_dtype
    pool = itertools.cycle([torch.randn(shape, generator=gen, device=device, dtype=io_dtype) for _ in cfg.timesteps])
    return lambda: next(pool)
