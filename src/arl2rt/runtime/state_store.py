"""StateStore: every state tensor of one stream (GDN states, softmax K/V caches, text K/V, VAE caches), owned by the
runtime.

The store is laid out by the StateSpec. A commit binds each ``present_state`` as the next ``past_state`` without a copy
(the previous buffer becomes the spare a backend may write the following commit into: ping-pong) and appends the
block's K/V to a preallocated cache, global (grows geometrically) or a rolling window that keeps ``sink`` frames.
A model with a VAE decoder also keeps the decoder's causal-conv caches: absent until the stream's first block is
decoded (``decode_first`` takes none), then each decode's ``present_vae`` bound as the next ``past_vae``, no copy and
no spare (a spare would hold a second copy of caches that reach GiBs at 480p; the allocator reuses the freed ones).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import (
    PAST_KV,
    PAST_STATE,
    PAST_VAE,
    PRESENT_KV,
    PRESENT_STATE,
    PRESENT_VAE,
    StateSpec,
    torch_dtype,
)


class KVCache:
    """Past K/V of one softmax layer, ``[B, frames * tokens_per_frame, H, D]`` each, frames in stream order."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        tokens_per_frame: int,
        max_past_frames: int | None,
        sink_frames: int,
        dtype: torch.dtype,
        device: torch.device,
        capacity_frames: int,
    ) -> None:
        self.batch, self.heads, self.dim = shape
        self.tpf, self.max_past, self.sink = tokens_per_frame, max_past_frames, sink_frames
        self.dtype, self.device = dtype, device
        self.frames = 0
        cap = capacity_frames if max_past_frames is None else max_past_frames
        self.key, self.value = self._alloc(cap), self._alloc(cap)

    def _alloc(self, frames: int) -> torch.Tensor:
        return torch.empty(self.batch, frames * self.tpf, self.heads, self.dim, dtype=self.dtype, device=self.device)

    @property
    def capacity_frames(self) -> int:
        return self.key.shape[1] // self.tpf

    def reset(self) -> None:
        self.frames = 0

    def view(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.frames * self.tpf
        return self.key[:, :n], self.value[:, :n]

    def slot(self, frames: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Views of where the next ``frames`` frames will lie, for a backend to write a block's K/V straight into
        the cache (no copy at :meth:`append`); None where the block cannot land in place (a full rolling window
        shifts the cache) or the view is not contiguous (batch > 1), which a backend's output binding needs."""
        if self.max_past is not None and self.frames + frames > self.max_past:
            return None
        self._reserve(self.frames + frames)
        start, end = self.frames * self.tpf, (self.frames + frames) * self.tpf
        views = self.key[:, start:end], self.value[:, start:end]
        return views if views[0].is_contiguous() else None

    def _reserve(self, frames: int) -> None:
        """Grow the buffers (doubling, keeping the valid frames) until ``frames`` frames fit."""
        if frames <= self.capacity_frames:
            return
        cap = max(2 * self.capacity_frames, frames)
        for name in ("key", "value"):
            grown = self._alloc(cap)
            grown[:, : self.frames * self.tpf] = getattr(self, name)[:, : self.frames * self.tpf]
            setattr(self, name, grown)

    def append(self, key: torch.Tensor, value: torch.Tensor) -> None:
        new = key.shape[1] // self.tpf
        if self.max_past is not None and self.frames + new > self.max_past:
            self._append_rolling(key, value, new)
            return
        self._reserve(self.frames + new)
        start = self.frames * self.tpf
        for buf, block in ((self.key, key), (self.value, value)):
            target = buf[:, start : start + block.shape[1]]
            if block.data_ptr() != target.data_ptr() or block.stride() != target.stride():
                target.copy_(block)  # written elsewhere (a backend that ignores the slot): copy it in
        self.frames += new

    def _append_rolling(self, key: torch.Tensor, value: torch.Tensor, new: int) -> None:
        """Keep the stream's first ``sink`` frames and the most recent ``max_past - sink`` frames."""
        total = self.frames + new
        keep = min(total, self.max_past)
        recent = keep - min(self.sink, keep)
        for buf, block in ((self.key, key), (self.value, value)):
            full = torch.cat([buf[:, : self.frames * self.tpf], block], dim=1)
            kept = torch.cat([full[:, : (keep - recent) * self.tpf], full[:, (total - recent) * self.tpf :]], dim=1)
            buf[:, : keep * self.tpf] = kept
        self.frames = keep

    def nbytes(self) -> int:
        return self.key.numel() * self.key.element_size() * 2

    def rotate_keys(self, rotate: Callable[[torch.Tensor, int], torch.Tensor], chunk_tokens: int) -> None:
        """Replace the valid cached K by ``rotate(K, head_dim_axis)``, a slice of tokens at a time (RoPE re-base)."""
        n = self.frames * self.tpf
        for start in range(0, n, chunk_tokens):
            part = self.key[:, start : min(start + chunk_tokens, n)]
            part.copy_(rotate(part, -1))

    def load(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Set the cache to ``key``/``value`` (whole frames, stream order), e.g. from a session snapshot."""
        frames = key.shape[1] // self.tpf
        if self.max_past is not None and frames > self.max_past:
            raise Arl2rtError(f"K/V cache: {frames} past frames do not fit a rolling window of {self.max_past} frames")
        if frames > self.capacity_frames:
            self.key, self.value = self._alloc(frames), self._alloc(frames)
        self.key[:, : key.shape[1]] = key
        self.value[:, : value.shape[1]] = value
        self.frames = frames


class StateStore:
    """All state of one stream, named by the StateSpec."""

    def __init__(self, spec: StateSpec, batch: int, device: torch.device | str, max_frames: int = 64) -> None:
        self.spec, self.batch, self.device = spec, batch, torch.device(device)
        cfg = spec.config
        self.states: dict[str, torch.Tensor] = {}
        self.spares: dict[str, torch.Tensor] = {}
        self.context: dict[str, torch.Tensor] = {}
        self.vae: dict[str, torch.Tensor] = {}  # past_vae.i, empty until the first block is decoded
        window = cfg.attn_window_frames
        max_past = None if window == -1 else window - cfg.frames_per_block
        self.caches = {
            i: KVCache(
                (batch, cfg.num_heads, cfg.head_dim),
                cfg.tokens_per_frame,
                max_past,
                cfg.sink_frames,
                torch_dtype(spec.dtype),
                self.device,
                max_frames,
            )
            for i in cfg.softmax_layers
        }
        self.reset()

    def reset(self) -> None:
        """Start a new video: zero every GDN state, empty every cache (VAE caches too), forget the text (no stale
        state leaks)."""
        for s in self.spec.of_kind(PAST_STATE):
            self.states[s.name] = torch.zeros(s.resolve(batch=self.batch), dtype=s.torch_dtype, device=self.device)
        self.spares.clear()
        self.context.clear()
        self.vae.clear()
        for cache in self.caches.values():
            cache.reset()

    def set_context(self, outputs: dict[str, torch.Tensor]) -> None:
        expected = {s.name for s in self.spec.context_kv()}
        if set(outputs) != expected:
            raise Arl2rtError(f"encode_context returned {sorted(outputs)}; expected {sorted(expected)}")
        self.context = dict(outputs)

    @property
    def past_frames(self) -> int:
        return next(iter(self.caches.values())).frames if self.caches else 0

    def feeds(self) -> dict[str, torch.Tensor]:
        """The state inputs of a step: context K/V, past GDN states and past K/V views (no copies)."""
        if not self.context:
            raise Arl2rtError("no text context: call Streamer.start(context) before generating")
        return {**self.context, **self.states, **self._past_kv()}

    def _past_kv(self) -> dict[str, torch.Tensor]:
        """Each cache's valid K/V by past K/V name (views, no copies)."""
        return {n: t for i, cache in self.caches.items() for n, t in zip(self.spec.names(PAST_KV, i), cache.view())}

    def spare_buffers(self) -> dict[str, torch.Tensor]:
        """present name -> where a backend may write the next commit: a free state buffer (ping-pong) and, where
        the block's K/V can land in place, its slot in each cache (then :meth:`commit` copies nothing)."""
        buffers = {self.spec.present_of(name): buf for name, buf in self.spares.items()}
        frames = self.spec.config.frames_per_block
        for i, cache in self.caches.items():
            views = cache.slot(frames)
            if views is not None:
                buffers.update(zip(self.spec.names(PRESENT_KV, i), views))
        return buffers

    def commit(self, outputs: dict[str, torch.Tensor]) -> None:
        """Bind ``present_state.*`` as the next ``past_state.*`` and append ``present_key/value.*`` to the caches."""
        expected = {s.name for s in self.spec.commit_outputs()}
        if set(outputs) != expected:
            raise Arl2rtError(f"commit_step returned {sorted(outputs)}; expected {sorted(expected)}")
        for s in self.spec.of_kind(PRESENT_STATE):
            past, value = self.spec.past_of(s.name), outputs[s.name]
            if value.data_ptr() != self.states[past].data_ptr():
                self.spares[past] = self.states[past]
            self.states[past] = value
        for i, cache in self.caches.items():
            cache.append(*(outputs[name] for name in self.spec.names(PRESENT_KV, i)))

    # -- the VAE decoder's caches ----------------------------------------------------------------------------------
    @property
    def decode_graph(self) -> str:
        """The graph that decodes the next block: ``decode_first`` while the caches are absent, else ``decode_step``."""
        return self.spec.decode_graph(first=not self.vae)

    def vae_feeds(self) -> dict[str, torch.Tensor]:
        """The past VAE caches by name (none before the first decode)."""
        return dict(self.vae)

    def commit_vae(self, outputs: dict[str, torch.Tensor]) -> None:
        """Bind every ``present_vae.*`` of a decode's outputs as the next ``past_vae.*`` (no copy)."""
        presents = self.spec.vae_caches(PRESENT_VAE)
        missing = [s.name for s in presents if s.name not in outputs]
        if missing:
            raise Arl2rtError(f"decode returned no {missing}; expected every present VAE cache")
        self.vae = {self.spec.past_of(s.name): outputs[s.name] for s in presents}

    def rotate_keys(self, rotate: Callable[[torch.Tensor, int], torch.Tensor], chunk_tokens: int) -> None:
        """Apply ``rotate(tensor, key_axis)`` to every stored key: cached K and the key axis of each GDN state.

        Used to re-base RoPE positions (:mod:`arl2rt.runtime.rope_rebase`). States are replaced, not written in place
        (they may be a backend's inference-mode outputs); the spares keep their buffers for the next ping-pong.
        """
        with torch.no_grad():
            for name, state in self.states.items():
                self.states[name] = rotate(state, 2)  # [B, H, D_k, D_v]
            for cache in self.caches.values():
                cache.rotate_keys(rotate, chunk_tokens)

    # -- snapshots -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything a stream needs to continue, by StateSpec name: ``past_state.*``, the valid ``past_key.*`` /
        ``past_value.*`` of each cache (whole frames, stream order), the text ``context_key.*``/``context_value.*``
        and, once a block is decoded, the VAE's ``past_vae.*``.

        Tensors are views of the store's buffers: copy them (e.g. to the CPU) before the next step.
        """
        return {**self.context, **self.states, **self._past_kv(), **self.vae}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], source: str = "state") -> None:
        """Restore what :meth:`state_dict` returned (on any device); every name, shape and dtype is checked. The VAE
        caches are all there (a stream that decoded a block) or none (one that has not)."""
        specs = {s.name: s for s in self.spec.context_kv()}
        specs.update({s.name: s for s in self.spec.of_kind(PAST_STATE, *PAST_KV)})
        vae = self.spec.vae_caches(PAST_VAE) if self.spec.vae is not None else []
        if any(s.name in tensors for s in vae):
            specs.update({s.name: s for s in vae})
        missing, extra = sorted(set(specs) - set(tensors)), sorted(set(tensors) - set(specs))
        if missing or extra:
            raise Arl2rtError(f"{source}: missing tensors {missing}, unexpected tensors {extra}")
        tpf = self.spec.config.tokens_per_frame
        for name, s in specs.items():
            t = tensors[name]
            s.check(t, batch=self.batch)
            if s.kind in PAST_KV and t.shape[1] % tpf:
                raise Arl2rtError(f"{source}: tensor {name} holds {t.shape[1]} tokens, not whole frames of {tpf}")
        self.reset()
        self.context = {s.name: tensors[s.name].to(self.device).clone() for s in self.spec.context_kv()}
        for name in self.states:
            self.states[name] = tensors[name].to(self.device).clone()
        for i, cache in self.caches.items():
            key_name, value_name = self.spec.names(PAST_KV, i)
            key, value = tensors[key_name], tensors[value_name]
            if key.shape != value.shape:
                raise Arl2rtError(f"{source}: {key_name} {list(key.shape)} and {value_name} {list(value.shape)} differ")
            cache.load(key.to(self.device), value.to(self.device))
        self.vae = {s.name: tensors[s.name].to(self.device).clone() for s in vae if s.name in tensors}

    def nbytes(self) -> dict[str, int]:
        """Memory held now: GDN states (constant), K/V caches (grow or roll), text K/V, VAE caches (constant)."""

        def size(ts):
            return sum(t.numel() * t.element_size() for t in ts)

        return {
            "gdn_states": size(self.states.values()) + size(self.spares.values()),
            "kv_cache": sum(c.nbytes() for c in self.caches.values()),
            "context": size(self.context.values()),
            "vae_caches": size(self.vae.values()),
        }


def planned_bytes(spec: StateSpec, batch: int, max_frames: int) -> dict[str, int]:
    """What a :class:`StateStore` built with these arguments holds once its first block is committed, by the keys of
    :meth:`StateStore.nbytes`: the GDN states and their ping-pong spares, each softmax cache at its first capacity (a
    rolling window's span, or ``max_frames`` of a global cache, which grows later), the text K/V, one set of VAE
    caches."""
    cfg = spec.config
    window = cfg.attn_window_frames
    cache_frames = max_frames if window == -1 else window - cfg.frames_per_block
    return {
        "gdn_states": 2 * spec.state_bytes(batch),
        "kv_cache": cache_frames * spec.kv_bytes_per_frame(batch),
        "context": sum(s.nbytes(batch=batch) for s in spec.context_kv()),
        "vae_caches": spec.vae_cache_bytes(batch),
    }


def check_device_memory(
    spec: StateSpec, batch: int, max_frames: int, device: torch.device, free_bytes: int | None = None
) -> None:
    """On a CUDA device, an Arl2rtError before anything of the stream is allocated if its states and caches alone
    exceed the device's free memory (``free_bytes``: that figure, else ``torch.cuda.mem_get_info``)."""
    if device.type != "cuda":
        return
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    parts = planned_bytes(spec, batch, max_frames)
    need = sum(parts.values())
    if need <= free_bytes:
        return
    gib = 1 << 30
    what = {
        "gdn_states": "GDN states and their ping-pong spares",
        "kv_cache": f"K/V caches of {len(spec.config.softmax_layers)} softmax layers",
        "context": "text K/V",
        "vae_caches": "VAE decoder caches",
    }
    lines = "\n".join(f"  {what[k]}: {v / gib:.2f} GiB" for k, v in parts.items() if v)
    raise Arl2rtError(
        f"{device}: {free_bytes / gib:.2f} GiB free; this stream (batch {batch}) needs at least {need / gib:.2f} GiB "
        f"for its states and caches alone:\n{lines}\n"
        "expected a shorter stream (--frames/--blocks), a rolling window, a smaller batch or more free GPU memory"
    )
