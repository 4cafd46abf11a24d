"""Parity: one seeded stream on a reference and a candidate backend, compared at every step and over blocks.

Both backends are driven by the same :class:`~arl2rt.runtime.streamer.Streamer` (same seed, same float32 noise from a
CPU generator, same text context); the Streamer's hook hands every step's feeds and outputs to the comparison, as
polygraphy's Comparator feeds every runner the same inputs. Two modes answer two questions:

* ``drift``: two independent streams. Each backend feeds itself its own outputs (states, K/V, re-noised latents), so
  errors compound over blocks: this is what a user sees in a long video. Step inputs (``latents``) are compared too,
  so the commit step's ``latents`` is the block's emitted result.

With a VAE decoder in the contract both streams also decode every block (``decode_first``, then ``decode_step``), and
those steps are recorded like the DiT's: frames and present VAE caches, per step and over the stream.
* ``step``: teacher forcing. At every step of the reference stream the candidate runs on the reference's exact
  feeds, cast to the candidate's dtypes, so each record measures the error of one step alone.

A per-step failure points at the step that is wrong; a drift failure without a step failure says the error is small
per step but grows over the stream. Running both (the default) costs two candidate runs per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import DECODE_FIRST, DECODE_STEP, LATENTS, TensorSpec
from arl2rt.model.scheduler import FlowMatchScheduler
from arl2rt.parity.compare import Tolerances, compare_func
from arl2rt.parity.result import MODES, ParityResult, StepResult
from arl2rt.runtime.backend import Backend
from arl2rt.runtime.streamer import Streamer


@dataclass(frozen=True)
class Capture:
    """One step's feeds, in the candidate's dtypes, and the reference's outputs for exactly those feeds."""

    graph: str
    block: int
    pass_index: int
    feeds: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


def cast_feeds(feeds: dict[str, torch.Tensor], specs: Iterable[TensorSpec], device: torch.device) -> dict:
    """``feeds`` converted to the dtypes of ``specs`` on ``device`` (contiguous; always new tensors)."""
    return {
        s.name: feeds[s.name]
        .to(device=device, dtype=s.torch_dtype, copy=True)
        .contiguous(memory_format=torch.contiguous_format)
        for s in specs
    }


