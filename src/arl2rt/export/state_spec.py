"""The state contract: every tensor that crosses a step boundary, written once and read by exporter, backends, parity.

Three graphs make one AR block (docs/state-contract.md §1):

* ``encode_context``: ``context`` -> ``context_key.{i}``, ``context_value.{i}`` for every layer (once per prompt);
* ``denoise_step``: latents, timestep, frame offset, context K/V, ``past_state.{i}`` (hybrid layers) and
  ``past_key.{i}``/``past_value.{i}`` (softmax layers) -> ``velocity``; states are read only;
* ``commit_step``: the same inputs at t = 0 -> ``present_state.{i}`` and the block's ``present_key.{i}`` /
  ``present_value.{i}``; the runtime binds present as the next past (ping-pong) or appends K/V to its cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.model.config import ModelConfig

BATCH = "batch"
PAST_LEN = "past_len"
GRAPHS = ("encode_context", "denoise_step", "commit_step")

# Tensor kinds (TensorSpec.kind). A tensor's name is spelled from its kind (and layer) by StateSpec.name, nowhere else:
# callers ask the spec for names, so renaming a tensor here renames it for the exporter, the store and every backend.
CONTEXT, CONTEXT_KEY, CONTEXT_VALUE = "context", "context_key", "context_value"
LATENTS, TIMESTEP, FRAME_OFFSET, VELOCITY = "latents", "timestep", "frame_offset", "velocity"
PAST_STATE, PAST_KEY, PAST_VALUE = "past_state", "past_key", "past_value"
PRESENT_STATE, PRESENT_KEY, PRESENT_VALUE = "present_state", "present_key", "present_value"
# one layer's K/V pair, key first (for StateSpec.names)
CONTEXT_KV = (CONTEXT_KEY, CONTEXT_VALUE)
PAST_KV = (PAST_KEY, PAST_VALUE)
PRESENT_KV = (PRESENT_KEY, PRESENT_VALUE)
# the step inputs that change from pass to pass (the rest is state, fixed for a whole block)
PER_PASS = (LATENTS, TIMESTEP, FRAME_OFFSET)
# a commit output's kind -> the step input it feeds at the next step (a state is bound as it, K/V appended to it)
_PAST_OF_PRESENT = {PRESENT_STATE: PAST_STATE, PRESENT_KEY: PAST_KEY, PRESENT_VALUE: PAST_VALUE}
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
    """Names, shapes and dtypes of every input and output of the three step graphs for one model and precision.

    ``dtype`` is the activation precision (weights, K/V caches, context K/V); GDN states are always fp32 (float64
    for a float64 reference), as are latents, timesteps and velocities at the graph boundary.
    """

    config: ModelConfig
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise Arl2rtError(f"precision {self.dtype!r}: expected one of {sorted(_DTYPES)}")

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
            raise Arl2rtError(f"tensor {present}: expected a commit output, found a {s.kind}")
        return self.name(_PAST_OF_PRESENT[s.kind], s.layer)

    def present_of(self, past: str) -> str:
        """``past_state.3`` -> ``present_state.3``: the commit output that becomes this step input (the reverse)."""
        s = self.tensor(past)
        present = next((p for p, q in _PAST_OF_PRESENT.items() if q == s.kind), None)
        if present is None:
            raise Arl2rtError(f"tensor {past}: expected a past state or past K/V, found a {s.kind}")
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
        """Every tensor of the three graphs, each once (context K/V are an output of one graph, inputs of two)."""
        return list(self._by_name.values())

    @cached_property
    def _by_name(self) -> dict[str, TensorSpec]:
        # cached_property writes the instance __dict__ directly, which a frozen dataclass allows
        seen: dict[str, TensorSpec] = {}
        for graph in GRAPHS:
            for s in (*self.inputs(graph), *self.outputs(graph)):
                seen.setdefault(s.name, s)
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

    def inputs(self, graph: str) -> list[TensorSpec]:
        _check_graph(graph)
        return [self.context()] if graph == "encode_context" else self.step_inputs()

    def outputs(self, graph: str) -> list[TensorSpec]:
        _check_graph(graph)
        return {
            "encode_context": self.context_kv,
            "denoise_step": lambda: [self.velocity()],
            "commit_step": self.commit_outputs,
        }[graph]()

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

    # -- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        def tensors(specs):
            return [
                {"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "kind": s.kind, "layer": s.layer}
                for s in specs
            ]

        return {
            "dtype": self.dtype,
            "graphs": {g: {"inputs": tensors(self.inputs(g)), "outputs": tensors(self.outputs(g))} for g in GRAPHS},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _check_graph(graph: str) -> None:
    if graph not in GRAPHS:
        raise Arl2rtError(f"unknown step graph {graph!r}; expected one of {list(GRAPHS)}")
