"""Streaming decode: one AR block of latents at a time, the decoder's state carried as explicit tensors.

``decode_step(decoder, latents, caches)`` takes the past caches (nothing at the stream's start) in the decoder's
``cache_specs()`` order and returns the block's frames and the present caches, which the caller feeds back, in the
same order, as the next block's past. The decoder is Wan2.1's (its caches: each causal conv's last two input frames)
or TAEHV's (each memory block's last input frame); :mod:`arl2rt.model.vae.kinds` has both. The first block differs
from the rest in more than its inputs: its caches are absent (the decoder starts as its whole-clip decode starts),
and its first latent frame decodes to a single video frame, so it returns ``4T - 3`` frames instead of ``4T``. For
export the two cases are two fixed-signature modules, :class:`FirstBlockDecode` (latents only) and
:class:`SteadyBlockDecode` (latents and every cache), each a plain function of tensors. Caches are positional
throughout: the state contract (``arl2rt.export.state_spec``) names them ``past_vae.i`` / ``present_vae.i`` in the
deployed graphs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from arl2rt.errors import Arl2rtError
from arl2rt.model.vae.caches import VaeCacheSpec
from arl2rt.model.vae.kinds import VaeDecoder


def decode_step(
    decoder: VaeDecoder, latents: torch.Tensor, caches: Sequence[torch.Tensor] | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Decode one block ``[B, z_dim, T, h, w]``; ``caches`` are every past cache in step order, or ``None``/empty at
    the stream's start. Returns the frames ``[B, 3, 4T (- 3 for the first block), 8h, 8w]`` and every present cache."""
    check_latents(decoder, latents)
    past = check_caches(decoder.cache_specs(), caches, latents) if caches else None
    return decoder.decode(latents, past)


def check_latents(decoder: VaeDecoder, latents: torch.Tensor) -> None:
    z_dim = decoder.config.z_dim
    if latents.dim() != 5 or latents.shape[1] != z_dim or latents.shape[2] < 1 or not latents.is_floating_point():
        raise Arl2rtError(
            f"tensor latents: expected a float tensor [batch, {z_dim}, frames >= 1, height, width], found "
            f"{latents.dtype} {list(latents.shape)}"
        )


def check_caches(
    specs: tuple[VaeCacheSpec, ...], caches: Sequence[torch.Tensor], latents: torch.Tensor
) -> list[torch.Tensor]:
    """The caches as a list, after checking that there is one per time-mixing layer and each fits the latents'
    batch and size."""
    if len(caches) != len(specs):
        raise Arl2rtError(
            f"VAE caches: expected {len(specs)} (one per time-mixing layer, in step order), found {len(caches)}"
        )
    b, _, _, h, w = latents.shape
    first, scale = caches[0], specs[0].scale
    if first.dim() == 5 and tuple(first.shape[3:]) != (scale * h, scale * w):
        raise Arl2rtError(
            f"tensor latents: latent size {h}x{w} does not match the stream's caches, made for "
            f"{first.shape[3] // scale}x{first.shape[4] // scale}"
        )
    wrong = [
        f"cache {s.index} ({s.module}): expected {s.dtype} {list(s.shape(b, h, w))}, found {t.dtype} {list(t.shape)}"
        for s, t in zip(specs, caches)
        if tuple(t.shape) != s.shape(b, h, w) or t.dtype != s.torch_dtype
    ]
    if wrong:
        raise Arl2rtError(f"VAE caches do not fit latents {list(latents.shape)}: " + "; ".join(wrong))
    return list(caches)


class VaeStream:
    """A Python-side decode loop: keeps the caches between :meth:`decode` calls (one per AR block)."""

    def __init__(self, decoder: VaeDecoder) -> None:
        self.decoder = decoder
        self.caches: list[torch.Tensor] | None = None

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        frames, self.caches = decode_step(self.decoder, latents, self.caches)
        return frames

    def reset(self) -> None:
        self.caches = None


def decode_in_blocks(decoder: VaeDecoder, latents: torch.Tensor, block_frames: int) -> torch.Tensor:
    """A whole latent clip decoded as a stream of blocks of ``block_frames`` (the last one may be shorter)."""
    stream = VaeStream(decoder)
    return torch.cat([stream.decode(block) for block in latents.split(block_frames, dim=2)], dim=2)


class FirstBlockDecode(nn.Module):
    """Export form of the stream's first block: latents -> frames, then every present cache in step order."""

    def __init__(self, decoder: VaeDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, ...]:
        frames, present = self.decoder.decode(latents, None)
        return (frames, *present)


class SteadyBlockDecode(nn.Module):
    """Export form of every later block: latents, every past cache -> frames, every present cache (step order)."""

    def __init__(self, decoder: VaeDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, latents: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        frames, present = self.decoder.decode(latents, list(past))
        return (frames, *present)
