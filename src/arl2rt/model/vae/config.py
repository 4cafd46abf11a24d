"""Shape of the Wan2.1 VAE decoder as data, and the per-level plan that both the module and its cache list follow."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from arl2rt.errors import Arl2rtError

# Wan2.1's latent statistics (per channel): the DiT works on (z - mean) / std, the decoder on z.
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass(frozen=True)
class VaeConfig:
    """The Wan2.1 VAE decoder's hyper-parameters (Wan's defaults; a test shrinks ``dim`` and ``z_dim``).

    ``temporal_upsample`` is in decoder order, one flag per level that up-samples: Wan's ``temperal_downsample``
    ``(False, True, True)`` read backwards. Wan2.1 has no attention outside the middle block (``attn_scales = []``),
    so there is no field for it.
    """

    name: str = "wan2.1-vae"
    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_upsample: tuple[bool, ...] = (True, True, False)
    out_channels: int = 3
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD

    def __post_init__(self) -> None:
        problems = []
        if self.dim < 1 or self.z_dim < 1 or self.out_channels < 1:
            problems.append(f"dim, z_dim, out_channels must be >= 1, got {self.dim}, {self.z_dim}, {self.out_channels}")
        if len(self.dim_mult) < 1 or any(m < 1 for m in self.dim_mult):
            problems.append(f"dim_mult must be positive multipliers, got {list(self.dim_mult)}")
        if self.num_res_blocks < 1:
            problems.append(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if len(self.temporal_upsample) != len(self.dim_mult) - 1:
            problems.append(
                f"temporal_upsample needs one flag per up-sampling level ({len(self.dim_mult) - 1}), "
                f"got {len(self.temporal_upsample)}"
            )
        odd = [w for w in self.widths[:-1] if w % 2] if self.dim_mult else []
        if odd:
            problems.append(f"level widths {odd} must be even (each up-sampler halves the channels)")
        for field_name in ("latents_mean", "latents_std"):
            if len(getattr(self, field_name)) != self.z_dim:
                problems.append(f"{field_name} needs z_dim = {self.z_dim} values, got {len(getattr(self, field_name))}")
        if any(s <= 0 for s in self.latents_std):
            problems.append("latents_std must be positive")
        if problems:
            raise Arl2rtError(f"invalid VAE config {self.name!r}: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: object, source: str = "VAE config") -> VaeConfig:
        """The config :meth:`to_dict` wrote (e.g. into a package manifest); a wrong field is named."""
        if not isinstance(data, dict):
            raise Arl2rtError(f"{source}: expected a JSON object of VAE config fields, found {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown, missing = sorted(set(data) - set(names)), [n for n in names if n not in data]
        if unknown or missing:
            raise Arl2rtError(f"{source}: unknown VAE config fields {unknown}, missing {missing}")
        wrong = []
        for name in names:
            value, item = data[name], _LIST_FIELDS.get(name)
            if item is not None:
                ok, want = (
                    isinstance(value, (list, tuple)) and all(_is(v, item) for v in value),
                    f"a list of {item.__name__}",
                )
            else:
                kind = str if name == "name" else int
                ok, want = _is(value, kind), kind.__name__
            if not ok:
                wrong.append(f"{name}: expected {want}, found {value!r}"[:200])
        if wrong:
            raise Arl2rtError(f"{source}: " + "; ".join(wrong))
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        except Arl2rtError as exc:
            raise Arl2rtError(f"{source}: {exc}") from None

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels after the middle block, then at the end of each level (deepest first)."""
        return tuple(self.dim * m for m in (self.dim_mult[-1], *reversed(self.dim_mult)))

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_upsample)

    def frames_out(self, latent_frames: int, *, first: bool) -> int:
        """Video frames a block of ``latent_frames`` decodes to; the stream's first latent frame gives one."""
        return self.temporal_factor * latent_frames - (self.temporal_factor - 1 if first else 0)

    def levels(self) -> tuple[LevelPlan, ...]:
        """The up-sampling levels in order: each one's widths, up-sampler and spatial scale over the latent."""
        plans, scale = [], 1
        for i, out_dim in enumerate(self.widths[1:]):
            in_dim = self.widths[0] if i == 0 else self.widths[i] // 2  # the previous up-sampler halved it
            last = i == len(self.dim_mult) - 1
            up = None if last else ("up3d" if self.temporal_upsample[i] else "up2d")
            plans.append(LevelPlan(i, in_dim, out_dim, self.num_res_blocks + 1, up, scale))
            scale *= 1 if last else 2
        return tuple(plans)


@dataclass(frozen=True)
class LevelPlan:
    """One decoder level: ``res_blocks`` residual blocks (``in_dim`` -> ``out_dim``) at ``scale`` times the latent
    size, then an up-sampler (``up2d``: space x2, ``up3d``: space and time x2, ``None``: the last level)."""

    index: int
    in_dim: int
    out_dim: int
    res_blocks: int
    up: str | None
    scale: int

    def res_in(self, j: int) -> int:
        return self.in_dim if j == 0 else self.out_dim


_LIST_FIELDS = {"dim_mult": int, "temporal_upsample": bool, "latents_mean": float, "latents_std": float}


def _is(value: object, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


WAN21_VAE = VaeConfig()
