"""Engine building as small lazy loaders (polygraphy's ``backend/trt/loader.py`` habit): parse, configure, build.

Each loader is a callable object holding its settings; nothing happens until it is called, and loaders nest::

    engine = EngineBytes(NetworkFromOnnx(flavour, path), CreateConfig(flavour, profiles, timing_cache=b""))()

Networks are always created ``STRONGLY_TYPED`` (TensorRT 11 has no other kind): the ONNX dtypes are the precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import StateSpec
from arl2rt.runtime.trt.flavour import Flavour, rtx_capabilities

Progress = Callable[[str], None]

# TensorRT DataType member name -> StateSpec dtype name
DTYPE_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32"}


def make_logger(flavour: Flavour, progress: Progress | None = None) -> Any:
    """A TensorRT ILogger that keeps warnings and errors (for error messages) and passes errors to ``progress``."""
    trt = flavour.module

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity, msg):  # noqa: D401 - TensorRT's callback
            if severity <= trt.ILogger.Severity.WARNING:
                self.messages.append((severity.name, msg))
                if progress is not None and severity <= trt.ILogger.Severity.ERROR:
                    progress(f"TensorRT {severity.name.lower()}: {msg}")

        def errors(self) -> list[str]:
            return [m for s, m in self.messages if s in ("ERROR", "INTERNAL_ERROR")]

    return _Logger()


def make_progress_monitor(flavour: Flavour, progress: Progress) -> Any:
    """An IProgressMonitor that reports each top-level build phase as it starts."""
    trt = flavour.module

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                progress(f"{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # never cancel

        def phase_finish(self, phase_name):
            return None

    return _Monitor()


@dataclass
class ParsedNetwork:
    """A parsed network and the objects that must outlive it (the parser owns the weights)."""

    builder: Any
    network: Any
    parser: Any
    logger: Any
    source: Path


class NetworkFromOnnx:
    """Parse an ONNX file (external data beside it) into a strongly typed network."""

    def __init__(self, flavour: Flavour, path: Path, progress: Progress | None = None) -> None:
        self.flavour, self.path, self.progress = flavour, Path(path), progress

    def __call__(self) -> ParsedNetwork:
        trt = self.flavour.module
        logger = make_logger(self.flavour, self.progress)
        builder = trt.Builder(logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        prefer_aot = getattr(trt.NetworkDefinitionCreationFlag, "PREFER_AOT_PYTHON_PLUGINS", None)
        if self.flavour.has_plugins and prefer_aot is not None:
            flags |= 1 << int(prefer_aot)  # AOT plugin kernels: the engine then runs without Python
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(self.path)):
            errors = [parser.get_error(i) for i in range(parser.num_errors)]
            detail = "; ".join(f"node {e.node_name() or e.node()} ({e.node_operator()}): {e.desc()}" for e in errors)
            raise Arl2rtError(f"{self.path}: {self.flavour.name} {self.flavour.version} cannot parse it: {detail}")
        return ParsedNetwork(builder, network, parser, logger, self.path)


@dataclass
class CreateConfig:
    """Builder configuration: one optimization profile, timing cache, RTX targets, progress, optimization level and
    preview features (``ALIASED_PLUGIN_IO_10_03`` for in-place plugin outputs)."""

    flavour: Flavour
    profiles: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
    timing_cache: bytes | None = None
    compute_capabilities: tuple[str, ...] = ()
    optimization_level: int | None = None
    progress: Progress | None = None
    preview_features: tuple[str, ...] = ()
    _keep: list = field(default_factory=list, repr=False)

    def __call__(self, parsed: ParsedNetwork) -> Any:
        config = parsed.builder.create_builder_config()
        profile = parsed.builder.create_optimization_profile()
        for name, (lo, opt, hi) in self.profiles.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        if self.timing_cache is not None:
            cache = config.create_timing_cache(self.timing_cache)
            if cache is None or not config.set_timing_cache(cache, False):
                # an unreadable or foreign timing cache only costs tuning time: start an empty one
                cache = config.create_timing_cache(b"")
                config.set_timing_cache(cache, False)
            self._keep.append(cache)  # must outlive the build
        if self.compute_capabilities:
            ccs = rtx_capabilities(self.flavour, self.compute_capabilities)
            config.num_compute_capabilities = len(ccs)
            for i, cc in enumerate(ccs):
                config.set_compute_capability(cc, i)
        if self.optimization_level is not None:
            config.builder_optimization_level = self.optimization_level
        for name in self.preview_features:
            config.set_preview_feature(getattr(self.flavour.module.PreviewFeature, name), True)
        if self.progress is not None:
            monitor = make_progress_monitor(self.flavour, self.progress)
            self._keep.append(monitor)
            config.progress_monitor = monitor
        return config


@dataclass
class BuiltEngine:
    plan: bytes
    timing_cache: bytes | None


class EngineBytes:
    """Build a serialized engine (and the updated timing cache) from a network loader and a config loader."""

    def __init__(self, network: Callable[[], ParsedNetwork], config: CreateConfig) -> None:
        self.network, self.config = network, config

    def __call__(self) -> BuiltEngine:
        parsed = self.network()
        config = self.config(parsed)
        plan = parsed.builder.build_serialized_network(parsed.network, config)
        if plan is None:
            errors = "; ".join(parsed.logger.errors()) or "no message"
            raise Arl2rtError(f"{parsed.source}: {self.config.flavour.name} build failed: {errors}")
        timing = None
        if self.config.timing_cache is not None:
            cache = config.get_timing_cache()
            timing = bytes(cache.serialize()) if cache is not None else None
        return BuiltEngine(bytes(plan), timing)


def network_io(network: Any) -> dict[str, list[dict]]:
    """The parsed network's inputs and outputs: name, shape (-1 = dynamic) and dtype (StateSpec names)."""

    def describe(t) -> dict:
        return {"name": t.name, "shape": list(t.shape), "dtype": DTYPE_NAMES.get(t.dtype.name, t.dtype.name.lower())}

    return {
        "inputs": [describe(network.get_input(i)) for i in range(network.num_inputs)],
        "outputs": [describe(network.get_output(i)) for i in range(network.num_outputs)],
    }


def expected_io(spec: StateSpec, graph: str) -> dict[str, list[dict]]:
    """What :func:`network_io` must return for ``graph``: the StateSpec, symbolic dims as -1."""

    def describe(s) -> dict:
        return {"name": s.name, "shape": [d if isinstance(d, int) else -1 for d in s.shape], "dtype": s.dtype}

    return {"inputs": [describe(s) for s in spec.inputs(graph)], "outputs": [describe(s) for s in spec.outputs(graph)]}


def check_network_io(found: dict[str, list[dict]], spec: StateSpec, graph: str, source: Path) -> None:
    """Raise an Arl2rtError naming the first tensor whose name, shape or dtype differs from the StateSpec."""
    want = expected_io(spec, graph)
    for kind in ("inputs", "outputs"):
        names_want = [t["name"] for t in want[kind]]
        names_found = [t["name"] for t in found[kind]]
        if names_want != names_found:
            raise Arl2rtError(f"{source}: network {kind} of {graph}: expected {names_want}, found {names_found}")
        for w, f in zip(want[kind], found[kind]):
            if w != f:
                raise Arl2rtError(
                    f"{source}: tensor {w['name']}: expected shape {w['shape']} {w['dtype']}, "
                    f"found {f['shape']} {f['dtype']} (-1 = dynamic)"
                )
