"""Procedural bouncing-balls videos with their prompts, rendered on the fly in torch (CPU or GPU), batched.

1-3 balls of radius ``radius`` px in a ``size`` x ``size`` box on black; colours from the model's vocabulary; speeds
uniform in [min_speed, max_speed] px/frame at the start; walls reflect; balls collide elastically (equal masses)
when their edges come within ``gap`` px, so same-coloured balls never merge into one blob. Pixels are in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arl2rt.model.embedded import COLOURS, MAX_BALLS, parse_prompt

# RGB in [-1, 1]
PALETTE = {
    "red": (1.0, -1.0, -1.0),
    "green": (-1.0, 1.0, -1.0),
    "blue": (-1.0, -1.0, 1.0),
    "yellow": (1.0, 1.0, -1.0),
    "white": (1.0, 1.0, 1.0),
}
BACKGROUND = (-1.0, -1.0, -1.0)
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}


@dataclass(frozen=True)
class BallsConfig:
    size: int = 32
    radius: float = 3.0
    min_speed: float = 0.5
    max_speed: float = 1.5
    gap: float = 1.5  # balls bounce off each other when their edges come this close

    @property
    def bounce_distance(self) -> float:
        return 2 * self.radius + self.gap


def prompt_for(colours: list[str], gen: torch.Generator) -> str:
    """Words for a ball list, colour groups in random order: [red, blue, red] -> "one blue ball and two red balls"."""
    counts: dict[str, int] = {}
    for c in colours:
        counts[c] = counts.get(c, 0) + 1
    groups = list(counts.items())
    order = torch.randperm(len(groups), generator=gen).tolist()
    parts = [f"{NUMBER_WORDS[n]} {c} {'ball' if n == 1 else 'balls'}" for c, n in (groups[i] for i in order)]
    return " and ".join(parts)


def sample_prompts(batch: int, gen: torch.Generator) -> list[str]:
    """Random prompts: 1-3 balls (uniform), colours uniform with replacement."""
    prompts = []
    for _ in range(batch):
        n = int(torch.randint(1, MAX_BALLS + 1, (), generator=gen))
        colours = [COLOURS[int(i)] for i in torch.randint(len(COLOURS), (n,), generator=gen)]
        prompts.append(prompt_for(colours, gen))
    return prompts


def _colour_table(prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per ball slot: RGB ``[B, 3, 3]`` and presence ``[B, 3]`` (slots beyond the prompt's count are absent)."""
    rgb = torch.zeros(len(prompts), MAX_BALLS, 3)
    present = torch.zeros(len(prompts), MAX_BALLS, dtype=torch.bool)
    for b, p in enumerate(prompts):
        for s, c in enumerate(parse_prompt(p)):
            rgb[b, s] = torch.tensor(PALETTE[c])
            present[b, s] = True
    return rgb.to(device), present.to(device)


def _initial_positions(present: torch.Tensor, cfg: BallsConfig, gen: torch.Generator) -> torch.Tensor:
    """Non-overlapping positions ``[B, 3, 2]`` (x, y) by rejection, resampling only the batches that clash."""
    b = present.shape[0]
    lo, hi = cfg.radius, cfg.size - 1 - cfg.radius
    pos = torch.empty(b, MAX_BALLS, 2)
    todo = torch.ones(b, dtype=torch.bool)
    pres = present.cpu()
    for _ in range(1000):
        n = int(todo.sum())
        if n == 0:
            break
        pos[todo] = lo + (hi - lo) * torch.rand(n, MAX_BALLS, 2, generator=gen)
        d = (pos[:, :, None] - pos[:, None]).norm(dim=-1)
        both = pres[:, :, None] & pres[:, None] & ~torch.eye(MAX_BALLS, dtype=torch.bool)
        todo = ((d < cfg.bounce_distance + 1.0) & both).any(-1).any(-1)
    return pos


