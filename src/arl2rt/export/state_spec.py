"""The state contract: every tensor that crosses a step boundary, written once and read by exporter, backends, parity.

Three graphs make one AR block of latents (docs/state-contract.md §1):

* ``encode_context``: ``context`` -> ``context_key.{i}``, ``context_value.{i}`` for every layer (once per prompt);
* ``denoise_step``: latents, timestep, frame offset, context K/V, ``past_state.{i}`` (hybrid layers) and
  ``past_key.{i}``/``past_value.{i}`` (softmax layers) -> ``velocity``; states are read only;
* ``commit_step``: the same inputs at t = 0 -> ``present_state.{i}`` and the block's ``present_key.{i}`` /
  ``present_value.{i}``; the runtime binds present as the next past (ping-pong) or appends K/V to its cache.

A model with a VAE decoder (``StateSpec(..., vae=VaeConfig)`` for Wan2.1's, ``vae=TaehvConfig`` for TAEHV's) has two
more, which turn the block's latents into video (docs/vae.md, docs/state-contract.md §9):

* ``decode_first``: ``vae_latents`` -> ``first_frames`` and ``present_vae.{i}`` for every cache i of the decoder
  (Wan2.1: one per causal conv; TAEHV: one per memory block), for the stream's first block (no caches yet);
* ``decode_step``: ``vae_latents``, ``past_vae.{i}`` -> ``frames``, ``present_vae.{i}`` (every later block).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.model.config import ModelConfig
from arl2rt.model.vae.kinds import VaeDecoderConfig, decoder_cache_specs

BATCH = "batch"
PAST_LEN = "past_len"
GRAPHS = ("encode_context", "denoise_step", "commit_step")  # the DiT's: every model has them
DECODE_FIRST, DECODE_STEP = "decode_first", "decode_step"
DECODE_GRAPHS = (DECODE_FIRST, DECODE_STEP)  # a model with a VAE decoder has these too

# Tensor kinds (TensorSpec.kind). A tensor's name is spelled from its kind (and layer) by StateSpec.name, nowhere else:
# callers ask the spec for names, so renaming a tensor here renames it for the exporter, the store and every backend.
CONTEXT, CONTEXT_KEY, CONTEXT_VALUE = "context", "context_key", "context_value"
LATENTS, TIMESTEP, FRAME_OFFSET, VELOCITY = "latents", "timestep", "frame_offset", "velocity"
PAST_STATE, PAST_KEY, PAST_VALUE = "past_state", "past_key", "past_value"
PRESENT_STATE, PRESENT_KEY, PRESENT_VALUE = "present_state", "present_key", "present_value"
# the VAE decoder's: its input, the block's video (the first block's has fewer frames) and its causal-conv caches
VAE_LATENTS, FRAMES, FIRST_FRAMES = "vae_latents", "frames", "first_frames"
PAST_VAE, PRESENT_VAE = "past_vae", "present_vae"
# one layer's K/V pair, key first (for StateSpec.names)
CONTEXT_KV = (CONTEXT_KEY, CONTEXT_VALUE)
PAST_KV = (PAST_KEY, PAST_VALUE)
PRESENT_KV = (PRESENT_KEY, PRESENT_VALUE)
# the step inputs that change from pass to pass (the rest is state, fixed for a whole block)
PER_PASS = (LATENTS, TIMESTEP, FRAME_OFFSET)
# a commit output's kind -> the step input it feeds at the next step (a state is bound as it, K/V appended to it)
_PAST_OF_PRESENT = {PRESENT_STATE: PAST_STATE, PRESENT_KEY: PAST_KEY, PRESENT_VALUE: PAST_VALUE, PRESENT_VAE: PAST_VAE}
_LAYER_SEP = "."  # between kind and layer in a name: StateSpec.name spells it, kind_of reads it back

_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DTYPES_ALL = {**_DTYPES, "int64": torch.int64}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES_ALL[name]
    except KeyError:
        raise Arl2rtError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES_ALL)}") from None


def kind_of(name: str) -> str:
    """The kind part of a tensor name as :meth:`StateSpec.name` spells it (``present_state.2`` -> ``present_state``)."""
    return name.split(_LAYER_SEP, 1)[0]


def dtype_name(dtype: torch.dtype) -> str:
    for name, dt in _DTYPES_ALL.items():
        if dt == dtype:
            return name
    raise Arl2rtError(f"unsupported dtype {dtype}")


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a step graph. Shape entries are ints or symbolic names (``batch``, ``past_len``)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    kind: str
    layer: int | None = None

    def resolve(self, **dims: int) -> tuple[int, ...]:
        try:
            return tuple(d if isinstance(d, int) else dims[d] for d in self.shape)
        except KeyError as exc:
            raise Arl2rtError(f"tensor {self.name}: no value given for dimension {exc.args[0]!r}") from None

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype)

    def nbytes(self, **dims: int) -> int:
        n = 1
        for d in self.resolve(**dims):
            n *= d
        return n * torch.empty(0, dtype=self.torch_dtype).element_size()

    def check(self, value: torch.Tensor, **dims: int) -> None:
        """Raise an Arl2rtError naming this tensor if ``value`` has the wrong shape or dtype."""
        if dtype_name(value.dtype) != self.dtype:
            raise Arl2rtError(f"tensor {self.name}: expected dtype {self.dtype}, found {dtype_name(value.dtype)}")
        got = tuple(value.shape)
        if len(got) != len(self.shape) or any(
            isinstance(want, int) and want != g or (isinstance(want, str) and want in dims and dims[want] != g)
            for want, g in zip(self.shape, got)
        ):
            raise Arl2rtError(f"tensor {self.name}: expected shape {list(self.shape)} {dims or ''}, found {list(got)}")


@dataclass(frozen=True)
class StateSpec:
    """Names, shapes and dtypes of every input and output of the step graphs for one model and precision.

    ``dtype`` is the activation precision (weights, K/V caches, context K/V, the VAE decoder's weights and caches);
    GDN states are always fp32 (float64 for a float64 reference), as are latents, timesteps, velocities and video
    frames at the graph boundary. ``vae``: the model's VAE decoder, whose latents are the DiT's output (``z_dim`` =
    ``out_channels``), or None (no decode graphs).
    """

    config: ModelConfig
    dtype: str = "float32"
    vae: VaeDecoderConfig | None = None

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise Arl2rtError(f"precision {self.dtype!r}: expected one of {sorted(_DTYPES)}")
        if self.vae is not None and self.vae.z_dim != self.config.out_channels:
            raise Arl2rtError(
                f"VAE config {self.vae.name!r}: expected z_dim = {self.config.out_channels} (the out_channels of "
                f"config {self.config.name!r}), found {self.vae.z_dim}"
            )

    @property
    def graphs(self) -> tuple[str, ...]:
        """The step graphs of this model: the DiT's three, then the two decode graphs if it has a VAE."""
        return GRAPHS + (DECODE_GRAPHS if self.vae is not None else ())

    @property
    def config_dtype(self) -> torch.dtype:
        """The torch dtype of weights and activations."""
        return torch_dtype(self.dtype)

    @property
    def io_dtype(self) -> str:
        return "float64" if self.dtype == "float64" else "float32"

    # -- names ---------------------------------------------------------------------------------------------------
    def name(self, kind: str, layer: int | None = None) -> str:
        """The name of the tensor of ``kind`` (of ``layer`` for a per-layer tensor): the one place names are spelled."""
        return kind if layer is None else f"{kind}{_LAYER_SEP}{layer}"

    def names(self, kinds: tuple[str, ...], layer: int) -> tuple[str, ...]:
        """The names of several kinds of one layer, e.g. ``names(PAST_KV, 3)`` -> ``("past_key.3", "past_value.3")``."""
        return tuple(self.name(kind, layer) for kind in kinds)

    def tensor(self, name: str) -> TensorSpec:
        """The tensor of the contract called ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise Arl2rtError(f"tensor {name!r}: not in the state contract of config {self.config.name!r}") from None

    def past_of(self, present: str) -> str:
        """``present_state.3`` -> ``past_state.3``: the step input a commit output feeds at the next step."""
        s = self.tensor(present)
        if s.kind not in _PAST_OF_PRESENT:
            raise Arl2rtError(f"tensor {present}: expected a commit output (or a present VAE cache), found a {s.kind}")
        return self.name(_PAST_OF_PRESENT[s.kind], s.layer)

    def present_of(self, past: str) -> str:
        """``past_state.3`` -> ``present_state.3``: the commit output that becomes this step input (the reverse)."""
        s = self.tensor(past)
        present = next((p for p, q in _PAST_OF_PRESENT.items() if q == s.kind), None)
        if present is None:
            raise Arl2rtError(
                f"tensor {past}: expected a past state or past K/V (or a past VAE cache), found a {s.kind}"
            )
        return self.name(present, s.layer)

    def of_kind(self, *kinds: str) -> list[TensorSpec]:
        """Every tensor of the contract of one of ``kinds``, in graph order."""
        return [s for s in self._by_name.values() if s.kind in kinds]

    def pass_feeds(
        self, latents: torch.Tensor, timestep: torch.Tensor, frame_offset: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The step inputs that change from pass to pass (:data:`PER_PASS`), by name."""
        return dict(zip((self.name(kind) for kind in PER_PASS), (latents, timestep, frame_offset)))

    # -- tensors -------------------------------------------------------------------------------------------------
    def _tensor(self, kind: str, shape: tuple[int | str, ...], dtype: str, layer: int | None = None) -> TensorSpec:
        return TensorSpec(self.name(kind, layer), shape, dtype, kind, layer)

    def tensors(self) -> list[TensorSpec]:
        """Every tensor of the graphs, each once (context K/V are an output of one graph, inputs of two)."""
        return list(self._by_name.values())

    @cached_property
    def _by_name(self) -> dict[str, TensorSpec]:
        # cached_property writes the instance __dict__ directly, which a frozen dataclass allows
        seen: dict[str, TensorSpec] = {}
        for graph in self.graphs:
            for s in (*self.inputs(graph), *self.outputs(graph)):
                if seen.setdefault(s.name, s) != s:  # one name, one tensor: a graph may not reshape another's
                    raise Arl2rtError(f"tensor {s.name}: graph {graph} has {s}, another graph {seen[s.name]}")
        return seen

    def context(self) -> TensorSpec:
        c = self.config
        return self._tensor(CONTEXT, (BATCH, c.text_len, c.text_dim), self.io_dtype)

    def context_kv(self) -> list[TensorSpec]:
        c = self.config
        shape = (BATCH, c.text_len, c.num_heads, c.head_dim)
        return [self._tensor(kind, shape, self.dtype, i) for i in range(c.num_layers) for kind in CONTEXT_KV]

    def step_inputs(self) -> list[TensorSpec]:
        """Inputs of ``denoise_step`` and ``commit_step`` (identical), in graph order."""
        c = self.config
        f = c.frames_per_block
        past = (BATCH, PAST_LEN, c.num_heads, c.head_dim)
        specs = [
            self._tensor(LATENTS, (BATCH, c.in_channels, f, c.latent_height, c.latent_width), self.io_dtype),
            self._tensor(TIMESTEP, (BATCH, f), self.io_dtype),
            self._tensor(FRAME_OFFSET, (), "int64"),
            *self.context_kv(),
        ]
        specs += [self._state(PAST_STATE, i) for i in c.hybrid_layers]
        specs += [self._tensor(kind, past, self.dtype, i) for i in c.softmax_layers for kind in PAST_KV]
        return specs

    def _state(self, kind: str, layer: int) -> TensorSpec:
        c = self.config
        return self._tensor(kind, (BATCH, c.num_heads, c.head_dim, c.head_dim), self.io_dtype, layer)

    def velocity(self) -> TensorSpec:
        c = self.config
        shape = (BATCH, c.out_channels, c.frames_per_block, c.latent_height, c.latent_width)
        return self._tensor(VELOCITY, shape, self.io_dtype)

    def commit_outputs(self) -> list[TensorSpec]:
        c = self.config
        block = (BATCH, c.tokens_per_block, c.num_heads, c.head_dim)
        specs = [self._state(PRESENT_STATE, i) for i in c.hybrid_layers]
        specs += [self._tensor(kind, block, self.dtype, i) for i in c.softmax_layers for kind in PRESENT_KV]
        return specs

    # -- the VAE decoder ------------------------------------------------------------------------------------------
    def _vae(self) -> VaeDecoderConfig:
        if self.vae is None:
            raise Arl2rtError(f"config {self.config.name!r}: this state contract has no VAE decoder (vae=None)")
        return self.vae

    def vae_latents(self) -> TensorSpec:
        """The decode graphs' input: one block's denoised latents, as the DiT emits them (normalised)."""
        c = self.config
        shape = (BATCH, self._vae().z_dim, c.frames_per_block, c.latent_height, c.latent_width)
        return self._tensor(VAE_LATENTS, shape, self.io_dtype)

    def frames(self, first: bool) -> TensorSpec:
        """The block's video in [-1, 1]: ``first_frames`` (4F - 3 frames, the stream's first block) or ``frames``."""
        c, vae = self.config, self._vae()
        s = vae.spatial_factor
        t = vae.frames_out(c.frames_per_block, first=first)
        shape = (BATCH, vae.out_channels, t, s * c.latent_height, s * c.latent_width)
        return self._tensor(FIRST_FRAMES if first else FRAMES, shape, self.io_dtype)

    def vae_caches(self, kind: str) -> list[TensorSpec]:
        """``past_vae.i`` or ``present_vae.i`` for every cache i of the decoder, in step order."""
        if kind not in (PAST_VAE, PRESENT_VAE):
            raise Arl2rtError(f"VAE cache kind {kind!r}: expected {PAST_VAE!r} or {PRESENT_VAE!r}")
        c = self.config
        return [
            self._tensor(kind, (BATCH, cache.channels, cache.frames, h, w), self.dtype, cache.index)
            for cache in decoder_cache_specs(self._vae(), self.dtype)
            for h, w in [(cache.scale * c.latent_height, cache.scale * c.latent_width)]
        ]

    def decode_graph(self, first: bool) -> str:
        """The graph that decodes a block: ``decode_first`` for the stream's first, ``decode_step`` after it."""
        self._vae()
        return DECODE_FIRST if first else DECODE_STEP

    # -- graphs --------------------------------------------------------------------------------------------------
    def inputs(self, graph: str) -> list[TensorSpec]:
        self._check_graph(graph)
        if graph == DECODE_FIRST:
            return [self.vae_latents()]
        if graph == DECODE_STEP:
            return [self.vae_latents(), *self.vae_caches(PAST_VAE)]
        return [self.context()] if graph == "encode_context" else self.step_inputs()

    def outputs(self, graph: str) -> list[TensorSpec]:
        self._check_graph(graph)
        return {
            "encode_context": self.context_kv,
            "denoise_step": lambda: [self.velocity()],
            "commit_step": self.commit_outputs,
            DECODE_FIRST: lambda: [self.frames(True), *self.vae_caches(PRESENT_VAE)],
            DECODE_STEP: lambda: [self.frames(False), *self.vae_caches(PRESENT_VAE)],
        }[graph]()

    def _check_graph(self, graph: str) -> None:
        if graph in DECODE_GRAPHS and self.vae is None:
            raise Arl2rtError(f"step graph {graph!r}: config {self.config.name!r} has no VAE decoder in this contract")
        if graph not in self.graphs:
            raise Arl2rtError(f"unknown step graph {graph!r}; expected one of {list(self.graphs)}")

    # -- memory --------------------------------------------------------------------------------------------------
    def state_bytes(self, batch: int = 1) -> int:
        """Bytes of the constant-size recurrent state per stream (all GDN states)."""
        return sum(s.nbytes(batch=batch) for s in self.of_kind(PAST_STATE))

    def kv_bytes_per_frame(self, batch: int = 1) -> int:
        """Bytes the softmax layers' K/V caches grow by per latent frame."""
        c = self.config
        per = (
            c.tokens_per_frame * c.num_heads * c.head_dim * torch.empty(0, dtype=torch_dtype(self.dtype)).element_size()
        )
        return 2 * per * batch * len(c.softmax_layers)

    def vae_cache_bytes(self, batch: int = 1) -> int:
        """Bytes of the VAE decoder's caches per stream (constant; 0 without a VAE)."""
        return sum(s.nbytes(batch=batch) for s in self.vae_caches(PAST_VAE)) if self.vae is not None else 0

    # -- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        def tensors(specs):
            return [
                {"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "kind": s.kind, "layer": s.layer}
                for s in specs
            ]

        graphs = {g: {"inputs": tensors(self.inputs(g)), "outputs": tensors(self.outputs(g))} for g in self.graphs}
        return {"dtype": self.dtype, "graphs": graphs}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
