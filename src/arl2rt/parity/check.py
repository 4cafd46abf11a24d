"""Library side of ``arl2rt parity``: build the float64 reference and the candidate, stream, compare, hand off.

The candidate is the torch backend at a precision, or a package backend (onnxruntime; tensorrt where TensorRT is
installed) on a model package: one given with ``package``, or one exported from the same model for ``target``/``dtype``
(into a temporary directory, or into ``save_polygraphy/package`` when the polygraphy hand-off needs the graphs to stay).
A given package must hold the reference's config and weights (its manifest's digest of them), and every tolerance
name must be a tensor or kind the comparison sees: either mistake is refused before anything runs.
"""

from __future__ import annotations

import copy
import itertools
import tempfile
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.provenance import check_same_weights
from arl2rt.export.state_spec import StateSpec
from arl2rt.model.dit import CausalDiT
from arl2rt.parity.compare import Tolerances, check_tolerance_names
from arl2rt.parity.result import MODES, ParityResult
from arl2rt.parity.runner import run_parity
from arl2rt.runtime.backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    backend_class,
    backend_entry,
    check_target,
    make_backend,
    resolve_device,
)
from arl2rt.runtime.trt.profiles import stream_max_frames

Progress = Callable[[int, int | None, str], None]  # (done, total, what): export stages, then streamed blocks


@dataclass
class ParityReport:
    result: ParityResult
    package: Path | None  # the ONNX package the candidate ran (None for the torch backend)
    polygraphy: dict[str, dict] | None  # graph -> files and commands, when saved

    def to_dict(self) -> dict:
        out = self.result.to_dict()
        out["package"] = str(self.package) if self.package else None
        out["polygraphy"] = self.polygraphy
        return out


def _package(
    model: CausalDiT,
    package: Path | None,
    target: str,
    dtype: str | None,
    export_dir: Path,
    source: str | None,
    progress: Progress,
):
    from arl2rt.export.package import ModelPackage, export_package

    if package is None:
        # overwrite only ever replaces an arl2rt package (the one an earlier --save-polygraphy run wrote there)
        dtype = dtype or "float32"
        return export_package(
            model,
            export_dir,
            target=target,
            dtype=dtype,
            overwrite=True,
            source=source,
            progress=lambda done, total, stage: progress(done, total, f"export: {stage}"),
        )
    loaded = ModelPackage.load(package)
    if loaded.config != model.cfg:
        raise Arl2rtError(
            f"package {package}: exported for config {loaded.config.name!r}, but the reference model is "
            f"{model.cfg.name!r} (configs differ)"
        )
    if dtype is not None and loaded.spec.dtype != dtype:
        raise Arl2rtError(f"package {package} holds {loaded.spec.dtype} graphs; expected --dtype {dtype}")
    check_same_weights(loaded.manifest, package, model, source)
    return loaded


def check_parity(
    model: CausalDiT,
    context: torch.Tensor,
    *,
    backend: str = DEFAULT_BACKEND["package"],
    target: str | None = None,
    dtype: str | None = None,
    package: Path | None = None,
    blocks: int = 16,
    seed: int = 0,
    modes: Iterable[str] = MODES,
    atol: dict[str, float] | None = None,
    rtol: dict[str, float] | None = None,
    device: str | None = None,
    save_polygraphy: Path | None = None,
    polygraphy_block: int | None = None,
    progress: Progress | None = None,
    source: str | None = None,
) -> ParityReport:
    """Stream ``blocks`` blocks of ``model`` on the float64 torch reference and on the candidate; compare each step.

    ``dtype`` is the candidate's precision: default float32, or a given package's own (naming another is an
    error). ``atol``/``rtol`` override the defaults of that precision per tensor name or kind (key ``""``: default).
    ``target`` and ``device`` default to the backend's own (:data:`~arl2rt.runtime.backends.BACKENDS`); ``device``
    ``auto`` picks the best one here. The reference runs on the same device. ``source`` says where ``model``'s
    weights come from (``checkpoint PATH``, ``random weights of seed 0``), for the messages. ``progress(done, total,
    what)`` is told of each export stage (when a package is made) and of each block streamed.
    """
    report = progress or (lambda done, total, what: None)
    streamed = itertools.count(1)
    entry = backend_entry(backend, "parity backend")
    for option, table in (("--atol", atol), ("--rtol", rtol)):
        check_tolerance_names(table or {}, StateSpec(model.cfg), option)
    if entry.runs == "model" and (package is not None or save_polygraphy is not None):
        onnx = " or ".join(name for name, b in BACKENDS.items() if b.runs == "package")
        raise Arl2rtError(f"--package and --save-polygraphy need ONNX graphs: use --backend {onnx}")
    target = target or entry.default_target
    if entry.runs == "package" and package is None:
        check_target(backend, target, "--target")
    device = resolve_device(backend, device)
    backend_class(backend)  # a missing backend fails now, not after an export
    engine_options = None
    if entry.flavours:  # TensorRT engines are built for a profile: this stream's (as `arl2rt generate` asks)
        engine_options = {"max_frames": stream_max_frames(model.cfg, blocks), "max_batch": context.shape[0]}
    capture = None
    if save_polygraphy is not None:
        capture = blocks - 1 if polygraphy_block is None else polygraphy_block
    with ExitStack() as stack:
        package_path = None
        if entry.runs == "model":
            # each torch backend gets its own copy: TorchBackend casts the module it is given in place
            candidate = make_backend(backend, model=copy.deepcopy(model), dtype=dtype or "float32", device=device)
        else:
            if save_polygraphy is not None and package is None:
                export_dir = save_polygraphy / "package"
            else:
                export_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="arl2rt-parity-"))) / "pkg"
            pkg = _package(model, package, target, dtype, export_dir, source, report)
            if package is not None:
                check_target(backend, pkg.target, f"package {package}: target")
            package_path = pkg.root
            candidate = make_backend(backend, package=pkg, device=device, options=engine_options)
        reference = make_backend(DEFAULT_BACKEND["model"], model=copy.deepcopy(model), dtype="float64", device=device)
        stack.enter_context(reference)
        stack.enter_context(candidate)
        tolerances = Tolerances.for_dtype(candidate.spec.dtype, atol, rtol)
        result, captures = run_parity(
            reference,
            candidate,
            context,
            blocks=blocks,
            seed=seed,
            modes=modes,
            tolerances=tolerances,
            capture_block=capture,
            progress=lambda: report(next(streamed), blocks, "blocks streamed"),
        )
        saved = None
        if save_polygraphy is not None:
            from arl2rt.parity.polygraphy_io import save_polygraphy as save

            saved = save(save_polygraphy, captures, candidate.spec, tolerances, package_path)
        return ParityReport(result, package_path if package is not None or saved else None, saved)
