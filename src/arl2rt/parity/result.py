"""Parity results: one record per compared step, the drift curve over blocks, the first failure, JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from arl2rt.parity.compare import TensorMetrics, Tolerances, json_float

# Two ways to compare a stream (see arl2rt.parity.runner): "drift" runs two independent streams from the same seed and
# measures how far the candidate wanders over blocks; "step" feeds the candidate the reference's exact inputs at every
# step (teacher forcing) and so isolates the error one step adds.
MODES = ("drift", "step")


@dataclass(frozen=True)
class StepResult:
    """The comparison of one step (graph run) of one block in one mode; ``tensors`` in graph output order."""

    mode: str
    graph: str
    block: int
    pass_index: int
    tensors: dict[str, TensorMetrics]

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.tensors.values())

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "graph": self.graph,
            "block": self.block,
            "pass": self.pass_index,
            "passed": self.passed,
            "tensors": {name: m.to_dict() for name, m in self.tensors.items()},
        }


@dataclass(frozen=True)
class BlockDrift:
    """One point of the drift curve: the worst value of each metric over every tensor of every step of a block."""

    mode: str
    block: int
    max_abs: float
    max_rel: float
    peak_rel: float
    rel_l2: float
    min_cosine: float
    min_psnr: float
    worst_tensor: str
    passed: bool

    def to_dict(self) -> dict:
        return {k: json_float(v) for k, v in self.__dict__.items()}


@dataclass
class ParityResult:
    """Everything one parity run measured, in the order the steps ran."""

    reference: str
    candidate: str
    blocks: int
    seed: int
    modes: tuple[str, ...]
    tolerances: Tolerances
    steps: list[StepResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.steps)

    def first_failure(self) -> dict | None:
        """The first step (in run order) with a failing tensor, and that tensor's metrics."""
        for step in self.steps:
            for name, m in step.tensors.items():
                if not m.passed:
                    return {
                        "mode": step.mode,
                        "graph": step.graph,
                        "block": step.block,
                        "pass": step.pass_index,
                        "tensor": name,
                        **m.to_dict(),
                    }
        return None

    def drift(self, mode: str) -> list[BlockDrift]:
        """The drift curve of ``mode``: one point per block (``encode_context`` counts as block 0)."""
        by_block: dict[int, list[tuple[str, TensorMetrics]]] = {}
        for step in self.steps:
            if step.mode == mode:
                by_block.setdefault(step.block, []).extend(step.tensors.items())
        curve = []
        for block, items in sorted(by_block.items()):
            worst_name, _ = max(items, key=lambda item: _nan_high(item[1].rel_l2))
            curve.append(
                BlockDrift(
                    mode=mode,
                    block=block,
                    max_abs=max(_nan_high(m.max_abs) for _, m in items),
                    max_rel=max(_nan_high(m.max_rel) for _, m in items),
                    peak_rel=max(_nan_high(m.peak_rel) for _, m in items),
                    rel_l2=max(_nan_high(m.rel_l2) for _, m in items),
                    min_cosine=min(_nan_low(m.cosine) for _, m in items),
                    min_psnr=min(_nan_low(m.psnr) for _, m in items),
                    worst_tensor=worst_name,
                    passed=all(m.passed for _, m in items),
                )
            )
        return curve

    def summary(self) -> dict[str, dict]:
        """Per mode: the worst of each metric over the whole run (the numbers a support table quotes)."""
        out = {}
        for mode in self.modes:
            curve = self.drift(mode)
            if not curve:
                continue
            out[mode] = {
                "max_abs": json_float(max(p.max_abs for p in curve)),
                "max_rel": json_float(max(p.max_rel for p in curve)),
                "peak_rel": json_float(max(p.peak_rel for p in curve)),
                "rel_l2": json_float(max(p.rel_l2 for p in curve)),
                "min_cosine": json_float(min(p.min_cosine for p in curve)),
                "min_psnr": json_float(min(p.min_psnr for p in curve)),
                "steps": sum(1 for s in self.steps if s.mode == mode),
                "failed_steps": sum(1 for s in self.steps if s.mode == mode and not s.passed),
            }
        return out

    def to_dict(self) -> dict:
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            "blocks": self.blocks,
            "seed": self.seed,
            "modes": list(self.modes),
            "tolerances": self.tolerances.to_dict(),
            "passed": self.passed,
            "first_failure": self.first_failure(),
            "summary": self.summary(),
            "drift": {mode: [p.to_dict() for p in self.drift(mode)] for mode in self.modes},
            "steps": [s.to_dict() for s in self.steps],
        }


def _nan_high(x: float) -> float:
    """NaN sorts as the worst error."""
    return math.inf if math.isnan(x) else x


def _nan_low(x: float) -> float:
    """NaN sorts as the worst similarity."""
    return -math.inf if math.isnan(x) else x
