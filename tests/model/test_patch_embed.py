"""The patch embedding as one GEMM over the patches == the patchifying Conv3d, token order (frame, row, col)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from arl2rt.errors import Arl2rtError
from arl2rt.model.layers import patch_embed


@pytest.mark.parametrize(
    "patch, shape",
    [((1, 2, 2), (2, 16, 3, 6, 8)), ((2, 2, 2), (1, 4, 4, 6, 10)), ((1, 3, 2), (1, 5, 2, 9, 4))],
)
def test_patch_embed_equals_the_conv(patch, shape):
    gen = torch.Generator().manual_seed(sum(shape))
    conv = nn.Conv3d(shape[1], 24, patch, stride=patch).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, dtype=torch.float64))
        conv.bias.copy_(torch.randn(24, generator=gen, dtype=torch.float64))
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    want = conv(x).flatten(2).transpose(1, 2)
    got = patch_embed(conv, x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_latents_that_do_not_tile_into_patches_are_named():
    conv = nn.Conv3d(4, 8, (1, 2, 2), stride=(1, 2, 2))
    with pytest.raises(Arl2rtError, match=r"latents \[1, 4, 3, 5, 8\]: expected .* multiples of the patch \(1, 2, 2\)"):
        patch_embed(conv, torch.randn(1, 4, 3, 5, 8))
