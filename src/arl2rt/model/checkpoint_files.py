"""Reading checkpoint files: Causal Forcing / ARL2 torch pickles (``weights_only``), safetensors (ours carry their
config), sharded safetensors with an index, or a directory holding one; keys canonicalised (wrapper and ``model.``
prefixes dropped). What is wrong with a checkpoint is collected by :class:`KeyProblems` and reported in one error.
:mod:`arl2rt.model.checkpoint` turns what is read here into the deployment form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from arl2rt.errors import Arl2rtError, setting
from arl2rt.model.config import ModelConfig
from arl2rt.model.torch_files import load_torch_file

TORCH_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
FORMAT_KEY, FORMAT_NAME, CONFIG_KEY = "format", "arl2rt", "arl2rt.config"
# Module wrappers whose names FSDP, activation checkpointing, torch.compile and DataParallel insert into keys.
WRAPPER_NAMES = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod", "module"})


@dataclass
class CheckpointTensors:
    """The tensors of one checkpoint file (or shard set) with wrapper and ``model.`` prefixes stripped."""

    source: str
    tensors: dict[str, torch.Tensor]
    config: ModelConfig | None = None  # only our own format carries one


@dataclass
class KeyProblems:
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
                parts.append(f"{count_noun(len(keys), what)} ({', '.join(sorted(keys, key=natural_key))})")
        if self.mismatched:
            shapes = ", ".join(
                f"{k}: expected {list(e)}, found {list(f)}"
                for k, (e, f) in sorted(self.mismatched.items(), key=lambda kv: natural_key(kv[0]))
            )
            parts.append(f"{count_noun(len(self.mismatched), 'shape mismatch')} ({shapes})")
        if parts:
            raise Arl2rtError(f"checkpoint {source}: " + "; ".join(parts))


def count_noun(n: int, noun: str) -> str:
    plural = noun + ("es" if noun.endswith("ch") else "s")
    return f"{n} {noun if n == 1 else plural}"


def natural_key(key: str) -> list:
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
        raise Arl2rtError(
            f"checkpoint index {index}: {count_noun(len(absent), 'shard')} not found ({', '.join(absent)})"
        )
    tensors: dict[str, torch.Tensor] = {}
    for shard, keys in shards.items():
        found, _ = _read_safetensors(index.parent / shard)
        lost = sorted(set(keys) - set(found), key=natural_key)
        if lost:
            raise Arl2rtError(
                f"checkpoint shard {index.parent / shard}: {count_noun(len(lost), 'key')} listed in {index.name} "
                f"not in the shard ({', '.join(lost[:20])}{', ...' if len(lost) > 20 else ''})"
            )
        tensors.update((k, found[k]) for k in keys)
    return _canonical(str(index), tensors, None)


def _canonical(source: str, raw: dict, config: ModelConfig | None) -> CheckpointTensors:
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    problems = KeyProblems()
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
