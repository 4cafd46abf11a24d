"""Long streams: keep the RoPE time index inside the model's table by re-basing positions, exactly.

The temporal RoPE table holds ``cfg.rope_max_positions`` (1024) latent-frame positions, and the exported step graphs
gather from that very table, so a stream longer than the table must feed them smaller frame offsets. The policy, in
one place (:meth:`RopePositions.before_block`, called by the Streamer before every block):

* While the block fits (``rope_frame + frames_per_block <= rope_max_positions``) the RoPE index is the absolute
  latent-frame index: streams up to the table's length are exactly what the model computes upstream.
* When the next block would run past the table, every position is shifted back by ``shift = rope_frame`` (the block
  starts again at RoPE index 0), and everything the stream has already stored at the old positions is rotated by
  ``-shift`` so that it looks as if it had been made at the new ones:
  - each softmax layer's cached K (RoPE'd at absolute positions; global cache, rolling window and sinks alike);
  - each hybrid layer's GDN state, on its key axis (``S = sum_t decay * k_t u_t^T`` carries the keys' rotation).

Why this is exact (not an approximation): RoPE is an orthogonal rotation ``R(p)`` with ``R(a) R(b) = R(a + b)``, and
every use of a RoPE'd vector in ARL2 is an inner product between two of them: softmax scores ``q.k``, the block read
``q_hat^T S``, and the delta rule's ``S^T k_hat`` and ``k_hat u^T`` (``L2norm`` commutes with a rotation). Rotating
all stored keys by ``R(-shift)`` and feeding ``p - shift`` thereafter therefore changes no score, no read and no
write: the stream continues as it would with an unbounded table (equal up to float rounding; the float64 test checks
1e-10). Relative distances are what the model sees, and they are preserved. Nothing is recomputed from activations:
a global cache is rotated in place (cost: one pass over the cache every ~1024 frames); its oldest keys simply sit at
negative positions. The cost for 16-bit caches is one extra rounding of K per re-base.

Only the time pairs rotate (the first ``rope_split(head_dim)[0]`` complex pairs of a head); height and width
positions never change. Before the first re-base nothing is touched, so a stream within the table is bit-identical to
one run without this module.
"""

from __future__ import annotations

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.model.config import ModelConfig
from arl2rt.model.layers import RopeTables, rope_split
from arl2rt.runtime.state_store import StateStore

# Tokens rotated at a time in a K cache: bounds the float64 scratch of a large (Wan-sized) cache.
_CHUNK_TOKENS = 1 << 14


def time_frequencies(cfg: ModelConfig) -> torch.Tensor:
    """Angular frequency of each time pair (float64 ``[pairs]``): row 1 of the model's own RoPE time table."""
    return RopeTables(cfg.head_dim, 1, 1, cfg.rope_theta, 2).time[1].clone()


def rotate_time_pairs(x: torch.Tensor, dim: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` with its time pairs along ``dim`` rotated by the angles whose cos/sin are given (float64 ``[pairs]``).

    Pairs are adjacent elements ``(2i, 2i+1)``, as :func:`arl2rt.model.layers.apply_rope` lays them out; the rotation
    runs in float64 and is cast back to ``x.dtype``.
    """
    pairs = cos.shape[0]
    xt = x.movedim(dim, -1)
    head = xt[..., : 2 * pairs].to(torch.float64).unflatten(-1, (pairs, 2))
    a, c = head[..., 0], head[..., 1]
    cs, sn = cos.to(x.device), sin.to(x.device)
    rotated = torch.stack([a * cs - c * sn, a * sn + c * cs], dim=-1).flatten(-2).to(x.dtype)
    return torch.cat([rotated, xt[..., 2 * pairs :]], dim=-1).movedim(-1, dim)


class RopePositions:
    """Maps a stream's absolute latent-frame index to the RoPE index fed to the graphs (see the module docstring)."""

    def __init__(self, cfg: ModelConfig) -> None:
        if cfg.frames_per_block > cfg.rope_max_positions:
            raise Arl2rtError(
                f"config {cfg.name}: frames_per_block {cfg.frames_per_block} exceeds the "
                f"{cfg.rope_max_positions}-position RoPE table; one block cannot be positioned"
            )
        self.cfg = cfg
        self.freqs = time_frequencies(cfg)
        assert self.freqs.shape[0] == rope_split(cfg.head_dim)[0]

    def before_block(self, rope_frame: int, store: StateStore) -> int:
        """The RoPE index the next block starts at, given the stream's ``rope_frame``: itself while the block fits the
        table, else 0 after rotating ``store`` back by ``rope_frame`` positions."""
        if rope_frame + self.cfg.frames_per_block <= self.cfg.rope_max_positions:
            return rope_frame
        angles = -rope_frame * self.freqs
        store.rotate_keys(lambda x, dim: rotate_time_pairs(x, dim, angles.cos(), angles.sin()), _CHUNK_TOKENS)
        return 0