def _snapshot(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float64 CPU copies: a backend may later overwrite its outputs in place (ping-pong state buffers)."""
    return {name: t.detach().to("cpu", torch.float64, copy=True) for name, t in tensors.items()}


def run_parity(
    reference: Backend,
    candidate: Backend,
    context: torch.Tensor,
    *,
    blocks: int,
    seed: int = 0,
    modes: Iterable[str] = MODES,
    tolerances: Tolerances | None = None,
    capture_block: int | None = None,
    progress: Callable[[], None] | None = None,
) -> tuple[ParityResult, list[Capture]]:
    """Stream ``blocks`` blocks on both (active) backends and compare every step.

    Args:
        reference, candidate: active backends for the same model config (typically torch float64 vs the candidate).
        context: text embeddings ``[B, L_text, text_dim]``.
        modes: a subset of ``("drift", "step")``.
        tolerances: per-tensor atol/rtol; default: :meth:`Tolerances.for_dtype` of the candidate's precision.
        capture_block: also return the feeds and golden outputs of this block's steps (for polygraphy).

    Returns:
        The result (every step's metrics; ``.passed``, ``.first_failure()``, ``.drift(mode)``) and the captures.
    """
    modes = tuple(modes)
    if not modes or set(modes) - set(MODES):
        raise Arl2rtError(f"parity modes {list(modes)}: expected a non-empty subset of {list(MODES)}")
    if reference.spec.config != candidate.spec.config:
        raise Arl2rtError(
            f"reference config {reference.spec.config.name!r} and candidate config {candidate.spec.config.name!r} "
            "differ: parity needs one model"
        )
    if blocks < 1:
        raise Arl2rtError(f"parity needs at least 1 block, got {blocks}")
    if capture_block is not None and not 0 <= capture_block < blocks:
        raise Arl2rtError(f"capture block {capture_block}: expected 0..{blocks - 1} for a {blocks}-block run")
    tolerances = tolerances or Tolerances.for_dtype(candidate.spec.dtype)
    compare = compare_func(tolerances)
    result = ParityResult(_label(reference), _label(candidate), blocks, seed, modes, tolerances)
    captures: list[Capture] = []
    last_denoise = len(FlowMatchScheduler.from_config(reference.spec.config).timesteps) - 1
    batch = context.shape[0]
    max_frames = blocks * reference.spec.config.frames_per_block
    pending: dict[tuple[str, int, int], dict[str, torch.Tensor]] = {}
    latents = reference.spec.name(LATENTS)

    def step_latents(feeds: dict) -> dict:
        """The DiT steps' per-pass latents (a decode step's input is the commit's, compared there)."""
        return {latents: feeds[latents]} if latents in feeds else {}

    def record(mode: str, graph: str, block: int, pass_index: int, ref: dict, cand: dict) -> None:
        tensors = {name: compare(name, ref[name], cand[name]) for name in ref}
        result.steps.append(StepResult(mode, graph, block, pass_index, tensors))

    def reference_hook(graph: str, block: int, pass_index: int, feeds: dict, outputs: dict) -> None:
        ref_out = _snapshot(outputs)
        if "drift" in modes:
            pending[(graph, block, pass_index)] = {**_snapshot(step_latents(feeds)), **ref_out}
        # the capture block's last denoise pass, commit and decode; decode_first exists only in the first block
        capture = capture_block is not None and (
            block == capture_block
            and (graph in ("commit_step", DECODE_STEP) or graph == "denoise_step" and pass_index == last_denoise)
            or graph == DECODE_FIRST
        )
        if "step" not in modes and not capture:
            return
        cand_feeds = cast_feeds(feeds, candidate.spec.inputs(graph), candidate.device)
        if "step" in modes:
            record("step", graph, block, pass_index, ref_out, candidate.run(graph, cand_feeds))
        if capture:
            captures.append(_capture(reference, candidate, graph, block, pass_index, cand_feeds))

    def candidate_hook(graph: str, block: int, pass_index: int, feeds: dict, outputs: dict) -> None:
        ref = pending.pop((graph, block, pass_index))
        record("drift", graph, block, pass_index, ref, {**step_latents(feeds), **outputs})

    ref_stream = Streamer(reference, seed=seed, batch=batch, max_frames=max_frames, hook=reference_hook)
    ref_stream.start(context)
    if "drift" in modes:
        cand_stream = Streamer(candidate, seed=seed, batch=batch, max_frames=max_frames, hook=candidate_hook)
        cand_stream.start(context)
        record("drift", "encode_context", 0, 0, _snapshot(ref_stream.store.context), cand_stream.store.context)
    if "step" in modes or capture_block is not None:
        ctx = cast_feeds({"context": context}, candidate.spec.inputs("encode_context"), candidate.device)
        cand_ctx = candidate.run("encode_context", ctx)
        if "step" in modes:
            record("step", "encode_context", 0, 0, _snapshot(ref_stream.store.context), cand_ctx)
        if capture_block is not None:
            captures.append(_capture(reference, candidate, "encode_context", 0, 0, ctx))
    for _ in range(blocks):
        ref_stream.next_block()
        if "drift" in modes:
            cand_stream.next_block()
        pending.clear()
        if progress is not None:
            progress()
    return result, captures


def _capture(reference: Backend, candidate: Backend, graph: str, block: int, pass_index: int, feeds: dict) -> Capture:
    """Golden outputs: the reference run on the candidate-dtype feeds themselves (not on its own, finer feeds)."""
    ref_feeds = cast_feeds(feeds, reference.spec.inputs(graph), reference.device)
    golden = reference.run(graph, ref_feeds)
    outputs = {s.name: golden[s.name].to("cpu", s.torch_dtype, copy=True) for s in candidate.spec.outputs(graph)}
    return Capture(graph, block, pass_index, {k: v.cpu() for k, v in feeds.items()}, outputs)


def _label(backend: Backend) -> str:
    return getattr(backend, "label", None) or f"{backend.name} {backend.spec.dtype}"
