"""The Backend protocol: run one step graph with named tensors. The Streamer drives any backend through it.

As polygraphy's runners do, the public verbs check state and validate feeds against the StateSpec, then call the
``*_impl`` a subclass writes; resources exist only between ``activate`` and ``deactivate`` (or inside ``with``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import BATCH, StateSpec, TensorSpec


class Backend(ABC):
    name: str = "backend"

    def __init__(self, spec: StateSpec, device: torch.device | str = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.is_active = False

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def activate(self) -> Backend:
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- running -------------------------------------------------------------------------------------------------
    def run(
        self, graph: str, feeds: dict[str, torch.Tensor], out: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Run ``graph`` on ``feeds`` (name -> tensor on this backend's device); returns name -> output tensor.

        ``out`` optionally maps output names to preallocated buffers the backend may write into (ping-pong states).
        """
        if not self.is_active:
            raise Arl2rtError(f"backend {self.name} is not active: use it as a context manager or call activate()")
        self.check_feeds(graph, feeds)
        return self.run_impl(graph, feeds, out or {})

    def check_feeds(self, graph: str, feeds: dict[str, torch.Tensor]) -> None:
        specs = self.spec.inputs(graph)
        names = {s.name for s in specs}
        missing, extra = sorted(names - set(feeds)), sorted(set(feeds) - names)
        if missing or extra:
            raise Arl2rtError(f"{graph}: missing inputs {missing}, unexpected inputs {extra}")
        dims: dict[str, int] = {}
        for s in specs:
            for want, got in zip(s.shape, feeds[s.name].shape):
                if isinstance(want, str):
                    dims.setdefault(want, got)
            s.check(feeds[s.name], **dims)
        if dims.get(BATCH, 1) < 1:
            raise Arl2rtError(f"{graph}: batch size must be >= 1, found {dims[BATCH]}")

    def output_buffer(self, spec: TensorSpec, shape: tuple[int, ...], given: torch.Tensor | None) -> torch.Tensor:
        """Where a backend writes output ``spec``: ``given`` (e.g. the StateStore's ping-pong spare) when it fits as
        is — shape, dtype, device, contiguous — else a new tensor."""
        if (
            given is not None
            and tuple(given.shape) == tuple(shape)
            and given.dtype == spec.torch_dtype
            and given.device == self.device
            and given.is_contiguous()
        ):
            return given
        return torch.empty(shape, dtype=spec.torch_dtype, device=self.device)

    @abstractmethod
    def activate_impl(self) -> None: ...

    def deactivate_impl(self) -> None:
        return None

    @abstractmethod
    def run_impl(
        self, graph: str, feeds: dict[str, torch.Tensor], out: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]: ...
