"""Parameter names of the decoder in our module and in the two published layouts, one to one.

* ``original``: Wan-Video's ``Wan2.1_VAE.pth`` (``decoder.conv1``, ``decoder.middle.{0,1,2}``, the levels flattened
  into ``decoder.upsamples.{n}``, ``decoder.head.{0,2}``, and the post-quant conv as top-level ``conv2``).
* ``diffusers``: ``AutoencoderKLWan`` (``decoder.conv_in``, ``decoder.mid_block``, ``decoder.up_blocks.{i}``,
  ``decoder.norm_out``/``conv_out``, ``post_quant_conv``).

The table is built from the config, so it follows ``num_res_blocks`` and ``dim_mult`` rather than fixing Wan's sizes.
Encoder-side keys (:data:`ENCODER_PREFIXES`: the encoder and the pre-quant conv) may be present and are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from arl2rt.model.vae.config import VaeConfig

ORIGINAL, DIFFUSERS = "original", "diffusers"
LAYOUTS = (ORIGINAL, DIFFUSERS)
# What a full VAE checkpoint holds besides the decoder; loading a decoder skips these.
ENCODER_PREFIXES = {ORIGINAL: ("encoder.", "conv1."), DIFFUSERS: ("encoder.", "quant_conv.")}

# parameter suffixes of one residual block / the frame attention: ours -> (original, diffusers)
_RES_PARAMS = {
    "norm1.weight": ("residual.0.gamma", "norm1.gamma"),
    "conv1.weight": ("residual.2.weight", "conv1.weight"),
    "conv1.bias": ("residual.2.bias", "conv1.bias"),
    "norm2.weight": ("residual.3.gamma", "norm2.gamma"),
    "conv2.weight": ("residual.6.weight", "conv2.weight"),
    "conv2.bias": ("residual.6.bias", "conv2.bias"),
}
_SHORTCUT_PARAMS = {
    "shortcut.weight": ("shortcut.weight", "conv_shortcut.weight"),
    "shortcut.bias": ("shortcut.bias", "conv_shortcut.bias"),
}
_ATTN_PARAMS = {
    "norm.weight": ("norm.gamma", "norm.gamma"),
    "qkv.weight": ("to_qkv.weight", "to_qkv.weight"),
    "qkv.bias": ("to_qkv.bias", "to_qkv.bias"),
    "proj.weight": ("proj.weight", "proj.weight"),
    "proj.bias": ("proj.bias", "proj.bias"),
}
_CONV = ("weight", "bias")


@dataclass(frozen=True)
class KeyTable:
    """Our decoder's parameter names and each one's name in every layout."""

    rows: tuple[tuple[str, str, str], ...]  # (ours, original, diffusers)

    def names(self, layout: str) -> tuple[str, ...]:
        if layout == "ours":
            return tuple(r[0] for r in self.rows)
        return tuple(r[1 + LAYOUTS.index(layout)] for r in self.rows)

    def to_ours(self, layout: str) -> dict[str, str]:
        return dict(zip(self.names(layout), self.names("ours")))

    def from_ours(self, layout: str) -> dict[str, str]:
        return dict(zip(self.names("ours"), self.names(layout)))


def key_table(config: VaeConfig) -> KeyTable:
    rows: list[tuple[str, str, str]] = []

    def add(ours: str, original: str, diffusers: str, params: dict[str, tuple[str, str]]) -> None:
        for mine, (orig, diff) in params.items():
            rows.append((f"{ours}.{mine}", f"{original}.{orig}", f"{diffusers}.{diff}"))

    def conv(ours: str, original: str, diffusers: str) -> None:
        add(ours, original, diffusers, {p: (p, p) for p in _CONV})

    def res(ours: str, original: str, diffusers: str, widens: bool) -> None:
        add(ours, original, diffusers, {**_RES_PARAMS, **(_SHORTCUT_PARAMS if widens else {})})

    conv("post_quant", "conv2", "post_quant_conv")
    conv("conv_in", "decoder.conv1", "decoder.conv_in")
    res("mid.res_in", "decoder.middle.0", "decoder.mid_block.resnets.0", False)
    add("mid.attn", "decoder.middle.1", "decoder.mid_block.attentions.0", _ATTN_PARAMS)
    res("mid.res_out", "decoder.middle.2", "decoder.mid_block.resnets.1", False)
    flat = 0  # the original layout numbers residual blocks and up-samplers of all levels in one sequence
    for level in config.levels():
        i = level.index
        for j in range(level.res_blocks):
            widens = level.res_in(j) != level.out_dim
            res(f"levels.{i}.res.{j}", f"decoder.upsamples.{flat}", f"decoder.up_blocks.{i}.resnets.{j}", widens)
            flat += 1
        if level.up is not None:
            ours, orig, diff = f"levels.{i}.up", f"decoder.upsamples.{flat}", f"decoder.up_blocks.{i}.upsamplers.0"
            conv(f"{ours}.conv", f"{orig}.resample.1", f"{diff}.resample.1")
            if level.up == "up3d":
                conv(f"{ours}.time_conv", f"{orig}.time_conv", f"{diff}.time_conv")
            flat += 1
    rows.append(("norm_out.weight", "decoder.head.0.gamma", "decoder.norm_out.gamma"))
    conv("conv_out", "decoder.head.2", "decoder.conv_out")
    return KeyTable(tuple(rows))
