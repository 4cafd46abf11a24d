"""The Streamer: the one AR loop (docs/arl2.md §4) that drives any Backend, block after block.

Per block: fresh noise, the denoising passes (``denoise_step``, states read only, re-noising with fresh seeded noise
between them), then the clean t = 0 pass (``commit_step``) whose outputs the StateStore binds as the next states.
Noise comes from a seeded CPU generator in float32 whatever the backend, so two backends see the same stream.
The RoPE frame index fed to the graphs is the absolute latent-frame index until the table would run out; then
:mod:`arl2rt.runtime.rope_rebase` re-bases it exactly, so a stream never ends for lack of positions.

When the StateSpec has a VAE decoder, each block is decoded right after its commit (``decode_first`` for the stream's
first block, ``decode_step`` after it, the caches kept in the StateStore): :meth:`Streamer.next_block` still returns
the block's latents, and :attr:`Streamer.last_frames` then holds that block's video.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import CONTEXT, DECODE_FIRST, PAST_VAE, VAE_LATENTS, VELOCITY
from arl2rt.model.scheduler import FlowMatchScheduler
from arl2rt.runtime.backend import Backend
from arl2rt.runtime.rope_rebase import RopePositions
from arl2rt.runtime.state_store import StateStore, check_device_memory

# (graph, block index, pass index, feeds, outputs) -> None; called after every step, e.g. by parity.
StepHook = Callable[[str, int, int, dict, dict], None]


@dataclass
class StreamPosition:
    """Where a stream is: blocks and latent frames made so far, and the RoPE index of the next frame."""

    block: int = 0
    frame: int = 0
    rope_frame: int = 0


class Streamer:
    """Generates a video stream block by block on one backend; owns the stream's StateStore and noise generator.

    ``last_frames``: the video of the block the last :meth:`next_block` made, ``[B, 3, T, 8H, 8W]`` in [-1, 1] (io
    dtype, backend device; T = 4F - 3 for the stream's first block, else 4F), when the spec has a VAE decoder; None
    without one and before the first block. It is the backend's output: consume it before the next block.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        seed: int = 0,
        batch: int = 1,
        max_frames: int = 64,
        hook: StepHook | None = None,
    ) -> None:
        self.backend = backend
        self.spec = backend.spec
        self.cfg = self.spec.config
        self.scheduler = FlowMatchScheduler.from_config(self.cfg)
        self.batch, self.seed, self.hook = batch, seed, hook
        check_device_memory(self.spec, batch, max_frames, torch.device(backend.device))  # before allocating
        self.store = StateStore(self.spec, batch, backend.device, max_frames=max_frames)
        self.generator = torch.Generator()
        self.position = StreamPosition()
        self.rope = RopePositions(self.cfg)
        self._io_dtype = self.spec.velocity().torch_dtype
        self.last_frames: torch.Tensor | None = None

    def start(self, context: torch.Tensor, seed: int | None = None) -> None:
        """Begin a new video for text embeddings ``context [B, L_text, text_dim]``: resets every state."""
        self.store.reset()
        self.position = StreamPosition()
        self.last_frames = None
        self.generator.manual_seed(self.seed if seed is None else seed)
        spec = self.spec.context()
        context = context.to(device=self.backend.device, dtype=spec.torch_dtype)
        spec.check(context, batch=self.batch)
        self.store.set_context(self.backend.run("encode_context", {self.spec.name(CONTEXT): context}))

    def _noise(self) -> torch.Tensor:
        c = self.cfg
        shape = (self.batch, c.in_channels, c.frames_per_block, c.latent_height, c.latent_width)
        noise = torch.randn(shape, generator=self.generator, dtype=torch.float32)
        return noise.to(device=self.backend.device, dtype=self._io_dtype)

    def _feeds(self, latents: torch.Tensor, t: float) -> dict[str, torch.Tensor]:
        f = self.cfg.frames_per_block
        timestep = torch.full((self.batch, f), t, dtype=self._io_dtype, device=self.backend.device)
        offset = torch.tensor(self.position.rope_frame, dtype=torch.int64, device=self.backend.device)
        return {**self.spec.pass_feeds(latents, timestep, offset), **self.store.feeds()}

    def _run(self, graph: str, feeds: dict, pass_index: int, out: dict | None = None) -> dict:
        outputs = self.backend.run(graph, feeds, out)
        if self.hook is not None:
            self.hook(graph, self.position.block, pass_index, feeds, outputs)
        return outputs

    def next_block(self) -> torch.Tensor:
        """Generate one block; returns its denoised latents ``[B, C, F, H, W]`` (io dtype, backend device) and, with
        a VAE decoder, decodes them into :attr:`last_frames`."""
        c = self.cfg
        self.position.rope_frame = self.rope.before_block(self.position.rope_frame, self.store)
        sched = self.scheduler
        x = self._noise()
        x0 = x
        for i, t in enumerate(sched.timesteps):
            velocity = self._run("denoise_step", self._feeds(x, t), i)[self.spec.name(VELOCITY)]
            x0 = sched.x0(x, velocity, sched.sigmas[i])
            if i + 1 < len(sched.timesteps):
                x = sched.next_latents(x, velocity, i, self._noise)
        outputs = self._run("commit_step", self._feeds(x0, 0.0), len(sched.timesteps), self.store.spare_buffers())
        self.store.commit(outputs)
        if self.spec.vae is not None:
            self.last_frames = self._decode(x0, len(sched.timesteps) + 1)
        self.position.block += 1
        self.position.frame += c.frames_per_block
        self.position.rope_frame += c.frames_per_block
        return x0

    def _decode(self, latents: torch.Tensor, pass_index: int) -> torch.Tensor:
        """The block's video: its latents through the decode graph, whose present caches become the next past."""
        graph = self.store.decode_graph
        feeds = {self.spec.name(VAE_LATENTS): latents, **self.store.vae_feeds()}
        outputs = self._run(graph, feeds, pass_index)
        self.store.commit_vae(outputs)
        return outputs[self.spec.frames(first=graph == DECODE_FIRST).name]

    def restore(self, tensors: dict[str, torch.Tensor], position: StreamPosition, rng_state: torch.Tensor) -> None:
        """Continue a stream saved earlier: its StateStore tensors, position and noise-generator state.

        With the same backend on a CPU the blocks that follow are bit-identical to those of the uninterrupted stream.
        """
        if self.spec.vae is not None:
            cached = any(s.name in tensors for s in self.spec.vae_caches(PAST_VAE))
            if cached != (position.block > 0):
                raise Arl2rtError(
                    f"stream state at block {position.block}: expected VAE caches "
                    + (
                        "(a block was decoded), found none"
                        if position.block > 0
                        else "absent (no block yet), found some"
                    )
                )
        self.store.load_state_dict(tensors)
        self.last_frames = None
        self.position = StreamPosition(position.block, position.frame, position.rope_frame)
        self.generator.set_state(rng_state)

    def stream(self, num_blocks: int) -> Iterator[torch.Tensor]:
        if num_blocks < 0:
            raise Arl2rtError(f"number of blocks must be >= 0, got {num_blocks}")
        for _ in range(num_blocks):
            yield self.next_block()

    def generate(self, context: torch.Tensor, num_blocks: int, seed: int | None = None) -> torch.Tensor:
        """A whole video in one call: ``[B, C, num_blocks * F, H, W]``."""
        self.start(context, seed)
        blocks = list(self.stream(num_blocks))
        return torch.cat(blocks, dim=2) if blocks else torch.empty(0)
