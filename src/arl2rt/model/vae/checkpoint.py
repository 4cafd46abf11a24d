"""Wan2.1 VAE checkpoints in: ``Wan2.1_VAE.pth`` or diffusers' ``AutoencoderKLWan`` weights, decoder keys only.

Files are ``.safetensors``, or torch files (``.pth``/``.pt``/``.bin``) read with ``torch.load(weights_only=True)``,
or a directory holding one of them (a diffusers ``vae/`` folder). The layout is recognised from the keys. Encoder
keys (:data:`~arl2rt.model.vae.keys.ENCODER_PREFIXES`) are skipped; anything else that is wrong (missing, unknown or
mis-shaped keys) is reported together in one :class:`Arl2rtError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from arl2rt.errors import Arl2rtError
from arl2rt.model.torch_files import load_torch_file
from arl2rt.model.vae.config import VaeConfig
from arl2rt.model.vae.decoder import WanVaeDecoder
from arl2rt.model.vae.keys import DIFFUSERS, ENCODER_PREFIXES, LAYOUTS, ORIGINAL, key_table

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
_LIST_AT_MOST = 8  # names shown per problem; the rest are counted


@dataclass
class VaeCheckpoint:
    """A decoder state dict in our names, checked against the config: ready for ``WanVaeDecoder.load_state_dict``."""

    source: str
    layout: str
    state_dict: dict[str, torch.Tensor]
    ignored: int  # encoder-side keys skipped


def read_tensors(path: str | Path) -> tuple[str, dict[str, torch.Tensor]]:
    """The tensors of a VAE weights file (or of the one weights file in a directory), by key."""
    path = Path(path)
    if path.is_dir():
        found = sorted(
            p for p in path.iterdir() if p.is_file() and p.name.endswith((SAFETENSORS_SUFFIX, *TORCH_SUFFIXES))
        )
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise Arl2rtError(f"VAE checkpoint {path}: expected one weights file in the directory, found {names}")
        path = found[0]
    elif not path.is_file():
        raise Arl2rtError(f"VAE checkpoint {path}: no such file or directory")
    if path.name.endswith(SAFETENSORS_SUFFIX):
        try:
            return str(path), load_file(path)
        except SafetensorError as exc:
            raise Arl2rtError(f"VAE checkpoint {path}: not a readable safetensors file ({exc})") from None
    if not path.name.endswith(TORCH_SUFFIXES):
        raise Arl2rtError(
            f"VAE checkpoint {path}: unknown file type; expected {SAFETENSORS_SUFFIX}, {', '.join(TORCH_SUFFIXES)} "
            "or a directory holding one"
        )
    obj = load_torch_file(path, "VAE checkpoint", "a state dict of tensors")
    if not isinstance(obj, dict):
        raise Arl2rtError(f"VAE checkpoint {path}: expected a flat state dict of tensors, found {type(obj).__name__}")
    others = sorted({type(v).__name__ for v in obj.values() if not isinstance(v, torch.Tensor)})
    if others:
        raise Arl2rtError(
            f"VAE checkpoint {path}: expected a flat state dict of tensors, found values of type {others}"
        )
    return str(path), obj


def convert_state_dict(
    tensors: dict[str, torch.Tensor], config: VaeConfig, source: str = "state dict"
) -> VaeCheckpoint:
    """Rename a Wan2.1 VAE state dict of either layout to our decoder's names and check it against ``config``."""
    table = key_table(config)
    hits = {layout: len(set(table.names(layout)) & set(tensors)) for layout in LAYOUTS}
    layout = max(LAYOUTS, key=lambda name: hits[name])
    if 2 * hits[layout] < len(table.rows):  # a few missing keys are reported as such; mostly absent: another model
        sample = ", ".join(sorted(tensors)[:5]) or "no keys at all"
        raise Arl2rtError(
            f"VAE checkpoint {source}: not a Wan2.1 VAE: {hits[layout]} of the {len(table.rows)} decoder keys of "
            f"Wan2.1_VAE.pth (e.g. {table.names(ORIGINAL)[2]}) or of diffusers' AutoencoderKLWan (e.g. "
            f"{table.names(DIFFUSERS)[2]}) are among its {len(tensors)} keys, which include {sample}"
        )
    rename = table.to_ours(layout)
    expected = {k: tuple(v.shape) for k, v in _meta_decoder(config).state_dict().items()}
    problems, state, ignored, unknown = [], {}, 0, []
    for key, value in tensors.items():
        if key in rename:
            state[rename[key]] = value
        elif key.startswith(ENCODER_PREFIXES[layout]):
            ignored += 1
        else:
            unknown.append(key)
    missing = [k for k in table.names(layout) if k not in tensors]
    ours_to_theirs = table.from_ours(layout)
    mismatched = [
        f"{ours_to_theirs[k]}: expected {list(expected[k])}, found {list(v.shape)}"
        for k, v in state.items()
        if tuple(v.shape) != expected[k]
    ]
    for what, items in (("missing key", missing), ("unknown key", unknown), ("shape mismatch", mismatched)):
        if items:
            problems.append(f"{count_of(len(items), what)} ({listed(items)})")
    if problems:
        raise Arl2rtError(
            f"VAE checkpoint {source} ({layout} layout) does not fit VAE config {config.name!r}: " + "; ".join(problems)
        )
    return VaeCheckpoint(source, layout, state, ignored)


def to_layout(state_dict: dict[str, torch.Tensor], config: VaeConfig, layout: str) -> dict[str, torch.Tensor]:
    """Our decoder's state dict under the names of ``layout`` (``original`` or ``diffusers``)."""
    if layout not in LAYOUTS:
        raise Arl2rtError(f"VAE key layout {layout!r}: expected one of {list(LAYOUTS)}")
    rename = key_table(config).from_ours(layout)
    return {rename[k]: v for k, v in state_dict.items()}


def load_decoder(
    path: str | Path,
    config: VaeConfig,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> WanVaeDecoder:
    """A decoder in eval mode with the weights of a Wan2.1 VAE checkpoint (either layout)."""
    source, tensors = read_tensors(path)
    return decoder_from_tensors(tensors, config, source, dtype=dtype, device=device)


def decoder_from_tensors(
    tensors: dict[str, torch.Tensor],
    config: VaeConfig,
    source: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> WanVaeDecoder:
    """:func:`load_decoder` of tensors already read (``source`` names them in errors)."""
    checkpoint = convert_state_dict(tensors, config, source)
    decoder = WanVaeDecoder(config)
    decoder.load_state_dict(checkpoint.state_dict)
    return decoder.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _meta_decoder(config: VaeConfig) -> WanVaeDecoder:
    with torch.device("meta"):
        return WanVaeDecoder(config)


def count_of(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}es" if noun.endswith("ch") else f"{n} {noun}s"


def listed(items: list[str]) -> str:
    """At most ``_LIST_AT_MOST`` items, then how many more: error messages stay one readable line."""
    shown = ", ".join(items[:_LIST_AT_MOST])
    return shown if len(items) <= _LIST_AT_MOST else f"{shown}, ... and {len(items) - _LIST_AT_MOST} more"
