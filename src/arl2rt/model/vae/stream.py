"""Streaming decode: one AR block of latents at a time, the causal-conv caches carried as named tensors.

``decode_step(decoder, latents, caches)`` takes ``past_vae.i`` (nothing at the stream's start) and returns the
block's frames and ``present_vae.i``, which the caller feeds back as the next block's ``past_vae.i``
(:func:`as_past`). The first block differs from the rest in more than its inputs: its caches are absent, not zero
(the convs pad with zeros as the official decode does), and its first latent frame decodes to a single video
frame, so it returns ``4T - 3`` frames instead of ``4T``. For export the two cases are two fixed-signature modules,
:class:`FirstBlockDecode` (latents only) and :class:`SteadyBlockDecode` (latents and every cache), each a plain
function of tensors.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from arl2rt.errors import Arl2rtError
from arl2rt.model.vae.caches import PAST_VAE, PRESENT_VAE, VaeCacheSpec, cache_name
from arl2rt.model.vae.decoder import WanVaeDecoder

LATENTS, FRAMES = "latents", "frames"


def decode_step(
    decoder: WanVaeDecoder, latents: torch.Tensor, caches: Mapping[str, torch.Tensor] | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Decode one block ``[B, z_dim, T, h, w]``; ``caches`` are every ``past_vae.i``, or ``None``/empty at the
    stream's start. Returns the frames ``[B, 3, 4T (- 3 for the first block), 8h, 8w]`` and every ``present_vae.i``."""
    specs = decoder.cache_specs()
    check_latents(decoder, latents)
    past = None
    if caches:
        past = check_caches(specs, caches, latents)
    frames, present = decoder.decode(latents, past)
    return frames, {spec.present_name: tensor for spec, tensor in zip(specs, present)}


def as_past(present: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A step's ``present_vae.i`` renamed as the next step's ``past_vae.i``."""
    prefix = PRESENT_VAE + "."
    bad = [name for name in present if not (name.startswith(prefix) and name[len(prefix) :].isdigit())]
    if bad:
        raise Arl2rtError(f"VAE caches {bad}: expected {PRESENT_VAE}.i names")
    return {cache_name(PAST_VAE, int(name[len(prefix) :])): t for name, t in present.items()}


def check_latents(decoder: WanVaeDecoder, latents: torch.Tensor) -> None:
    z_dim = decoder.config.z_dim
    if latents.dim() != 5 or latents.shape[1] != z_dim or latents.shape[2] < 1 or not latents.is_floating_point():
        raise Arl2rtError(
            f"tensor {LATENTS}: expected a float tensor [batch, {z_dim}, frames >= 1, height, width], found "
            f"{latents.dtype} {list(latents.shape)}"
        )


def check_caches(
    specs: tuple[VaeCacheSpec, ...], caches: Mapping[str, torch.Tensor], latents: torch.Tensor
) -> list[torch.Tensor]:
    """The caches in step order, after checking that every name is there and each fits the latents' batch and size."""
    names = [s.past_name for s in specs]
    missing, unknown = [n for n in names if n not in caches], sorted(set(caches) - set(names))
    if missing or unknown:
        parts = [f"missing {missing}" if missing else "", f"unknown {unknown}" if unknown else ""]
        raise Arl2rtError(
            f"VAE caches: expected {PAST_VAE}.0 .. {PAST_VAE}.{len(names) - 1}; " + ", ".join(p for p in parts if p)
        )
    b, _, _, h, w = latents.shape
    first, scale = caches[names[0]], specs[0].scale
    if first.dim() == 5 and tuple(first.shape[3:]) != (scale * h, scale * w):
        raise Arl2rtError(
            f"tensor {LATENTS}: latent size {h}x{w} does not match the stream's caches, made for "
            f"{first.shape[3] // scale}x{first.shape[4] // scale}"
        )
    wrong = [
        f"{s.past_name}: expected {s.dtype} {list(s.shape(b, h, w))}, found {t.dtype} {list(t.shape)}"
        for s, t in ((s, caches[s.past_name]) for s in specs)
        if tuple(t.shape) != s.shape(b, h, w) or t.dtype != s.torch_dtype
    ]
    if wrong:
        raise Arl2rtError(f"VAE caches do not fit latents {list(latents.shape)}: " + "; ".join(wrong))
    return [caches[n] for n in names]


class VaeStream:
    """A Python-side decode loop: keeps the caches between :meth:`decode` calls (one per AR block)."""

    def __init__(self, decoder: WanVaeDecoder) -> None:
        self.decoder = decoder
        self.caches: dict[str, torch.Tensor] | None = None

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        frames, present = decode_step(self.decoder, latents, self.caches)
        self.caches = as_past(present)
        return frames

    def reset(self) -> None:
        self.caches = None


def decode_in_blocks(decoder: WanVaeDecoder, latents: torch.Tensor, block_frames: int) -> torch.Tensor:
    """A whole latent clip decoded as a stream of blocks of ``block_frames`` (the last one may be shorter)."""
    stream = VaeStream(decoder)
    return torch.cat([stream.decode(block) for block in latents.split(block_frames, dim=2)], dim=2)


class FirstBlockDecode(nn.Module):
    """Export form of the stream's first block: ``latents`` -> ``frames``, ``present_vae.0``, ..."""

    def __init__(self, decoder: WanVaeDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def input_names(self) -> list[str]:
        return [LATENTS]

    def output_names(self) -> list[str]:
        return [FRAMES, *(s.present_name for s in self.decoder.cache_specs())]

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, ...]:
        frames, present = self.decoder.decode(latents, None)
        return (frames, *present)


class SteadyBlockDecode(nn.Module):
    """Export form of every later block: ``latents``, ``past_vae.0``, ... -> ``frames``, ``present_vae.0``, ..."""

    def __init__(self, decoder: WanVaeDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def input_names(self) -> list[str]:
        return [LATENTS, *(s.past_name for s in self.decoder.cache_specs())]

    def output_names(self) -> list[str]:
        return [FRAMES, *(s.present_name for s in self.decoder.cache_specs())]

    def forward(self, latents: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        frames, present = self.decoder.decode(latents, list(past))
        return (frames, *present)
