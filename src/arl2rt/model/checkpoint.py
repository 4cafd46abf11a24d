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
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from arl2rt.errors import Arl2rtError, setting
from arl2rt.model.config import ModelConfig
from arl2rt.model.dit import CausalDiT, DiTBlock
from arl2rt.model.torch_files import load_torch_file

TORCH_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
FORMAT_KEY, FORMAT_NAME, CONFIG_KEY = "format", "arl2rt", "arl2rt.config"
# Module wrappers whose names FSDP, activation checkpointing, torch.compile and DataParallel insert into keys.
WRAPPER_NAMES = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod", "module"})
# What a hybrid layer's self_attn has beyond a softmax layer's: write gates and decay, phi maps, memory-path LoRA.
GDN_LORA = tuple(f"lora_{n}_{f}" for n in "qkv" for f in "AB")
ARL2_PARAMS = (
    ("a_proj.weight", "b_proj.weight", "gate_proj.weight", "A_log", "dt_bias")
    + ("phi_q.weight", "phi_k.weight", "phi_v.weight")
    + GDN_LORA
)


@dataclass
class CheckpointTensors:
    """The tensors of one checkpoint file (or shard set) with wrapper and ``model.`` prefixes stripped."""

    source: str
    tensors: dict[str, torch.Tensor]
    config: ModelConfig | None = None  # only our own format carries one


@dataclass
class ConvertedCheckpoint:
    """A checkpoint in deployment form, checked against ``config``: ready for ``CausalDiT.load_state_dict``."""

    source: str
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    merged: list[str] = field(default_factory=list)  # deployment weights produced by merging LoRA factors
    random_arl2_layers: tuple[int, ...] = ()  # hybrid layers given random ARL2 parameters (allow_random_arl2)


@dataclass
class _Problems:
    """Everything wrong with a checkpoint, collected so that one error can list it all."""

    missing: set[str] = field(default_factory=set)
    unexpected: set[str] = field(default_factory=set)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    other: list[str] = field(default_factory=list)

    def shape(self, key: str, expected: tuple[int, ...], found: torch.Size) -> bool:
        """Record a mismatch; True when the shape is right."""
        if tuple(found) != tuple(expected):
            self.mismatched[key] = (tuple(expected), tuple(found))
            return False
        return True

    def raise_if_any(self, source: str) -> None:
        parts = list(self.other)
        for what, keys in (("missing key", self.missing), ("unexpected key", self.unexpected)):
            if keys:
                parts.append(f"{_count(len(keys), what)} ({', '.join(sorted(keys, key=_natural))})")
        if self.mismatched:
            shapes = ", ".join(
                f"{k}: expected {list(e)}, found {list(f)}"
                for k, (e, f) in sorted(self.mismatched.items(), key=lambda kv: _natural(kv[0]))
            )
            parts.append(f"{_count(len(self.mismatched), 'shape mismatch')} ({shapes})")
        if parts:
            raise Arl2rtError(f"checkpoint {source}: " + "; ".join(parts))


def _count(n: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("ch") else "s")
    return f"{n} {noun if n == 1 else plural}"


