"""Comparing one candidate tensor against its reference: metrics, per-tensor tolerances, and the pass rule.

Modelled on polygraphy's ``CompareFunc.simple``: :func:`compare_func` is a factory that takes per-tensor tolerances
(key ``""`` is the default) and returns a function ``(name, reference, candidate) -> TensorMetrics``. An element fails
when its absolute difference exceeds ``atol`` *and* its relative difference exceeds ``rtol`` (polygraphy's
"elemwise" rule, so ``polygraphy run --atol/--rtol`` and ``arl2rt parity --atol/--rtol`` mean the same thing).

A tolerance key is a full tensor name (``present_state.2``), a kind (``present_state``: every layer's state; see
:func:`arl2rt.export.state_spec.kind_of`) or ``""``. The most specific key wins. A key that names no compared tensor
(a typo) would silently enforce nothing, so :func:`check_tolerance_names` refuses it and lists the valid ones.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import GRAPHS, LATENTS, PRESENT_STATE, StateSpec, kind_of

# Element-wise relative differences divide by |reference|; zeros get this epsilon (as polygraphy does).
_REL_EPS = 2.220446049250313e-16

# Default tolerances per candidate precision (reference: float64), set from the worst errors measured by
# benchmarks/parity_tiny.py (tiny config, 16 and 64 blocks, results/parity_tiny.md): about 10x above them for outputs
# and 6-8x for the recurrent state, which carries every earlier block into the next and so is held tighter.
# They are a correctness check for that model size; a larger model may need --atol/--rtol.
DEFAULT_TOLERANCES: dict[str, dict[str, dict[str, float]]] = {
    "float64": {"atol": {"": 1e-10}, "rtol": {"": 1e-10}},
    "float32": {"atol": {"": 5e-5, PRESENT_STATE: 2e-5}, "rtol": {"": 1e-4, PRESENT_STATE: 1e-4}},
    "float16": {"atol": {"": 5e-2, PRESENT_STATE: 2e-2}, "rtol": {"": 5e-2, PRESENT_STATE: 2e-2}},
    "bfloat16": {"atol": {"": 4e-1, PRESENT_STATE: 2e-1}, "rtol": {"": 2e-1, PRESENT_STATE: 1e-1}},
}


@dataclass(frozen=True)
class TensorMetrics:
    """How far a candidate tensor is from its reference (all computed in float64).

    ``max_rel`` is the element-wise maximum of ``|c - r| / |r|`` (polygraphy's; huge where ``r`` is near zero);
    ``peak_rel`` is ``max |c - r| / max |r|``, the largest error relative to the tensor's range; ``rel_l2`` is
    ``||c - r|| / ||r||`` (flash-linear-attention's RMS ratio); ``psnr`` uses ``max |r|`` as the peak.
    ``mismatches`` counts elements failing the ``atol``/``rtol`` rule; ``passed`` is no mismatch and all finite.
    """

    max_abs: float
    max_rel: float
    peak_rel: float
    rel_l2: float
    cosine: float
    psnr: float
    finite: bool
    mismatches: int
    atol: float
    rtol: float

    @property
    def passed(self) -> bool:
        return self.finite and self.mismatches == 0

    def to_dict(self) -> dict:
        return {k: json_float(v) for k, v in asdict(self).items()} | {"passed": self.passed}


def json_float(value):
    """JSON has no inf/nan: write them as strings (``"inf"``), keep everything else."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def tensor_metrics(reference: torch.Tensor, candidate: torch.Tensor, atol: float, rtol: float) -> TensorMetrics:
    """Metrics of ``candidate`` against ``reference`` (same shape; any dtypes and devices)."""
    if tuple(reference.shape) != tuple(candidate.shape):
        raise Arl2rtError(f"cannot compare: reference shape {list(reference.shape)}, candidate {list(candidate.shape)}")
    r = reference.detach().to("cpu", torch.float64).flatten()
    c = candidate.detach().to("cpu", torch.float64).flatten()
    finite = bool(torch.isfinite(c).all())
    if r.numel() == 0:
        return TensorMetrics(0.0, 0.0, 0.0, 0.0, 1.0, math.inf, finite, 0, atol, rtol)
    diff = (c - r).abs()
    denom = r.abs().clamp_min(_REL_EPS)
    rel = diff / denom
    r_norm, c_norm = float(r.norm()), float(c.norm())
    err_norm = float(diff.norm())
    mse = float((diff * diff).mean())
    peak = float(r.abs().max())
    bad = ((diff > atol) | diff.isnan()) & ((rel > rtol) | rel.isnan())
    return TensorMetrics(
        max_abs=float(diff.max()),
        max_rel=float(rel.max()),
        peak_rel=_ratio(float(diff.max()), peak),
        rel_l2=_ratio(err_norm, r_norm),
        cosine=_cosine(r, c, r_norm, c_norm),
        psnr=math.inf if mse == 0 else (20 * math.log10(peak) - 10 * math.log10(mse) if peak > 0 else -math.inf),
        finite=finite,
        mismatches=int(bad.sum()),
        atol=atol,
        rtol=rtol,
    )


def _ratio(err: float, scale: float) -> float:
    """``err / scale``; against an all-zero reference: 0 for no error, else inf (NaN stays NaN)."""
    if scale > 0:
        return err / scale
    if math.isnan(err):
        return err
    return 0.0 if err == 0 else math.inf


def _cosine(r: torch.Tensor, c: torch.Tensor, r_norm: float, c_norm: float) -> float:
    if r_norm == 0 and c_norm == 0:
        return 1.0
    if r_norm == 0 or c_norm == 0:
        return 0.0
    return float(torch.dot(r, c)) / (r_norm * c_norm)


@dataclass(frozen=True)
class Tolerances:
    """Per-tensor ``atol``/``rtol``: keys are tensor names, kinds (``present_state``) or ``""`` (the default)."""

    atol: Mapping[str, float]
    rtol: Mapping[str, float]

    def __post_init__(self) -> None:
        for which, table in (("atol", self.atol), ("rtol", self.rtol)):
            if "" not in table:
                raise Arl2rtError(f"{which} tolerances {dict(table)}: expected a default (key '')")
            bad = {k: v for k, v in table.items() if not (isinstance(v, (int, float)) and v >= 0)}
            if bad:
                raise Arl2rtError(f"{which} tolerances {bad}: expected non-negative numbers")

    @classmethod
    def for_dtype(
        cls, dtype: str, atol: Mapping[str, float] | None = None, rtol: Mapping[str, float] | None = None
    ) -> Tolerances:
        """The defaults for a candidate precision, overridden key by key by ``atol``/``rtol``."""
        if dtype not in DEFAULT_TOLERANCES:
            raise Arl2rtError(f"no default tolerances for dtype {dtype!r}; expected one of {list(DEFAULT_TOLERANCES)}")
        base = DEFAULT_TOLERANCES[dtype]
        return cls({**base["atol"], **(atol or {})}, {**base["rtol"], **(rtol or {})})

    def lookup(self, name: str) -> tuple[float, float]:
        return _pick(self.atol, name), _pick(self.rtol, name)

    def to_dict(self) -> dict:
        return {"atol": dict(self.atol), "rtol": dict(self.rtol)}


def _pick(table: Mapping[str, float], name: str) -> float:
    for key in (name, kind_of(name), ""):
        if key in table:
            return float(table[key])
    raise AssertionError("unreachable: Tolerances requires a default")


def parse_tolerances(values: Iterable[str], option: str) -> dict[str, float]:
    """``["1e-4", "present_state:1e-5"]`` -> ``{"": 1e-4, "present_state": 1e-5}`` (polygraphy's ``name:value``)."""
    table: dict[str, float] = {}
    for item in values:
        name, _, number = item.rpartition(":")
        try:
            value = float(number)
        except ValueError:
            raise Arl2rtError(
                f"{option} {item!r}: expected VALUE or NAME:VALUE with a number, found {number!r}"
            ) from None
        if not value >= 0:
            raise Arl2rtError(f"{option} {item!r}: expected a non-negative tolerance, found {value}")
        table[name] = value
    return table


def compared_names(spec: StateSpec) -> list[str]:
    """Every tensor parity compares: each graph's outputs, and the step input ``latents`` (drift mode)."""
    return sorted({LATENTS, *(s.name for g in GRAPHS for s in spec.outputs(g))})


def check_tolerance_names(table: Mapping[str, float], spec: StateSpec, option: str) -> None:
    """Raise unless every key of ``table`` is ``""``, a compared tensor of ``spec`` or the kind of one."""
    names = compared_names(spec)
    valid = {"", *names, *map(kind_of, names)}
    unknown = [key for key in table if key not in valid]
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(key, sorted(valid - {""}), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise Arl2rtError(
        f"{option} {key}:{table[key]:g}: config {spec.config.name} has no compared tensor or kind {key!r}{hint}; "
        f"expected a kind or one of its tensors: {_describe(names)}"
    )


def _describe(names: list[str]) -> str:
    """``context_key.{0-3}, latents, present_state.{0-2}``: each kind with the layers it has."""
    layers: dict[str, list[int]] = {}
    for name in names:
        kind, _, layer = name.partition(".")
        layers.setdefault(kind, [])
        if layer:
            layers[kind].append(int(layer))
    return ", ".join(f"{kind}.{{{_spans(sorted(ls))}}}" if ls else kind for kind, ls in sorted(layers.items()))


def _spans(values: list[int]) -> str:
    spans, start = [], values[0]
    for prev, cur in zip(values, [*values[1:], None]):
        if cur != prev + 1:
            spans.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ",".join(spans)


CompareFunc = Callable[[str, torch.Tensor, torch.Tensor], TensorMetrics]


def compare_func(tolerances: Tolerances) -> CompareFunc:
    """A comparison function with these per-tensor tolerances: ``(name, reference, candidate) -> TensorMetrics``."""

    def compare(name: str, reference: torch.Tensor, candidate: torch.Tensor) -> TensorMetrics:
        atol, rtol = tolerances.lookup(name)
        return tensor_metrics(reference, candidate, atol, rtol)

    return compare
