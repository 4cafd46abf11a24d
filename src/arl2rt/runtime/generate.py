"""Library side of ``arl2rt generate``: build a backend, stream blocks, write the result."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import StateSpec
from arl2rt.model.config import ModelConfig
from arl2rt.model.dit import CausalDiT
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend


@dataclass
class GenerateResult:
    output: Path
    blocks: int
    latent_frames: int
    seconds: float
    state_bytes: dict[str, int]
    backend: str


def random_model(cfg: ModelConfig, seed: int = 0) -> CausalDiT:
    """A model with reproducible random weights (for configs without a checkpoint)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return CausalDiT(cfg)


def random_context(cfg: ModelConfig, seed: int, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, cfg.text_len, cfg.text_dim, generator=torch.Generator().manual_seed(seed))


def generate_latents(
    model: CausalDiT,
    context: torch.Tensor,
    *,
    blocks: int,
    seed: int,
    output: Path,
    backend: str = "torch",
    dtype: str = "float32",
    device: str = "cpu",
    progress=None,
) -> GenerateResult:
    """Stream ``blocks`` AR blocks and write the latents ``[B, C, F, H, W]`` to an ``.npz`` file."""
    if output.suffix != ".npz":
        raise Arl2rtError(f"output {output}: expected a .npz file")
    if backend != "torch":
        raise Arl2rtError(f"backend {backend!r} is not available for generate yet; expected 'torch'")
    spec = StateSpec(model.cfg, dtype)
    start = time.perf_counter()
    with TorchBackend(model, spec, device) as be:
        streamer = Streamer(be, seed=seed, batch=context.shape[0], max_frames=blocks * model.cfg.frames_per_block)
        streamer.start(context)
        parts = []
        for block in streamer.stream(blocks):
            parts.append(block.float().cpu())
            if progress is not None:
                progress()
        latents = torch.cat(parts, dim=2) if parts else torch.empty(0)
        nbytes = streamer.store.nbytes()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".partial.npz")
    np.savez(tmp, latents=latents.numpy())
    tmp.replace(output)
    return GenerateResult(
        output, blocks, latents.shape[2] if parts else 0, time.perf_counter() - start, nbytes, backend
    )
