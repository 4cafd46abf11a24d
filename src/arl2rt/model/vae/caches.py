"""The decoder's causal-conv caches as state: one tensor per time-mixing conv, listed from the config alone.

Every conv with a temporal kernel of 3 keeps the last ``CACHE_FRAMES`` frames of its input (in a residual block: its
input after norm and SiLU). Between two AR blocks these are the decoder's whole state: cache ``i`` enters a step as
the i-th past cache and leaves it as the i-th present one, shaped ``[batch, channels, 2, scale * h, scale * w]`` for
a latent of ``h x w``, in the decoder's precision. The list is in the order the decode meets the convs, so the module
(:mod:`arl2rt.model.vae.decoder`) and this list agree by construction: both walk :meth:`VaeConfig.levels`. Caches
are positional here; the state contract (``arl2rt.export.state_spec``) names cache i in a graph's I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.model.vae.config import VaeConfig

CACHE_FRAMES = 2  # a causal kernel of 3 frames needs the 2 before the block
_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class VaeCacheSpec:
    """One cache: its index, the layer (our module path) whose input it holds, channels, scale over the latent, and
    how many frames of that input it keeps (a causal conv of Wan2.1: 2; a TAEHV memory block: 1)."""

    index: int
    module: str
    channels: int
    scale: int
    dtype: str
    frames: int = CACHE_FRAMES

    def shape(self, batch: int, latent_height: int, latent_width: int) -> tuple[int, int, int, int, int]:
        return (batch, self.channels, self.frames, self.scale * latent_height, self.scale * latent_width)

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def nbytes(self, batch: int, latent_height: int, latent_width: int) -> int:
        n = 1
        for d in self.shape(batch, latent_height, latent_width):
            n *= d
        return n * self.torch_dtype.itemsize


def dtype_name(dtype: torch.dtype | str) -> str:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise Arl2rtError(f"VAE precision {dtype!r}: expected one of {sorted(_DTYPES)}")
        return dtype
    for name, dt in _DTYPES.items():
        if dt == dtype:
            return name
    raise Arl2rtError(f"VAE precision {dtype}: expected one of {sorted(_DTYPES)}")


def cache_specs(config: VaeConfig, dtype: torch.dtype | str = "float32") -> tuple[VaeCacheSpec, ...]:
    """Every cache of the decoder in step order (Wan2.1: 32), in precision ``dtype`` (the decoder's weights')."""
    dt = dtype_name(dtype)
    slots: list[tuple[str, int, int]] = [("conv_in", config.z_dim, 1)]
    mid = config.widths[0]
    slots += [(f"mid.{block}.{conv}", mid, 1) for block in ("res_in", "res_out") for conv in ("conv1", "conv2")]
    for level in config.levels():
        for j in range(level.res_blocks):
            slots.append((f"levels.{level.index}.res.{j}.conv1", level.res_in(j), level.scale))
            slots.append((f"levels.{level.index}.res.{j}.conv2", level.out_dim, level.scale))
        if level.up == "up3d":
            slots.append((f"levels.{level.index}.up.time_conv", level.out_dim, level.scale))
    slots.append(("conv_out", config.widths[-1], config.levels()[-1].scale))
    return tuple(VaeCacheSpec(i, module, ch, scale, dt) for i, (module, ch, scale) in enumerate(slots))


def cache_bytes(
    config: VaeConfig, batch: int, latent_height: int, latent_width: int, dtype: torch.dtype | str = "bfloat16"
) -> int:
    """Bytes of all caches of one decode stream (Wan2.1 at 480x832, latent 60x104, bf16: 1.76 GiB per stream)."""
    return sum(s.nbytes(batch, latent_height, latent_width) for s in cache_specs(config, dtype))