def _natural(key: str) -> list:
    """Sort ``blocks.10`` after ``blocks.9``."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split(".")]


def canonical_key(key: str) -> str:
    """Drop wrapper components (FSDP, checkpointing, compile, DataParallel) and a leading ``model.``."""
    parts = [p for p in key.split(".") if p not in WRAPPER_NAMES]
    if parts and parts[0] == "model":
        parts = parts[1:]
    return ".".join(parts)


# ---------------------------------------------------------------------------------------------- reading files


def read_checkpoint(path: str | Path, *, use_ema: bool = False) -> CheckpointTensors:
    """Read a ``.pt``/``.pth`` torch checkpoint, a ``.safetensors`` file, a ``*.safetensors.index.json`` shard index,
    or a directory holding exactly one of those. ``use_ema`` picks ``generator_ema`` over ``generator``."""
    path = Path(path)
    if path.is_dir():
        path = _pick_in_dir(path)
    elif not path.is_file():
        raise Arl2rtError(f"checkpoint {path}: no such file or directory")
    name = path.name
    if name.endswith(INDEX_SUFFIX):
        return _read_sharded(path)
    if name.endswith(SAFETENSORS_SUFFIX):
        raw, config = _read_safetensors(path)
        return _canonical(str(path), raw, config)
    if name.endswith(TORCH_SUFFIXES):
        return _canonical(str(path), _read_torch(path, use_ema), None)
    raise Arl2rtError(
        f"checkpoint {path}: unknown file type; expected {', '.join(TORCH_SUFFIXES)}, {SAFETENSORS_SUFFIX}, "
        f"{INDEX_SUFFIX} or a directory holding one"
    )


def _pick_in_dir(folder: Path) -> Path:
    """A shard index wins (its shards are the other safetensors there); else the one weights file."""
    for pattern in (f"*{INDEX_SUFFIX}", f"*{SAFETENSORS_SUFFIX}", "*.pt", "*.pth"):
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if len(found) == 1:
            return found[0]
        if found:
            names = ", ".join(p.name for p in found)
            raise Arl2rtError(f"checkpoint {folder}: expected one {pattern} file, found {len(found)} ({names})")
    raise Arl2rtError(
        f"checkpoint {folder}: no weights found; expected a *{INDEX_SUFFIX}, *{SAFETENSORS_SUFFIX}, *.pt or *.pth"
    )


def _read_torch(path: Path, use_ema: bool) -> dict:
    obj = load_torch_file(path, "checkpoint", "a torch checkpoint of tensors")
    if not isinstance(obj, dict):
        raise Arl2rtError(f"checkpoint {path}: expected a dict of state dicts, found {type(obj).__name__}")
    want, other = ("generator_ema", "generator") if use_ema else ("generator", "generator_ema")
    if want in obj:
        state = obj[want]
    elif other in obj:
        hint = f"drop {setting('--use-ema', 'use_ema')}" if use_ema else f"pass {setting('--use-ema', 'use_ema=True')}"
        raise Arl2rtError(
            f"checkpoint {path}: no {want!r} entry (found {sorted(map(str, obj))}); {hint} to load {other!r}"
        )
    elif not use_ema and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj  # a bare state dict
    else:
        raise Arl2rtError(
            f"checkpoint {path}: expected a {want!r} state dict (Causal Forcing / ARL2 layout), "
            f"found top-level keys {sorted(map(str, obj))[:20]}"
        )
    if not isinstance(state, dict):
        raise Arl2rtError(f"checkpoint {path}: {want!r} should be a state dict, found {type(state).__name__}")
    return state


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig | None]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise Arl2rtError(f"checkpoint {path}: not a readable safetensors file ({exc})") from None
    config = None
    if metadata.get(FORMAT_KEY) == FORMAT_NAME and CONFIG_KEY in metadata:
        try:
            data = json.loads(metadata[CONFIG_KEY])
        except json.JSONDecodeError as exc:
            raise Arl2rtError(f"checkpoint {path}: metadata {CONFIG_KEY!r} is not JSON ({exc})") from None
        config = ModelConfig.from_dict(data, source=f"{path} metadata {CONFIG_KEY!r}")
    return tensors, config


def _read_sharded(index: Path) -> CheckpointTensors:
    try:
        data = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise Arl2rtError(f"checkpoint index {index}: cannot read JSON ({exc})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise Arl2rtError(f"checkpoint index {index}: expected an object with a 'weight_map' of key -> shard file")
    shards: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        shards.setdefault(shard, []).append(key)
    absent = sorted(s for s in shards if not (index.parent / s).is_file())
    if absent:
        raise Arl2rtError(f"checkpoint index {index}: {_count(len(absent), 'shard')} not found ({', '.join(absent)})")
    tensors: dict[str, torch.Tensor] = {}
    for shard, keys in shards.items():
        found, _ = _read_safetensors(index.parent / shard)
        lost = sorted(set(keys) - set(found), key=_natural)
        if lost:
            raise Arl2rtError(
                f"checkpoint shard {index.parent / shard}: {_count(len(lost), 'key')} listed in {index.name} "
                f"not in the shard ({', '.join(lost[:20])}{', ...' if len(lost) > 20 else ''})"
            )
        tensors.update((k, found[k]) for k in keys)
    return _canonical(str(index), tensors, None)


def _canonical(source: str, raw: dict, config: ModelConfig | None) -> CheckpointTensors:
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    problems = _Problems()
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            problems.other.append(f"entry {key!r} is not a floating-point tensor (found {kind})")
            continue
        name = canonical_key(str(key))
        if name in origin:
            problems.other.append(f"keys {origin[name]!r} and {key!r} are the same parameter {name!r}")
            continue
        tensors[name], origin[name] = value, str(key)
    diffusers = sorted(k for k in tensors if k.startswith("condition_embedder.") or ".attn1." in k)
    if diffusers:
        problems.other.append(
            f"diffusers-format Wan keys (e.g. {diffusers[0]}); expected the original Wan2.1 layout "
            "(keys like blocks.0.self_attn.q.weight, as in Wan-AI/Wan2.1-T2V-1.3B)"
        )
    problems.raise_if_any(source)
    return CheckpointTensors(source, tensors, config)


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
    problems = _Problems()
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


def _merge_ffn_lora(sd: dict, cfg: ModelConfig, problems: _Problems, merged: list[str]) -> None:
    """Upstream ``LoRALinear`` (``P.linear.{weight,bias}``, ``P.lora_A``, ``P.lora_B``) -> plain ``P.{weight,bias}``."""
    prefixes = {k.rsplit(".", 1)[0] for k in sd if k.endswith((".lora_A", ".lora_B"))}
    prefixes |= {k.rsplit(".", 2)[0] for k in sd if k.endswith((".linear.weight", ".linear.bias"))}
    for p in sorted(prefixes, key=_natural):
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
