"""TAEHV checkpoints in (``taew2_1.pth``, or its ``.safetensors`` conversion), decoder keys only.

The file is the state dict of TAEHV's module, whose decoder is one ``nn.Sequential``: its keys are
``decoder.{position}.*``. Position 1 is the first conv (0 and 2 are the latent clamp and a ReLU, with no weights).
Each level then takes six positions: three memory blocks (``decoder.N.conv.{0,2,4}``, their three convs), the
up-sampling (no weights), the time-grow (``decoder.N.conv.weight``) and the conv to the next width
(``decoder.N.weight``). A ReLU and the last conv (``decoder.22``) close it. Encoder keys (``encoder.*``) are skipped;
everything else that is wrong (missing, unknown or mis-shaped keys) is reported together in one :class:`Arl2rtError`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.model.vae.checkpoint import count_of, listed, read_tensors
from arl2rt.model.vae.taehv.config import MEM_BLOCKS, TaehvConfig
from arl2rt.model.vae.taehv.decoder import TaehvDecoder

ENCODER_PREFIX = "encoder."
_FIRST_LEVEL = 3  # Sequential positions before the first level: clamp, conv, ReLU
_PER_LEVEL = MEM_BLOCKS + 3  # memory blocks, up-sampling, time-grow, conv
_MEM_CONVS = {"conv1": "conv.0", "conv2": "conv.2", "conv3": "conv.4"}  # ours -> the block's Sequential


def key_table(config: TaehvConfig) -> dict[str, str]:
    """Our decoder's parameter names -> their names in a TAEHV file, in decode order."""
    table = {f"conv_in.{p}": f"decoder.1.{p}" for p in ("weight", "bias")}
    for level in config.levels():
        base = _FIRST_LEVEL + level.index * _PER_LEVEL
        for j in range(MEM_BLOCKS):
            for ours, theirs in _MEM_CONVS.items():
                for p in ("weight", "bias"):
                    table[f"levels.{level.index}.mem.{j}.{ours}.{p}"] = f"decoder.{base + j}.{theirs}.{p}"
        table[f"levels.{level.index}.grow.conv.weight"] = f"decoder.{base + MEM_BLOCKS + 1}.conv.weight"
        table[f"levels.{level.index}.proj.weight"] = f"decoder.{base + MEM_BLOCKS + 2}.weight"
    last = _FIRST_LEVEL + len(config.levels()) * _PER_LEVEL + 1  # after the closing ReLU
    table.update({f"conv_out.{p}": f"decoder.{last}.{p}" for p in ("weight", "bias")})
    return table


def convert_state_dict(
    tensors: dict[str, torch.Tensor], config: TaehvConfig, source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """A TAEHV state dict renamed to our decoder's names, checked against ``config``."""
    table = key_table(config)
    theirs_to_ours = {theirs: ours for ours, theirs in table.items()}
    hits = len(set(theirs_to_ours) & set(tensors))
    if 2 * hits < len(table):  # a few missing keys are reported as such; mostly absent: another model
        sample = ", ".join(sorted(tensors)[:5]) or "no keys at all"
        raise Arl2rtError(
            f"VAE checkpoint {source}: not a TAEHV decoder: {hits} of the {len(table)} decoder keys of "
            f"taew2_1.pth (e.g. {table['levels.0.mem.0.conv1.weight']}) are among its {len(tensors)} keys, which "
            f"include {sample}"
        )
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in TaehvDecoder(config).state_dict().items()}
    state, unknown = {}, []
    for key, value in tensors.items():
        if key in theirs_to_ours:
            state[theirs_to_ours[key]] = value
        elif not key.startswith(ENCODER_PREFIX):
            unknown.append(key)
    missing = [theirs for theirs in theirs_to_ours if theirs not in tensors]
    mismatched = [
        f"{table[k]}: expected {list(expected[k])}, found {list(v.shape)}"
        for k, v in state.items()
        if tuple(v.shape) != expected[k]
    ]
    problems = []
    latent_in = state.get("conv_in.weight")
    if latent_in is not None and latent_in.dim() == 4 and latent_in.shape[1] != config.z_dim:
        problems.append(f"it decodes {latent_in.shape[1]}-channel latents, the config {config.z_dim}-channel ones")
    for what, items in (("missing key", missing), ("unknown key", unknown), ("shape mismatch", mismatched)):
        if items:
            problems.append(f"{count_of(len(items), what)} ({listed(items)})")
    if problems:
        raise Arl2rtError(
            f"VAE checkpoint {source} (TAEHV) does not fit TAEHV config {config.name!r}: " + "; ".join(problems)
        )
    return state


def decoder_from_tensors(
    tensors: dict[str, torch.Tensor],
    config: TaehvConfig,
    source: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> TaehvDecoder:
    """A decoder in eval mode with the weights of a TAEHV state dict (``source`` names it in errors)."""
    decoder = TaehvDecoder(config)
    decoder.load_state_dict(convert_state_dict(tensors, config, source))
    return decoder.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_taehv_decoder(
    path: str | Path,
    config: TaehvConfig,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> TaehvDecoder:
    """A decoder with the weights of a TAEHV file (``.pth``/``.pt``/``.bin`` or ``.safetensors``)."""
    source, tensors = read_tensors(path)
    return decoder_from_tensors(tensors, config, source, dtype=dtype, device=device)
