"""Shape of the TAEHV decoder as data, and the per-level plan that its module, key table and memory list all follow.

TAEHV's decoder (madebyollin/taehv, ``taew2_1`` for Wan2.1 latents) is a stack of 2-D layers applied frame by frame.
Time mixes in two places only: each *memory block* sees its input's previous frame beside the current one, and each
*time-grow* layer turns one frame into ``stride`` frames (a 1x1 conv whose output channel groups become consecutive
frames). The decoder has three levels, each of three memory blocks, a nearest x2 up-sampling in space, a time-grow
(strides 1, 2, 2: taew2_1 upsamples time x4) and a 3x3 conv to the next width. It reads the DiT's latents as they
are (no latent mean/std), softly clamped to (-3, 3), and makes RGB in [0, 1], which we hand out as [-1, 1] as the
Wan2.1 decoder does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from arl2rt.errors import Arl2rtError

KIND = "taehv"  # the ``kind`` a manifest's VAE config carries (the Wan2.1 VAE's config has none)
MEM_BLOCKS = 3  # memory blocks per level
TIME_STRIDES = (1, 2, 2)  # each level's time-grow: taew2_1's decoder_time_upscale (False, True, True)
LATENT_CLAMP = 3.0  # latents enter as tanh(z / 3) * 3


@dataclass(frozen=True)
class TaehvConfig:
    """The TAEHV decoder's sizes: latent channels and the four widths (``n_f``: each level's, then the last conv's
    input). taew2_1 is the default; a test shrinks the widths and ``z_dim``."""

    name: str = "taew2_1"
    z_dim: int = 16
    widths: tuple[int, int, int, int] = (256, 128, 64, 64)
    out_channels: ClassVar[int] = 3  # RGB, one pixel per output position (taew2_1 has no pixel-shuffle patch)

    def __post_init__(self) -> None:
        problems = []
        if self.z_dim < 1:
            problems.append(f"z_dim must be >= 1, got {self.z_dim}")
        if len(self.widths) != len(TIME_STRIDES) + 1 or any(w < 1 for w in self.widths):
            problems.append(f"widths must be {len(TIME_STRIDES) + 1} positive channel counts, got {list(self.widths)}")
        if problems:
            raise Arl2rtError(f"invalid TAEHV config {self.name!r}: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return {"kind": KIND, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: object, source: str = "TAEHV config") -> TaehvConfig:
        """The config :meth:`to_dict` wrote (e.g. into a package manifest); a wrong field is named."""
        if not isinstance(data, dict):
            raise Arl2rtError(f"{source}: expected a JSON object of TAEHV config fields, found {type(data).__name__}")
        names = ["kind", *(f.name for f in dataclasses.fields(cls))]
        unknown, missing = sorted(set(data) - set(names)), [n for n in names if n not in data]
        if unknown or missing:
            raise Arl2rtError(f"{source}: unknown TAEHV config fields {unknown}, missing {missing}")
        wrong = []
        if data["kind"] != KIND:
            wrong.append(f"kind: expected {KIND!r}, found {data['kind']!r}")
        if not isinstance(data["name"], str):
            wrong.append(f"name: expected str, found {data['name']!r}"[:200])
        if not _is_int(data["z_dim"]):
            wrong.append(f"z_dim: expected int, found {data['z_dim']!r}"[:200])
        if not isinstance(data["widths"], (list, tuple)) or not all(_is_int(w) for w in data["widths"]):
            wrong.append(f"widths: expected a list of int, found {data['widths']!r}"[:200])
        if wrong:
            raise Arl2rtError(f"{source}: " + "; ".join(wrong))
        try:
            return cls(name=data["name"], z_dim=data["z_dim"], widths=tuple(data["widths"]))
        except Arl2rtError as exc:
            raise Arl2rtError(f"{source}: {exc}") from None

    @property
    def spatial_factor(self) -> int:
        return 2 ** len(TIME_STRIDES)

    @property
    def temporal_factor(self) -> int:
        factor = 1
        for stride in TIME_STRIDES:
            factor *= stride
        return factor

    def frames_out(self, latent_frames: int, *, first: bool) -> int:
        """Video frames a block of ``latent_frames`` decodes to. TAEHV drops the first ``temporal_factor - 1``
        frames of a clip, so the stream's first latent frame gives one, as with the Wan2.1 VAE."""
        return self.temporal_factor * latent_frames - (self.temporal_factor - 1 if first else 0)

    def levels(self) -> tuple[TaehvLevel, ...]:
        """The three levels in order: width, the next level's width, space scale and frame rate over the latent's."""
        plans, rate = [], 1
        for i, stride in enumerate(TIME_STRIDES):
            plans.append(TaehvLevel(i, self.widths[i], self.widths[i + 1], 2**i, rate, stride))
            rate *= stride
        return tuple(plans)


@dataclass(frozen=True)
class TaehvLevel:
    """One level: ``MEM_BLOCKS`` memory blocks of ``width`` channels at ``scale`` times the latent size and ``rate``
    frames per latent frame; then space x2, time x ``stride``, and a 3x3 conv to ``out_width``."""

    index: int
    width: int
    out_width: int
    scale: int
    rate: int
    stride: int


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


TAEW2_1 = TaehvConfig()