def simulate(present: torch.Tensor, frames: int, cfg: BallsConfig, gen: torch.Generator) -> torch.Tensor:
    """Ball centres ``[B, frames, 3, 2]`` in pixel units (x = column, y = row)."""
    device = present.device
    b = present.shape[0]
    pos = _initial_positions(present, cfg, gen).to(device)
    angle = 2 * torch.pi * torch.rand(b, MAX_BALLS, generator=gen)
    speed = cfg.min_speed + (cfg.max_speed - cfg.min_speed) * torch.rand(b, MAX_BALLS, generator=gen)
    vel = (torch.stack([angle.cos(), angle.sin()], -1) * speed[..., None]).to(device)
    lo, hi = cfg.radius, cfg.size - 1 - cfg.radius
    out = [pos]
    for _ in range(frames - 1):
        for i in range(MAX_BALLS):
            for j in range(i + 1, MAX_BALLS):
                # elastic exchange of the normal velocity components when the balls would come too close
                rel = pos[:, i] - pos[:, j]
                nxt = rel + vel[:, i] - vel[:, j]
                approaching = (rel * (vel[:, i] - vel[:, j])).sum(-1) < 0
                hit = present[:, i] & present[:, j] & approaching & (nxt.norm(dim=-1) < cfg.bounce_distance)
                n = rel / rel.norm(dim=-1, keepdim=True).clamp_min(1e-6)
                dv = ((vel[:, i] - vel[:, j]) * n).sum(-1, keepdim=True) * n
                dv = torch.where(hit[:, None], dv, torch.zeros_like(dv))
                vel = vel.clone()
                vel[:, i] -= dv
                vel[:, j] += dv
        pos = pos + vel
        low, high = pos < lo, pos > hi
        pos = torch.where(low, 2 * lo - pos, torch.where(high, 2 * hi - pos, pos))
        vel = torch.where(low | high, -vel, vel)
        out.append(pos)
    return torch.stack(out, dim=1)


def render(
    centres: torch.Tensor,
    rgb: torch.Tensor,
    present: torch.Tensor,
    cfg: BallsConfig,
    weight: torch.Tensor | None = None,
    radius: torch.Tensor | None = None,
) -> torch.Tensor:
    """Frames ``[B, 3, F, size, size]`` in [-1, 1]: anti-aliased discs (1 px soft edge) on black.

    ``centres [B, F, S, 2]``, ``rgb [B, S, 3]``, ``present [B, S]`` for S ball slots; ``weight [B, F, S]`` scales each
    ball's opacity per frame (1 = as rendered, 0 = hidden) and ``radius [B]`` replaces ``cfg.radius`` per clip.
    """
    b, f, slots = centres.shape[:3]
    device = centres.device
    grid = torch.arange(cfg.size, device=device, dtype=torch.float32)
    r = torch.full((b,), cfg.radius, device=device) if radius is None else radius.to(device)
    dx = grid[None, None, None, None, :] - centres[..., 0][..., None, None]  # [B, F, S, 1, W]
    dy = grid[None, None, None, :, None] - centres[..., 1][..., None, None]  # [B, F, S, H, 1]
    alpha = (r[:, None, None, None, None] + 0.5 - (dx.square() + dy.square()).sqrt()).clamp(0, 1)  # [B, F, S, H, W]
    alpha = alpha * present[:, None, :, None, None]
    if weight is not None:
        alpha = alpha * weight.to(device)[..., None, None]
    img = torch.tensor(BACKGROUND, device=device).view(1, 1, 3, 1, 1).expand(b, f, 3, cfg.size, cfg.size)
    for s in range(slots):
        a = alpha[:, :, s, None]
        img = img * (1 - a) + rgb[:, None, s, :, None, None] * a
    return img.permute(0, 2, 1, 3, 4).contiguous()


@dataclass(frozen=True)
class Corruption:
    """How :func:`corrupted_context` spoils a clip's context frames, drawn per clip, per ball.

    The kinds of error a free-running model makes and then conditions on: balls drawn dimmer or smaller, a colour
    drifting, a ball missing for a stretch of frames (it vanished in a collision or was never drawn), a ball that
    should not be there. The training target stays the true clip, so the model learns to put them right.
    """

    dim: float = 0.5  # per ball: opacity scaled by U(min_opacity, 1) for the clip, jittered per frame
    min_opacity: float = 0.3
    hide: float = 0.3  # per ball: hidden over a random run of frames
    resize: float = 0.5  # per clip: radius U(radius_range)
    radius_range: tuple[float, float] = (2.2, 3.4)
    recolour: float = 0.3  # per ball: RGB shifted by up to +-colour_shift per channel
    colour_shift: float = 0.25
    extra: float = 0.25  # per clip: one ball of a random colour, absent from the prompt, over a random run of frames


