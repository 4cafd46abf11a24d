"""The TAEHV decoder as published (madebyollin/taehv, ``TAEHV.decoder`` and its parallel whole-clip decode), written
out plainly as the oracle our streaming decoder is checked against, and seeded random weights under its key names.

The reference is one ``nn.Sequential`` in the published order, so its state dict has the real ``decoder.N...`` keys,
and it decodes a whole clip at once: every memory block gets its input shifted one frame later in time (zeros in
front), the decoder's output is cut by its first ``4 - 1`` frames and clamped to [0, 1]. It shares no code with
``arl2rt.model.vae.taehv``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arl2rt.model.vae.taehv.config import TaehvConfig

TINY_TAEHV = TaehvConfig(name="taehv-tiny", z_dim=4, widths=(16, 12, 8, 6))  # 4 = the micro DiT's out_channels
LATENT_HW = (4, 6)  # frames of 32 x 48 pixels


class _SoftClamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * torch.tanh(x / 3)


class _Memory(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(2 * c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, before], dim=1)) + x)


class _Grow(nn.Module):
    def __init__(self, c: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(c, c * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return self.conv(x).reshape(n * self.stride, c, h, w)


class ReferenceTaehv(nn.Module):
    """Only the decoder of TAEHV's module (its encoder is not needed to check decoding)."""

    def __init__(self, config: TaehvConfig) -> None:
        super().__init__()
        n_f = config.widths
        layers: list[nn.Module] = [_SoftClamp(), nn.Conv2d(config.z_dim, n_f[0], 3, padding=1), nn.ReLU()]
        for i, stride in enumerate((1, 2, 2)):
            layers += [_Memory(n_f[i]), _Memory(n_f[i]), _Memory(n_f[i])]
            layers += [nn.Upsample(scale_factor=2), _Grow(n_f[i], stride)]
            layers += [nn.Conv2d(n_f[i], n_f[i + 1], 3, padding=1, bias=False)]
        layers += [nn.ReLU(), nn.Conv2d(n_f[3], 3, 3, padding=1)]
        self.decoder = nn.Sequential(*layers)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[N, C, T, h, w]`` -> RGB ``[N, 3, 4T - 3, 8h, 8w]`` in [0, 1], all frames at once."""
        n = latents.shape[0]
        x = latents.transpose(1, 2).flatten(0, 1)
        for layer in self.decoder:
            if isinstance(layer, _Memory):
                frames = x.unflatten(0, (n, -1))
                before = F.pad(frames, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1]
                x = layer(x, before.flatten(0, 1))
            else:
                x = layer(x)
        return x.unflatten(0, (n, -1))[:, 3:].clamp(0, 1).transpose(1, 2)


def random_taehv_state(config: TaehvConfig = TINY_TAEHV, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random decoder weights under TAEHV's key names, scaled so activations neither vanish nor explode and the
    frames spread over [0, 1] (few clamped); biases non-zero so a dropped bias shows. Plus two encoder tensors."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ReferenceTaehv(config).state_dict().items()}
    state = {}
    last = max(int(k.split(".")[1]) for k in shapes)
    for key, shape in shapes.items():
        if key.endswith("bias"):
            state[key] = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            relu_follows = key.endswith(("conv.0.weight", "conv.2.weight")) or key == "decoder.1.weight"
            gain = 2.0 if relu_follows else 0.5 if key.endswith("conv.4.weight") else 1.0  # the residual sum grows
            state[key] = (gain / fan_in) ** 0.5 * torch.randn(shape, generator=g)
    state[f"decoder.{last}.weight"] *= 0.3
    state[f"decoder.{last}.bias"] = 0.5 + 0.05 * torch.randn(shapes[f"decoder.{last}.bias"], generator=g)
    state["encoder.0.weight"] = torch.randn(64, 3, 3, 3, generator=g)
    state["encoder.0.bias"] = torch.randn(64, generator=g)
    return state


def reference_decoder(state: dict[str, torch.Tensor], config: TaehvConfig = TINY_TAEHV) -> ReferenceTaehv:
    ref = ReferenceTaehv(config)
    ref.load_state_dict({k: v for k, v in state.items() if k.startswith("decoder.")})
    return ref.eval().requires_grad_(False)


def random_latents(frames: int, *, batch: int = 1, seed: int = 0, z_dim: int = TINY_TAEHV.z_dim) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 1.5 * torch.randn(batch, z_dim, frames, *LATENT_HW, generator=g)  # some beyond the soft clamp's knee
