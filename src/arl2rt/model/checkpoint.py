"""Checkpoints in and out: Causal Forcing / ARL2 torch checkpoints, Wan base safetensors, and our own safetensors.

Every source is turned into the DEPLOYMENT form of :class:`~arl2rt.model.dit.CausalDiT` (docs/arl2.md §7):

* Causal Forcing / ARL2 checkpoints are ``torch.save`` pickles holding ``generator`` or ``generator_ema`` (the EMA
  weights, ``use_ema``), keys under ``model.``, possibly wrapped by FSDP / activation checkpointing / torch.compile.
  They are read with ``torch.load(weights_only=True)`` only: a file that needs more than tensors and plain containers
  is refused, since unpickling arbitrary objects can run code.
* The FFN's LoRA is merged: upstream's ``LoRALinear`` (``ffn.0.linear.{weight,bias}``, ``ffn.0.lora_A [in, r]``,
  ``ffn.0.lora_B [r, out]``, computing ``linear(x) + (x @ A) @ B * scale``, scale = alpha / rank) becomes a plain
  ``ffn.0`` with ``W <- W + scale * (A @ B)^T``. The memory path's ``lora_{q,k,v}_{A,B}`` stay factors, as the
  model keeps them (it reuses the shared ``W x``); a hybrid layer saved without them (upstream ``lora_rank = 0``)
  gets zero factors, i.e. the shared q/k/v.
* Wan base weights (``diffusion_pytorch_model.safetensors``, or shards plus ``*.safetensors.index.json``) have no
  ARL2 parameters. Loading them into a config with hybrid layers needs the ARL2 weights as a ``delta`` checkpoint
  laid over the base (its keys win). A base checkpoint alone is refused unless the caller opts in to randomly
  initialised ARL2 parameters (``allow_random_arl2``), which upstream's example command does silently and which does
  not reproduce ARL2 quality.
* Our own format (:func:`save_checkpoint`) is one safetensors file in deployment form with the config JSON in its
  metadata, so it loads without naming a config.

Whatever is wrong with a checkpoint is reported at once, in one :class:`Arl2rtError` that lists every missing,
unexpected and mis-shaped key.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from arl2rt.errors import Arl2rtError, setting
from arl2rt.model.checkpoint_files import (
    CONFIG_KEY,
    FORMAT_KEY,
    FORMAT_NAME,
    SAFETENSORS_SUFFIX,
    CheckpointTensors,
    KeyProblems,
    natural_key,
    read_checkpoint,
)
from arl2rt.model.config import ModelConfig
from arl2rt.model.dit import CausalDiT, DiTBlock

# What a hybrid layer's self_attn has beyond a softmax layer's: write gates and decay, phi maps, memory-path LoRA.
GDN_LORA = tuple(f"lora_{n}_{f}" for n in "qkv" for f in "AB")
ARL2_PARAMS = (
    ("a_proj.weight", "b_proj.weight", "gate_proj.weight", "A_log", "dt_bias")
    + ("phi_q.weight", "phi_k.weight", "phi_v.weight")
    + GDN_LORA
)


@dataclass
class ConvertedCheckpoint:
    """A checkpoint in deployment form, checked against ``config``: ready for ``CausalDiT.load_state_dict``."""

    source: str
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    merged: list[str] = field(default_factory=list)  # deployment weights produced by merging LoRA factors
    random_arl2_layers: tuple[int, ...] = ()  # hybrid layers given random ARL2 parameters (allow_random_arl2)


# -------------------------------------------------------------------------------- conversion to deployment form


def overlay(base: CheckpointTensors, delta: CheckpointTensors) -> CheckpointTensors:
    """``base`` with ``delta``'s tensors laid over it (ARL2 weights on a Wan / Causal Forcing base).

    A delta's ``LoRALinear`` base weight (``ffn.0.linear.weight``) replaces the base's plain ``ffn.0.weight``.
    """
    tensors = dict(base.tensors)
    for key in delta.tensors:
        for leaf in ("weight", "bias"):
            if key.endswith(f".linear.{leaf}"):
                tensors.pop(key[: -len(f"linear.{leaf}")] + leaf, None)
    tensors.update(delta.tensors)
    return CheckpointTensors(f"{base.source} + {delta.source}", tensors, base.config or delta.config)


def to_deployment(
    ckpt: CheckpointTensors, cfg: ModelConfig, *, allow_random_arl2: bool = False, seed: int = 0
) -> ConvertedCheckpoint:
    """Merge the FFN LoRA, fill or refuse absent ARL2 parameters, and check every key and shape against ``cfg``."""
    sd = dict(ckpt.tensors)
    problems = KeyProblems()
    merged: list[str] = []
    expected = _expected_shapes(cfg)
    absent = [i for i in cfg.hybrid_layers if not _has_arl2(sd, i)]
    if absent and not allow_random_arl2:
        every = len(absent) == len(cfg.hybrid_layers)
        looks = ": this looks like a base Wan / Causal Forcing checkpoint" if every else ""
        problems.other.append(
            f"hybrid layers {_ranges(absent)} have no ARL2 parameters (a/b/gate projections, A_log, dt_bias, phi "
            f"maps, LoRA){looks}; give the ARL2 weights as a delta checkpoint ({setting('--delta', 'delta=...')}) "
            f"or opt in to random ARL2 parameters ({setting('--allow-random-arl2', 'allow_random_arl2=True')}), "
            "which does not reproduce ARL2 quality"
        )
    _merge_ffn_lora(sd, cfg, problems, merged)
    for i in set(cfg.hybrid_layers) - set(absent):
        p = f"blocks.{i}.self_attn"
        if not any(f"{p}.{name}" in sd for name in GDN_LORA):  # upstream lora_rank = 0: the shared q/k/v as they are
            for n in "qkv":
                sd[f"{p}.lora_{n}_A"] = torch.zeros(cfg.dim, cfg.lora_rank)
                sd[f"{p}.lora_{n}_B"] = torch.zeros(cfg.lora_rank, cfg.dim)
    random_layers = tuple(absent) if allow_random_arl2 else ()
    if random_layers:
        _fill_random_arl2(sd, cfg, random_layers, seed)
    # a layer without any ARL2 parameter is reported once, above, not as a dozen missing keys
    skip = {f"blocks.{i}.self_attn.{name}" for i in absent for name in ARL2_PARAMS}
    problems.missing.update(k for k in expected if k not in sd and k not in skip)
    problems.unexpected.update(k for k in sd if k not in expected)
    for key in sd.keys() & expected.keys():
        problems.shape(key, expected[key], sd[key].shape)
    problems.raise_if_any(ckpt.source)
    return ConvertedCheckpoint(ckpt.source, cfg, sd, merged, random_layers)


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in CausalDiT(cfg).state_dict().items()}


def _has_arl2(sd: dict, layer: int) -> bool:
    prefix = f"blocks.{layer}.self_attn."
    return any(prefix + p in sd for p in ARL2_PARAMS)


def _ranges(layers: list[int]) -> str:
    spans, start = [], layers[0]
    for prev, cur in zip(layers, layers[1:] + [None]):
        if cur != prev + 1:
            spans.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return "[" + ", ".join(spans) + "]"


def _merged(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """``W + scale * (A @ B)^T``: the ``[out, in]`` weight of ``x -> linear(x) + (x @ A) @ B * scale``.

    Summed in float64 and kept in at least fp32: a bf16 result would round much of the small LoRA delta away.
    """
    return (w.double() + scale * (a.double() @ b.double()).T).to(torch.promote_types(w.dtype, torch.float32))


def _lora_shapes_ok(sd, problems, a_key, b_key, w: torch.Tensor, rank: int) -> bool:
    out_f, in_f = w.shape
    ok_a = problems.shape(a_key, (in_f, rank), sd[a_key].shape)
    ok_b = problems.shape(b_key, (rank, out_f), sd[b_key].shape)
    return ok_a and ok_b


def _merge_ffn_lora(sd: dict, cfg: ModelConfig, problems: KeyProblems, merged: list[str]) -> None:
    """Upstream ``LoRALinear`` (``P.linear.{weight,bias}``, ``P.lora_A``, ``P.lora_B``) -> plain ``P.{weight,bias}``."""
    prefixes = {k.rsplit(".", 1)[0] for k in sd if k.endswith((".lora_A", ".lora_B"))}
    prefixes |= {k.rsplit(".", 2)[0] for k in sd if k.endswith((".linear.weight", ".linear.bias"))}
    for p in sorted(prefixes, key=natural_key):
        for leaf in ("weight", "bias"):
            if f"{p}.linear.{leaf}" in sd:
                if f"{p}.{leaf}" in sd:
                    problems.other.append(f"both {p}.{leaf} and {p}.linear.{leaf} given (one layer, two weights)")
                sd[f"{p}.{leaf}"] = sd.pop(f"{p}.linear.{leaf}")
        a_key, b_key, w_key = f"{p}.lora_A", f"{p}.lora_B", f"{p}.weight"
        if a_key not in sd and b_key not in sd:
            continue
        if a_key not in sd or b_key not in sd:
            problems.missing.add(a_key if a_key not in sd else b_key)
            sd.pop(a_key, None), sd.pop(b_key, None)
            continue
        if w_key not in sd:  # reported as missing by the key check
            sd.pop(a_key), sd.pop(b_key)
            continue
        if _lora_shapes_ok(sd, problems, a_key, b_key, sd[w_key], cfg.lora_rank):
            sd[w_key] = _merged(sd[w_key], sd.pop(a_key), sd.pop(b_key), cfg.lora_scale)
            merged.append(w_key)
        else:
            sd.pop(a_key), sd.pop(b_key)


def _fill_random_arl2(sd: dict, cfg: ModelConfig, layers: tuple[int, ...], seed: int) -> None:
    """What upstream's ``from_teacher`` + ``enable_gdn_lora`` start from: fresh gates, phi = identity, LoRA B = 0.
    Seeded per layer, so two loads give the same model."""
    with torch.random.fork_rng():
        for i in layers:
            torch.manual_seed(seed + i)
            fresh = DiTBlock(cfg, hybrid=True).self_attn.state_dict()
            sd.update((f"blocks.{i}.self_attn.{name}", fresh[name]) for name in ARL2_PARAMS)


# ---------------------------------------------------------------------------------------------- public entry points


def convert_checkpoint(
    path: str | Path,
    cfg: ModelConfig | None = None,
    *,
    delta: str | Path | None = None,
    use_ema: bool = False,
    allow_random_arl2: bool = False,
) -> ConvertedCheckpoint:
    """Read ``path`` (and ``delta`` laid over it) and convert it to the deployment form of ``cfg``.

    ``cfg`` defaults to the config stored in an arl2rt safetensors file; other formats need it.
    """
    ckpt = read_checkpoint(path, use_ema=use_ema)
    if delta is not None:
        ckpt = overlay(ckpt, read_checkpoint(delta, use_ema=use_ema))
    cfg = cfg or ckpt.config
    if cfg is None:
        raise Arl2rtError(
            f"checkpoint {ckpt.source}: holds no arl2rt config; name one ({setting('--config', 'cfg=...')})"
        )
    return to_deployment(ckpt, cfg, allow_random_arl2=allow_random_arl2)


def model_from_state_dict(
    cfg: ModelConfig, state_dict: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32
) -> CausalDiT:
    """A CausalDiT holding copies of ``state_dict`` (deployment form) in ``dtype``, built without a random init."""
    with torch.device("meta"):
        model = CausalDiT(cfg)
    model.load_state_dict({k: v.to(dtype=dtype, copy=True) for k, v in state_dict.items()}, strict=True, assign=True)
    return model


def load_checkpoint(
    path: str | Path,
    cfg: ModelConfig | None = None,
    *,
    delta: str | Path | None = None,
    use_ema: bool = False,
    allow_random_arl2: bool = False,
    dtype: torch.dtype = torch.float32,
) -> CausalDiT:
    """Load a checkpoint of any supported kind (see the module docstring) into a :class:`CausalDiT`.

    Args:
        path: ``.pt``/``.pth`` (Causal Forcing / ARL2), ``.safetensors`` (Wan base or arl2rt), a
            ``*.safetensors.index.json`` shard index, or a directory holding one of those.
        cfg: the model config; optional for arl2rt safetensors, which store theirs (a given one wins).
        delta: ARL2 weights laid over ``path`` (e.g. an ARL2 ``.pt`` over Wan base safetensors).
        use_ema: read ``generator_ema`` instead of ``generator`` from torch checkpoints.
        allow_random_arl2: give hybrid layers without any ARL2 parameters a seeded random init instead of failing.
        dtype: parameter dtype of the returned model.
    """
    converted = convert_checkpoint(path, cfg, delta=delta, use_ema=use_ema, allow_random_arl2=allow_random_arl2)
    return model_from_state_dict(converted.config, converted.state_dict, dtype)


def save_checkpoint(model: CausalDiT, path: str | Path) -> Path:
    """Write ``model`` as arl2rt safetensors (deployment form, config JSON in the metadata); atomic replace."""
    path = Path(path)
    if not path.name.endswith(SAFETENSORS_SUFFIX):
        raise Arl2rtError(f"checkpoint {path}: expected a {SAFETENSORS_SUFFIX} file name")
    if path.is_dir():
        raise Arl2rtError(f"checkpoint {path}: is a directory; expected a file path")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {FORMAT_KEY: FORMAT_NAME, CONFIG_KEY: json.dumps(model.cfg.to_dict())}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
