"""The state contract: every tensor that crosses a step boundary, written once and read by exporter, backends, parity.

Three graphs make one AR block (DESIGN.md "The state contract"):

* ``encode_context``: ``context`` -> ``context_key.{i}``, ``context_value.{i}`` for every layer (once per prompt);
* ``denoise_step``: latents, timestep, frame offset, context K/V, ``past_state.{i}`` (hybrid layers) and
  ``past_key.{i}``/``past_value.{i}`` (softmax layers) -> ``velocity``; states are read only;
* ``commit_step``: the same inputs at t = 0 -> ``present_state.{i}`` and the block's ``present_key.{i}`` /
  ``present_value.{i}``; the runtime binds present as the next past (ping-pong) or appends K/V to its cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.model.config import ModelConfig

BATCH = "batch"
PAST_LEN = "past_len"
GRAPHS = ("encode_context", "denoise_step", "commit_step")

_DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DTYPES_ALL = {**_DTYPES, "int64": torch.int64}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES_ALL[name]
    except KeyError:
        raise Arl2rtError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES_ALL)}") from None


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

    # -- tensors -------------------------------------------------------------------------------------------------
    def context(self) -> TensorSpec:
        c = self.config
        return TensorSpec("context", (BATCH, c.text_len, c.text_dim), self.io_dtype, "context")

    def context_kv(self) -> list[TensorSpec]:
        c = self.config
        shape = (BATCH, c.text_len, c.num_heads, c.head_dim)
        return [
            TensorSpec(f"context_{kv}.{i}", shape, self.dtype, f"context_{kv}", i)
            for i in range(c.num_layers)
            for kv in ("key", "value")
        ]

    def step_inputs(self) -> list[TensorSpec]:
        """Inputs of ``denoise_step`` and ``commit_step`` (identical), in graph order."""
        c = self.config
        f = c.frames_per_block
        past = (BATCH, PAST_LEN, c.num_heads, c.head_dim)
        specs = [
            TensorSpec("latents", (BATCH, c.in_channels, f, c.latent_height, c.latent_width), self.io_dtype, "latents"),
            TensorSpec("timestep", (BATCH, f), self.io_dtype, "timestep"),
            TensorSpec("frame_offset", (), "int64", "frame_offset"),
            *self.context_kv(),
        ]
        specs += [self._state("past_state", i) for i in c.hybrid_layers]
        for i in c.softmax_layers:
            specs += [TensorSpec(f"past_{kv}.{i}", past, self.dtype, f"past_{kv}", i) for kv in ("key", "value")]
        return specs

    def _state(self, prefix: str, layer: int) -> TensorSpec:
        c = self.config
        return TensorSpec(
            f"{prefix}.{layer}", (BATCH, c.num_heads, c.head_dim, c.head_dim), self.io_dtype, prefix, layer
        )

    def velocity(self) -> TensorSpec:
        c = self.config
        shape = (BATCH, c.out_channels, c.frames_per_block, c.latent_height, c.latent_width)
        return TensorSpec("velocity", shape, self.io_dtype, "velocity")

    def commit_outputs(self) -> list[TensorSpec]:
        c = self.config
        block = (BATCH, c.tokens_per_block, c.num_heads, c.head_dim)
        specs = [self._state("present_state", i) for i in c.hybrid_layers]
        for i in c.softmax_layers:
            specs += [TensorSpec(f"present_{kv}.{i}", block, self.dtype, f"present_{kv}", i) for kv in ("key", "value")]
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

    def past_of(self, present: str) -> str:
        """``present_state.3`` -> ``past_state.3``: the input a commit output is bound to at the next step."""
        return present.replace("present_", "past_", 1)

    # -- memory --------------------------------------------------------------------------------------------------
    def state_bytes(self, batch: int = 1) -> int:
        """Bytes of the constant-size recurrent state per stream (all GDN states)."""
        return sum(s.nbytes(batch=batch) for s in self.step_inputs() if s.kind == "past_state")

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
