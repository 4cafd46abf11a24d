"""Model configurations as data: built-in presets and JSON files with the same fields."""

from __future__ import annotations

import dataclasses
import json
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
        problems = []
        if self.dim % self.num_heads:
            problems.append(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        elif self.head_dim < 6:
            problems.append(f"head_dim {self.head_dim} too small for 3-D RoPE (needs >= 6)")
        if self.head_dim % 2:
            problems.append(f"head_dim {self.head_dim} must be even for RoPE")
        bad = [i for i in self.hybrid_layers if not 0 <= i < self.num_layers]
        if bad:
            problems.append(f"hybrid_layers {bad} outside 0..{self.num_layers - 1}")
        if self.frames_per_block < 1:
            problems.append(f"frames_per_block must be >= 1, got {self.frames_per_block}")
        ph, pw = self.patch_size[1:]
        if self.latent_height % ph or self.latent_width % pw:
            problems.append(f"latent {self.latent_height}x{self.latent_width} not divisible by patch {ph}x{pw}")
        if self.attn_window_frames != -1 and self.attn_window_frames < self.frames_per_block + self.sink_frames:
            problems.append(
                f"attn_window_frames {self.attn_window_frames} must be -1 or >= frames_per_block + sink_frames "
                f"({self.frames_per_block + self.sink_frames})"
            )
        if self.sampler not in SAMPLERS:
            problems.append(f"sampler {self.sampler!r} is not one of {list(SAMPLERS)}")
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
        return cls(**kwargs)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


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
