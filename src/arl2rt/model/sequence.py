"""Full-clip forward of :class:`~arl2rt.model.dit.CausalDiT` for training: every AR block in one call.

The streaming step (``CausalDiT.step``) runs one block against explicit states; training wants all blocks of a clip at
once with the same causality. This module runs the model's own modules over a whole clip:

* :func:`clip_forward` (diffusion forcing / clean clip): block j's softmax-layer queries see blocks <= j (inside the
  config's rolling window and sink frames, exactly as the runtime's KV cache keeps them); hybrid layers attend inside
  the block and read the GDN state written by blocks < j. Timesteps are per frame. At t = 0 this equals the streamed
  commit passes block by block.
* :func:`teacher_forcing_forward` (ARL2 training): sequence ``[clean clip ‖ noisy clip]``; noisy block i sees the
  softmax K/V of clean blocks < i plus its own noisy block, and reads the GDN state built from clean blocks < i only.
  States are written from clean tokens only; nothing of the noisy half reaches the clean half.

The GDN write is differentiable: it uses the pure-torch chunked reference
(:func:`~arl2rt.plugins.gdn.naive.naive_chunk_gated_delta_rule_state`), not the ``arl2::gdn_state_update`` custom op,
which has no autograd formula. All blocks' writes run as one batched call: the delta rule is affine in each value column
of the state, so running it per block from ``[I | 0]`` with values ``[0 | v]`` gives the block's transition ``A`` and
input ``B`` (``S_next = A S + B``); a scan over blocks then chains them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arl2rt.errors import Arl2rtError
from arl2rt.model.attention import gated_sum
from arl2rt.model.dit import CausalDiT, DiTBlock, gated_add, norm_modulate
from arl2rt.model.layers import accum_dtype, attention, patch_embed, sinusoidal_embedding
from arl2rt.plugins.gdn.naive import naive_block_read, naive_chunk_gated_delta_rule_state


def clip_forward(
    model: CausalDiT,
    x: torch.Tensor,
    t: torch.Tensor,
    context_kv: list[tuple[torch.Tensor, torch.Tensor]],
    frame_offset: int = 0,
) -> torch.Tensor:
    """Velocity of every frame of a clip, all AR blocks at once (diffusion forcing).

    Args:
        model: the DiT whose modules and parameters are used.
        x: latents ``[B, C, F, H, W]``, F a multiple of ``frames_per_block``.
        t: timestep per frame ``[B, F]`` (0 = clean).
        context_kv: per-layer text K/V from ``model.encode_context``.
        frame_offset: absolute index of the clip's first frame (RoPE time position).

    Returns:
        the velocity ``[B, C_out, F, H, W]``.
    """
    return _forward(model, x, t, None, None, context_kv, frame_offset)[0]


def teacher_forcing_forward(
    model: CausalDiT,
    clean: torch.Tensor,
    noisy: torch.Tensor,
    t_noisy: torch.Tensor,
    context_kv: list[tuple[torch.Tensor, torch.Tensor]],
    frame_offset: int = 0,
) -> torch.Tensor:
    """Velocity of the noisy half of ``[clean clip ‖ noisy clip]``, as ARL2 trains.

    Args:
        clean: the clean clip ``[B, C, F, H, W]`` (its frames are run at t = 0).
        noisy: the same clip noised ``[B, C, F, H, W]``.
        t_noisy: timestep per noisy frame ``[B, F]``.
        context_kv, frame_offset: as in :func:`clip_forward`; noisy frame f has the RoPE position of clean frame f.

    Returns:
        the velocity of the noisy frames ``[B, C_out, F, H, W]``.
    """
    if noisy.shape != clean.shape:
        raise Arl2rtError(f"teacher forcing: noisy clip {list(noisy.shape)} must match clean clip {list(clean.shape)}")
    t_clean = torch.zeros_like(t_noisy)
    return _forward(model, clean, t_clean, noisy, t_noisy, context_kv, frame_offset)[1]


def _check(model: CausalDiT, x: torch.Tensor, t: torch.Tensor, frame_offset: int) -> None:
    cfg = model.cfg
    want = (cfg.in_channels, cfg.latent_height, cfg.latent_width)
    if x.dim() != 5 or (x.shape[1], x.shape[3], x.shape[4]) != want:
        raise Arl2rtError(f"clip: expected latents [B, {want[0]}, F, {want[1]}, {want[2]}], found {list(x.shape)}")
    frames = x.shape[2]
    if frames == 0 or frames % cfg.frames_per_block:
        raise Arl2rtError(f"clip: expected a positive multiple of {cfg.frames_per_block} frames, found {frames}")
    if tuple(t.shape) != (x.shape[0], frames):
        raise Arl2rtError(f"clip: expected timesteps [{x.shape[0]}, {frames}], found {list(t.shape)}")
    if not 0 <= frame_offset <= cfg.rope_max_positions - frames:
        raise Arl2rtError(
            f"clip: frame offset {frame_offset} + {frames} frames exceeds the {cfg.rope_max_positions}-position "
            "RoPE table"
        )


def _forward(model, clean, t_clean, noisy, t_noisy, context_kv, frame_offset):
    cfg = model.cfg
    _check(model, clean, t_clean, frame_offset)
    if noisy is not None:
        _check(model, noisy, t_noisy, frame_offset)
    halves = [clean] if noisy is None else [clean, noisy]
    b, _, frames, hh, ww = clean.shape
    acc = accum_dtype(model.dtype)
    # Tokens of each half in (frame, row, col) order, halves one after the other; noisy frame f shares f's position.
    tokens = torch.cat([patch_embed(model.patch_embedding, h.to(model.dtype)) for h in halves], dim=1)
    t_all = torch.cat([t_clean] if noisy is None else [t_clean, t_noisy], dim=1)
    e = model.time_embedding(sinusoidal_embedding(t_all.to(acc), cfg.freq_dim).to(model.dtype)).to(acc)
    e0 = model.time_projection(e.to(model.dtype)).to(acc).unflatten(-1, (6, cfg.dim))
    cos, sin = model.rope.cos_sin(frame_offset, frames // cfg.patch_size[0], acc, clean.device)
    cos, sin = cos.repeat(len(halves), 1), sin.repeat(len(halves), 1)
    num_blocks = frames // cfg.frames_per_block
    mask = None
    if cfg.softmax_layers:
        mask = _softmax_mask(cfg, num_blocks, len(halves) == 2, clean.device)
    clean_len = tokens.shape[1] // len(halves)

    for i, blk in enumerate(model.blocks):
        tokens = _layer(blk, tokens, e0, cos, sin, context_kv[i], mask, num_blocks, clean_len)
    out = model.head(tokens, e)
    v_clean = _unpatchify(cfg, out[:, :clean_len], b, frames, hh, ww)
    v_noisy = _unpatchify(cfg, out[:, clean_len:], b, frames, hh, ww) if noisy is not None else None
    return v_clean, v_noisy


def _layer(blk: DiTBlock, x, e, cos, sin, context_kv, mask, num_blocks, clean_len):
    """One DiT layer over the whole sequence; the same composition as ``DiTBlock.forward`` with sequence attention."""
    frames = e.shape[1]
    e = (blk.modulation.to(e.dtype)[:, None] + e).unbind(2)
    y_in = norm_modulate(x, e[0], e[1], frames, blk.norm1.eps)
    if blk.hybrid:
        y = _hybrid_attention(blk.self_attn, y_in, cos, sin, num_blocks, clean_len)
    else:
        y = _softmax_attention(blk.self_attn, y_in, cos, sin, mask)
    x = gated_add(x, y, e[2], frames)
    x = x + blk.cross_attn(blk.norm3(x), *context_kv)
    return gated_add(x, blk.ffn(norm_modulate(x, e[3], e[4], frames, blk.norm2.eps)), e[5], frames)


def _softmax_attention(attn, x, cos, sin, mask):
    q, k, v = attn.qkv(x, cos, sin)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return attn.o(out.transpose(1, 2).flatten(2))


def _hybrid_attention(attn, x, cos, sin, num_blocks, clean_len):
    """Intra-block softmax + block-level read of the state built from the clean blocks before each block.

    The projections are those of ``HybridSelfAttention.forward`` (shared q/k/v, LoRA delta on the memory path);
    only the grouping differs: all blocks at once, each reading its own pre-update state.
    """
    q_proj, k_proj, v_proj = attn.q(x), attn.k(x), attn.v(x)
    q, k = attn.rope_qk(q_proj, k_proj, cos, sin)
    q_mem = attn.memory_query(x, cos, sin, q_proj)
    blocks = x.shape[1] // (clean_len // num_blocks)  # blocks of the whole sequence (both halves)

    def per_block(t: torch.Tensor) -> torch.Tensor:  # [B, L, ...] -> [B * blocks, L_block, ...]
        return t.unflatten(1, (blocks, -1)).flatten(0, 1)

    def sequence(t: torch.Tensor) -> torch.Tensor:  # [B * blocks, L_block, ...] -> [B, L, ...]
        return t.unflatten(0, (x.shape[0], blocks)).flatten(1, 2)

    o_intra = attention(per_block(q), per_block(k), per_block(attn.heads(v_proj)))
    c = slice(0, clean_len)
    states = _block_states(*attn.write_inputs(x[:, c], k_proj[:, c], v_proj[:, c], cos[c], sin[c]), num_blocks)
    states = states.repeat(1, blocks // num_blocks, 1, 1, 1).flatten(0, 1)  # clean and noisy block j read S_j
    o_inter = naive_block_read(per_block(q_mem), states)
    return attn.o(gated_sum(sequence(o_intra), attn.gate_proj(x), sequence(o_inter)).flatten(2))


def _block_states(k, v, g, beta, num_blocks: int) -> torch.Tensor:
    """Pre-update GDN state of every block ``[B, blocks, H, K, V]``: zeros for block 0, then after blocks < j.

    k ``[B, T, H, K]``, v ``[B, T, H, V]``, g, beta ``[B, T, H]``, T = blocks x tokens per block.
    """
    b, _, h, dk = k.shape
    dv = v.shape[-1]
    with torch.autocast(k.device.type, enabled=False):  # the state is fp32 (float64 for a float64 model) by contract
        dt = torch.float64 if k.dtype == torch.float64 else torch.float32
        k, v, g, beta = k.to(dt), v.to(dt), g.to(dt), beta.to(dt)
        state = k.new_zeros(b, h, dk, dv)
        states = [state]
        if num_blocks > 1:
            # Writes of blocks 0..n-2 (the last block's write is read by no one), blocks batched together.
            n = num_blocks - 1

            def blocks(t: torch.Tensor) -> torch.Tensor:
                return t.unflatten(1, (num_blocks, -1))[:, :n].flatten(0, 1)

            kb = blocks(k)
            v_aug = torch.cat([torch.zeros_like(k), v], dim=-1)
            eye = torch.eye(dk, dtype=dt, device=k.device).expand(kb.shape[0], h, dk, dk)
            init = torch.cat([eye, eye.new_zeros(kb.shape[0], h, dk, dv)], dim=-1)
            out = naive_chunk_gated_delta_rule_state(kb, blocks(v_aug), blocks(g), blocks(beta), initial_state=init)
            out = out.unflatten(0, (b, n))
            trans, inp = out[..., :dk], out[..., dk:]  # S_next = trans @ S + inp
            for j in range(n):
                state = trans[:, j] @ state + inp[:, j]
                states.append(state)
    return torch.stack(states, dim=1)


def _softmax_mask(cfg, num_blocks: int, teacher_forcing: bool, device) -> torch.Tensor:
    """Boolean mask ``[L, L]`` (True = attend) over the sequence's tokens, for softmax layers.

    A query block sees its own block and the past frames the runtime's KV cache holds for it: all earlier frames, or
    with a rolling window the first ``sink_frames`` and the most recent ``window - frames_per_block - sink`` frames.
    With teacher forcing the noisy block i sees those clean frames plus its own noisy block, and clean queries never
    see noisy keys.
    """
    fpb = cfg.frames_per_block
    frames = num_blocks * fpb
    block = torch.arange(frames, device=device) // fpb  # block of each frame
    past_frames = block * fpb  # frames in the cache when the frame's block runs
    p = torch.arange(frames, device=device)[None, :]  # key frame
    in_past = p < past_frames[:, None]
    if cfg.attn_window_frames != -1:
        max_past = cfg.attn_window_frames - fpb
        recent = max_past - cfg.sink_frames
        total = past_frames[:, None]
        in_past &= (total <= max_past) | (p < cfg.sink_frames) | (p >= total - recent)
    own = block[:, None] == block[None, :]
    if teacher_forcing:
        none = torch.zeros_like(own)
        frame_mask = torch.cat([torch.cat([in_past | own, none], 1), torch.cat([in_past, own], 1)], 0)
    else:
        frame_mask = in_past | own
    tpf = cfg.tokens_per_frame
    return frame_mask.repeat_interleave(tpf, 0).repeat_interleave(tpf, 1)


def _unpatchify(cfg, out: torch.Tensor, b: int, frames: int, hh: int, ww: int) -> torch.Tensor:
    """Head output ``[B, L, (pt ph pw c)]`` -> ``[B, C, F, H, W]``, as ``CausalDiT.step`` lays it out."""
    pt, ph, pw = cfg.patch_size
    c = cfg.out_channels
    out = out.reshape(b, frames // pt, hh // ph, ww // pw, pt, ph, pw, c)
    return torch.einsum("bfhwpqrc->bcfphqwr", out).reshape(b, c, frames, hh, ww)