def _random_run(shape, frames: int, gen: torch.Generator) -> torch.Tensor:
    """Masks ``[*shape, frames]``: a run of 1..frames consecutive frames starting anywhere in the clip."""
    start = torch.randint(0, frames, shape, generator=gen)
    length = torch.randint(1, frames + 1, shape, generator=gen)
    f = torch.arange(frames)
    return (f >= start[..., None]) & (f < (start + length)[..., None])


def corrupted_context(
    prompts: list[str],
    centres: torch.Tensor,
    p: float,
    gen: torch.Generator,
    cfg: BallsConfig | None = None,
    spoil: Corruption | None = None,
) -> torch.Tensor:
    """The clip of :func:`make_batch` rendered again with a ``p`` share of its clips spoiled (:class:`Corruption`).

    ``centres [B, F, 3, 2]`` as :func:`make_batch` returns them; clips not drawn for spoiling render exactly as there.
    """
    cfg, spoil = cfg or BallsConfig(), spoil or Corruption()
    device = centres.device
    b, f = centres.shape[:2]
    rgb, present = _colour_table(prompts, device)
    spoiled = torch.rand(b, generator=gen) < p

    def per_ball(prob: float) -> torch.Tensor:  # [B, S] on CPU: this ball of a spoiled clip gets this corruption
        return spoiled[:, None] & (torch.rand(b, MAX_BALLS, generator=gen) < prob)

    opacity = spoil.min_opacity + (1 - spoil.min_opacity) * torch.rand(b, 1, MAX_BALLS, generator=gen)
    opacity = (opacity + 0.1 * torch.randn(b, f, MAX_BALLS, generator=gen)).clamp(0, 1)
    weight = torch.where(per_ball(spoil.dim)[:, None], opacity, torch.ones(b, f, MAX_BALLS))
    hidden = per_ball(spoil.hide)[..., None] & _random_run((b, MAX_BALLS), f, gen)  # [B, S, F]
    weight = weight.masked_fill(hidden.transpose(1, 2), 0.0)
    lo, hi = spoil.radius_range
    resized = spoiled & (torch.rand(b, generator=gen) < spoil.resize)
    radius = torch.where(resized, lo + (hi - lo) * torch.rand(b, generator=gen), torch.full((b,), cfg.radius))
    shift = spoil.colour_shift * (2 * torch.rand(b, MAX_BALLS, 3, generator=gen) - 1)
    rgb = (rgb + torch.where(per_ball(spoil.recolour)[..., None], shift, 0.0).to(device)).clamp(-1, 1)

    # one ball nobody asked for: its own path, a random palette colour, over a random run of frames
    lone = torch.zeros(b, MAX_BALLS, dtype=torch.bool, device=device)
    lone[:, 0] = True
    extra_path = simulate(lone, f, cfg, gen)[:, :, :1]
    colours = torch.tensor(list(PALETTE.values()))
    extra_rgb = colours[torch.randint(len(colours), (b,), generator=gen)][:, None].to(device)
    extra_on = (spoiled & (torch.rand(b, generator=gen) < spoil.extra))[:, None] & _random_run((b,), f, gen)
    return render(
        torch.cat([centres.nan_to_num(0.0), extra_path], dim=2),
        torch.cat([rgb, extra_rgb], dim=1),
        torch.cat([present, torch.ones(b, 1, dtype=torch.bool, device=device)], dim=1),
        cfg,
        weight=torch.cat([weight, extra_on[..., None].float()], dim=2),
        radius=radius,
    )


def make_batch(
    batch: int, frames: int, gen: torch.Generator, device: torch.device | str = "cpu", cfg: BallsConfig | None = None
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Prompts, clips ``[B, 3, frames, size, size]`` and ball centres ``[B, frames, 3, 2]`` (absent slots NaN)."""
    cfg = cfg or BallsConfig()
    prompts = sample_prompts(batch, gen)
    rgb, present = _colour_table(prompts, device)
    centres = simulate(present, frames, cfg, gen)
    clips = render(centres, rgb, present, cfg)
    centres = torch.where(present[:, None, :, None], centres, torch.full_like(centres, float("nan")))
    return prompts, clips, centres
