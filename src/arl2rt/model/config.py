"""Model configurations as data: built-in presets and JSON files with the same fields."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from arl2rt.errors import Arl2rtError

SAMPLERS = ("renoise", "euler")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a Wan2.1-style causal DiT with ARL2 hybrid layers (docs/arl2.md §1)."""

    name: str
    dim: int
    ffn_dim: int
    num_layers: int
    num_heads: int
    in_channels: int
    out_channels: int
    latent_height: int
    latent_width: int
    text_dim: int
    text_len: int
    hybrid_layers: tuple[int, ...]
    frames_per_block: int = 3
    patch_size: tuple[int, int, int] = (1, 2, 2)
    freq_dim: int = 256
    eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_max_positions: int = 1024
    # Softmax layers: total latent frames a block's queries see (past + current block); -1 = global cache.
    attn_window_frames: int = -1
    sink_frames: int = 0
    # Sampling: flow matching, shifted sigmas; the timesteps a block is denoised at (0..1000, the first is pure noise).
    timesteps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    scheduler_shift: float = 5.0
    warp_timesteps: bool = True
    # Between passes: "renoise" = x0 plus fresh noise (ARL2's few-step distilled students); "euler" = the flow ODE
    # step x + (sigma_next - sigma) v (plain flow-matching models, whose x0 is a blurry mean at high noise).
    sampler: str = "renoise"
    lora_rank: int = 16
    lora_alpha: float = 32.0
    # A small word vocabulary instead of umT5 (the embedded model); 0 = the model takes text embeddings only.
    vocab: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        problems = _field_problems(self)
        if not problems:  # the relations between fields need every field of the right type and range
            problems = _relation_problems(self)
        if problems:
            raise Arl2rtError(f"invalid model config {self.name!r}: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_height // self.patch_size[1]) * (self.latent_width // self.patch_size[2])

    @property
    def tokens_per_block(self) -> int:
        return self.tokens_per_frame * self.frames_per_block

    @property
    def softmax_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_layers) if i not in set(self.hybrid_layers))

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise Arl2rtError(f"{source}: unknown config fields {unknown}; expected a subset of {sorted(names)}")
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in data and _required(f))
        if missing:
            raise Arl2rtError(f"{source}: missing config fields {missing}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        try:
            return cls(**kwargs)
        except Arl2rtError as exc:
            raise Arl2rtError(f"{source}: {exc}") from None


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


# Every field's kind and least value (None: no bound); a config from JSON is checked against these before any
# field is used, so a zero, a negative size or a string where a number belongs is named instead of crashing later.
_INT_MIN = {
    "dim": 1,
    "ffn_dim": 1,
    "num_layers": 1,
    "num_heads": 1,
    "in_channels": 1,
    "out_channels": 1,
    "latent_height": 1,
    "latent_width": 1,
    "text_dim": 1,
    "text_len": 1,
    "frames_per_block": 1,
    "freq_dim": 2,
    "rope_max_positions": 1,
    "attn_window_frames": -1,
    "sink_frames": 0,
    "lora_rank": 1,
}
_POSITIVE_FLOATS = ("eps", "rope_theta", "scheduler_shift")
_FINITE_FLOATS = ("lora_alpha",)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _kind(value: object) -> str:
    return f"{type(value).__name__} {value!r}" if isinstance(value, (str, bool)) else repr(value)


def _field_problems(cfg: ModelConfig) -> list[str]:
    """Type and range of each field on its own: ``field: expected ..., found ...``."""
    problems = []
    for name in ("name", "sampler"):
        if not isinstance(getattr(cfg, name), str):
            problems.append(f"{name}: expected a string, found {_kind(getattr(cfg, name))}")
    for name, least in _INT_MIN.items():
        value = getattr(cfg, name)
        if not _is_int(value) or value < least:
            problems.append(f"{name}: expected an integer >= {least}, found {_kind(value)}")
    if _is_int(cfg.attn_window_frames) and cfg.attn_window_frames == 0:
        problems.append("attn_window_frames: expected -1 (global) or a window >= 1, found 0")
    if _is_int(cfg.freq_dim) and cfg.freq_dim % 2:
        problems.append(f"freq_dim: expected an even integer (cos and sin halves), found {cfg.freq_dim}")
    for name in _POSITIVE_FLOATS:
        value = getattr(cfg, name)
        if not _is_number(value) or value <= 0:
            problems.append(f"{name}: expected a finite number > 0, found {_kind(value)}")
    for name in _FINITE_FLOATS:
        if not _is_number(getattr(cfg, name)):
            problems.append(f"{name}: expected a finite number, found {_kind(getattr(cfg, name))}")
    if not isinstance(cfg.warp_timesteps, bool):
        problems.append(f"warp_timesteps: expected true or false, found {_kind(cfg.warp_timesteps)}")
    sequences = {
        "hybrid_layers": (lambda v: _is_int(v) and v >= 0, "layer indices >= 0", None),
        "patch_size": (lambda v: _is_int(v) and v >= 1, "3 integers >= 1", 3),
        "timesteps": (lambda v: _is_number(v) and 0 < v <= 1000, "numbers in (0, 1000]", None),
        "vocab": (lambda v: isinstance(v, str) and v != "", "non-empty words", None),
    }
    for name, (ok, what, length) in sequences.items():
        value = getattr(cfg, name)
        if (
            not isinstance(value, (tuple, list))
            or (length is not None and len(value) != length)
            or not all(ok(v) for v in value)
        ):
            problems.append(f"{name}: expected a list of {what}, found {_kind(value)}")
    if isinstance(cfg.timesteps, (tuple, list)) and not cfg.timesteps:
        problems.append("timesteps: expected at least one timestep, found none")
    return problems


def _relation_problems(cfg: ModelConfig) -> list[str]:
    problems = []
    if cfg.dim % cfg.num_heads:
        problems.append(f"dim {cfg.dim} is not divisible by num_heads {cfg.num_heads}")
    elif cfg.head_dim < 6:
        problems.append(f"head_dim {cfg.head_dim} too small for 3-D RoPE (needs >= 6)")
    if cfg.head_dim % 2:
        problems.append(f"head_dim {cfg.head_dim} must be even for RoPE")
    bad = [i for i in cfg.hybrid_layers if not 0 <= i < cfg.num_layers]
    if bad:
        problems.append(f"hybrid_layers {bad} outside 0..{cfg.num_layers - 1}")
    ph, pw = cfg.patch_size[1:]
    if cfg.latent_height % ph or cfg.latent_width % pw:
        problems.append(f"latent {cfg.latent_height}x{cfg.latent_width} not divisible by patch {ph}x{pw}")
    if cfg.attn_window_frames != -1 and cfg.attn_window_frames < cfg.frames_per_block + cfg.sink_frames:
        problems.append(
            f"attn_window_frames {cfg.attn_window_frames} must be -1 or >= frames_per_block + sink_frames "
            f"({cfg.frames_per_block + cfg.sink_frames})"
        )
    if cfg.sampler not in SAMPLERS:
        problems.append(f"sampler {cfg.sampler!r} is not one of {list(SAMPLERS)}")
    return problems


PRESETS: dict[str, ModelConfig] = {
    # Test size: runs a block in milliseconds on a CPU; both layer kinds present.
    "tiny": ModelConfig(
        name="tiny",
        dim=64,
        ffn_dim=128,
        num_layers=4,
        num_heads=4,
        in_channels=4,
        out_channels=4,
        latent_height=8,
        latent_width=8,
        text_dim=32,
        text_len=8,
        hybrid_layers=(0, 1, 2),
        frames_per_block=3,
        lora_rank=4,
        lora_alpha=8.0,
    ),
    # Wan2.1-T2V-1.3B with ARL2-75 % (layers 0-21 hybrid), chunk-wise 3 latent frames per block, 480x832.
    "wan2.1-t2v-1.3b": ModelConfig(
        name="wan2.1-t2v-1.3b",
        dim=1536,
        ffn_dim=8960,
        num_layers=30,
        num_heads=12,
        in_channels=16,
        out_channels=16,
        latent_height=60,
        latent_width=104,
        text_dim=4096,
        text_len=512,
        hybrid_layers=tuple(range(22)),
        frames_per_block=3,
    ),
}


def load_config(name_or_path: str | Path) -> ModelConfig:
    """A preset by name, or a JSON file with ModelConfig's fields."""
    key = str(name_or_path)
    if key in PRESETS:
        return PRESETS[key]
    path = Path(key)
    if not path.is_file():
        raise Arl2rtError(f"config {key!r}: not a preset ({', '.join(sorted(PRESETS))}) and no such JSON file")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise Arl2rtError(f"config {path}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise Arl2rtError(f"config {path}: expected a JSON object, found {type(data).__name__}")
    return ModelConfig.from_dict(data, source=str(path))
