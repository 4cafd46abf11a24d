"""The two VAE decoders arl2rt streams, Wan2.1's and TAEHV's (``taew2_1``), behind one streaming form.

Both decoders are ``decode(latents, past) -> (frames, present)`` with ``past`` None at the stream's start, both list
their state from their config alone (:func:`decoder_cache_specs`), and both make ``frames_out`` frames of a block,
so the state contract, the export, the backends and the StateStore treat them alike. This module picks between
them: a config by its type (or, in a manifest, its ``kind``), a weights file by its keys.
"""

from __future__ import annotations

from pathlib import Path

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.model.vae import config as wan_config
from arl2rt.model.vae.caches import VaeCacheSpec, cache_specs
from arl2rt.model.vae.checkpoint import decoder_from_tensors as wan_decoder_from_tensors
from arl2rt.model.vae.checkpoint import read_tensors
from arl2rt.model.vae.config import VaeConfig
from arl2rt.model.vae.decoder import WanVaeDecoder
from arl2rt.model.vae.keys import LAYOUTS
from arl2rt.model.vae.keys import key_table as wan_key_table
from arl2rt.model.vae.taehv import config as taehv_config
from arl2rt.model.vae.taehv.checkpoint import decoder_from_tensors as taehv_decoder_from_tensors
from arl2rt.model.vae.taehv.checkpoint import key_table as taehv_key_table
from arl2rt.model.vae.taehv.config import TaehvConfig
from arl2rt.model.vae.taehv.decoder import TaehvDecoder
from arl2rt.model.vae.taehv.memory import memory_specs

VaeDecoderConfig = VaeConfig | TaehvConfig
VaeDecoder = WanVaeDecoder | TaehvDecoder


def decoder_cache_specs(config: VaeDecoderConfig, dtype: torch.dtype | str = "float32") -> tuple[VaeCacheSpec, ...]:
    """The decoder's state tensors in step order: Wan2.1's causal-conv caches or TAEHV's memories."""
    return memory_specs(config, dtype) if isinstance(config, TaehvConfig) else cache_specs(config, dtype)


def config_from_dict(data: object, source: str = "VAE config") -> VaeDecoderConfig:
    """The config a manifest recorded: TAEHV's carries ``kind: taehv``, Wan2.1's (the older one) no kind."""
    if isinstance(data, dict) and "kind" in data:
        return TaehvConfig.from_dict(data, source)
    return VaeConfig.from_dict(data, source)


def load_vae(path: str | Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> VaeDecoder:
    """The decoder a weights file holds, told by its keys: a Wan2.1 VAE (either layout, :data:`WAN21_VAE`'s sizes)
    or a TAEHV decoder (:data:`TAEW2_1`'s sizes). A file of neither is one error naming both."""
    source, tensors = read_tensors(path)
    wan, taehv = wan_config.WAN21_VAE, taehv_config.TAEW2_1  # read now: tests shrink them
    wan_table, taehv_names = wan_key_table(wan), set(taehv_key_table(taehv).values())
    wan_hits = max(len(set(wan_table.names(layout)) & set(tensors)) for layout in LAYOUTS)
    taehv_hits = len(taehv_names & set(tensors))
    wan_share, taehv_share = wan_hits / len(wan_table.rows), taehv_hits / len(taehv_names)
    if max(wan_share, taehv_share) < 0.5:
        sample = ", ".join(sorted(tensors)[:5]) or "no keys at all"
        raise Arl2rtError(
            f"VAE checkpoint {source}: neither a Wan2.1 VAE ({wan_hits} of its {len(wan_table.rows)} decoder keys, "
            f"e.g. decoder.conv1.weight) nor a TAEHV decoder ({taehv_hits} of its {len(taehv_names)} decoder keys, "
            f"e.g. decoder.3.conv.0.weight); its {len(tensors)} keys include {sample}"
        )
    if taehv_share > wan_share:
        return taehv_decoder_from_tensors(tensors, taehv, source, dtype=dtype, device=device)
    return wan_decoder_from_tensors(tensors, wan, source, dtype=dtype, device=device)
