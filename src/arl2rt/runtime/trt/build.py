"""Library side of ``arl2rt build``: TensorRT engines for every step graph of a package, through the cache.

The graphs are ``package.spec.graphs``: the DiT's three, and the VAE decoder's ``decode_first`` / ``decode_step`` when
the package has one. One call parses each graph, checks the parsed network's inputs and outputs against the StateSpec,
builds it with an optimization profile over its symbolic dims (``batch`` and ``past_len`` for the DiT's; only
``batch`` for the decode graphs, whose latents and caches are fixed by the config) and stores the engines as one cache
entry. A cache hit skips all of it; a corrupt entry is reported and rebuilt. A backend about to run a stream takes any
entry that serves it (``reuse_wider``: wider profiles, any optimization level) before building one.

The key holds the plugin sources' digest for a ``tensorrt`` package; for JIT plugins also the Triton version, which
compiles their kernels at run time. AOT engines embed their PTX, so their key leaves Triton out and an engine built
with Triton is found where none is installed.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

import arl2rt
from arl2rt.errors import Arl2rtError
from arl2rt.files import sha256_file
from arl2rt.plugins.gdn.trt_config import plugin_sources_digest, triton_version, trt_plugin_config
from arl2rt.plugins.gdn.trt_register import register_trt_plugins
from arl2rt.runtime.trt.cache import CacheEntry, EngineCache
from arl2rt.runtime.trt.flavour import DEFAULT_FLAVOUR, Flavour, device_key, load_flavour
from arl2rt.runtime.trt.loaders import CreateConfig, EngineBytes, NetworkFromOnnx, check_network_io, network_io
from arl2rt.runtime.trt.profiles import dim_ranges, profile_shapes

Progress = Callable[[str], None]
_STANDARD_DOMAINS = ("", "ai.onnx")


def default_cache_dir() -> Path:
    """``$ARL2RT_CACHE_DIR``, else ``$XDG_CACHE_HOME/arl2rt/engines``, else ``~/.cache/arl2rt/engines``."""
    if os.environ.get("ARL2RT_CACHE_DIR"):
        return Path(os.environ["ARL2RT_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "arl2rt" / "engines"


def _load_proto(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any decode failure means the same thing to the user
        raise Arl2rtError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def graph_digest(path: Path, model: onnx.ModelProto, known: dict[Path, str] | None = None) -> str:
    """sha256 over the ONNX file and every external-data file it names (weights change the engine too).

    ``known`` memoises file hashes across graphs (a package's graphs share one weights file).
    """
    known = {} if known is None else known

    def digest(file: Path) -> str:
        if file not in known:
            known[file] = sha256_file(file)
        return known[file]

    h = hashlib.sha256(digest(path).encode())
    locations = sorted({ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)})
    for location in locations:
        data = path.parent / location
        if not data.is_file():
            raise Arl2rtError(f"{path}: external data file {location} not found beside it")
        h.update(location.encode() + digest(data).encode())
    return h.hexdigest()


def custom_nodes(model: onnx.ModelProto) -> list[str]:
    """``domain::op_type`` of every node outside the standard ONNX domains that no local function defines."""
    local = {(f.domain, f.name) for f in model.functions}
    found = set()

    def visit(nodes) -> None:
        for node in nodes:
            if node.domain not in _STANDARD_DOMAINS and (node.domain, node.op_type) not in local:
                found.add(f"{node.domain}::{node.op_type}")
            for attr in node.attribute:
                for graph in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    visit(graph.node)

    visit(model.graph.node)
    for function in model.functions:
        visit(function.node)
    return sorted(found)


@dataclass
class BuildResult:
    entry: CacheEntry
    status: str  # "hit", "built" or "rebuilt" (the old entry was corrupt)
    reason: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    networks: dict[str, dict] = field(default_factory=dict)  # graph -> parsed network I/O (built graphs only)


def _load_package(package: Any) -> Any:
    if isinstance(package, (str, Path)):
        from arl2rt.export.package import ModelPackage

        return ModelPackage.load(Path(package))
    return package


def engine_key(
    package: Any,
    flavour: Flavour,
    *,
    max_frames: int | None = None,
    max_batch: int = 1,
    compute_capabilities: tuple[str, ...] = (),
    optimization_level: int | None = None,
) -> tuple[dict, dict[str, onnx.ModelProto]]:
    """The cache key of a build, and the graphs' ONNX protos (without weights) read to make it."""
    flavour.check_target(package.target, str(package.root))
    ranges = dim_ranges(package.config, max_frames=max_frames, max_batch=max_batch)
    graphs = package.spec.graphs
    protos = {g: _load_proto(package.graph_path(g)) for g in graphs}
    known: dict[Path, str] = {package.weights_path: package.weights_digest} if package.weights_digest else {}
    key = {
        "flavour": flavour.name,
        "version": flavour.version,
        "device": device_key(flavour, compute_capabilities),
        "target": package.target,
        "precision": package.spec.dtype,
        "onnx": {g: graph_digest(package.graph_path(g), protos[g], known) for g in graphs},
        "plugin": {
            "sources": plugin_sources_digest(triton=package.plugin_mode != "aot"),
            "in_place_state": trt_plugin_config().in_place_state,
        }
        if package.target == "tensorrt"
        else None,
        "profiles": {
            g: {n: [list(s) for s in shapes] for n, shapes in profile_shapes(package.spec, g, ranges).items()}
            for g in graphs
        },
        "optimization_level": optimization_level,
    }
    return key, protos


def build_engines(
    package: Any,
    *,
    flavour: str | Flavour = DEFAULT_FLAVOUR,
    max_frames: int | None = None,
    max_batch: int = 1,
    cache_dir: Path | None = None,
    compute_capabilities: tuple[str, ...] = (),
    optimization_level: int | None = None,
    rebuild: bool = False,
    reuse_wider: bool = False,
    progress: Progress | None = None,
) -> BuildResult:
    """Engines for ``package`` (a ModelPackage or its directory) built by ``flavour`` "tensorrt" or "tensorrt-rtx".

    ``reuse_wider``: a cached entry whose engines serve this key (wider profiles, another optimization level) is a hit
    too (:meth:`EngineCache.find`), as a stream needs; ``arl2rt build`` builds exactly what it is asked for.
    """
    say = progress or (lambda msg: None)
    package = _load_package(package)
    flavour = flavour if isinstance(flavour, Flavour) else load_flavour(flavour)
    key, protos = engine_key(
        package,
        flavour,
        max_frames=max_frames,
        max_batch=max_batch,
        compute_capabilities=compute_capabilities,
        optimization_level=optimization_level,
    )
    cache = EngineCache(cache_dir or default_cache_dir())
    found = cache.find(key) if reuse_wider and not rebuild else cache.lookup(key)
    if found.status == "hit" and not rebuild:
        say(f"cache hit: {found.entry.path}")
        return BuildResult(found.entry, "hit")
    if found.status == "corrupt":
        say(f"cache entry corrupt, rebuilding: {found.reason}")
    if flavour.name == "tensorrt-rtx":
        for graph, proto in protos.items():
            plugin_nodes = custom_nodes(proto)
            if plugin_nodes:
                # TensorRT-RTX's parser aborts the process on a plugin node: refuse before it sees one
                raise Arl2rtError(
                    f"{package.graph_path(graph)}: expected only standard ONNX ops for tensorrt-rtx, found "
                    f"{plugin_nodes}; export with --target portable"
                )
    if package.target == "tensorrt":
        register_trt_plugins()  # the parser looks the plugin creators up; AOT plugins compile in aot_impl
    timing_path = None
    if flavour.name == "tensorrt":  # TensorRT-RTX has no timing cache (its calls are no-ops)
        timing_path = cache.timing_cache_path(flavour.name, flavour.version, key["device"]["compute_capability"])
    ranges = dim_ranges(package.config, max_frames=max_frames, max_batch=max_batch)
    engines, seconds, networks = {}, {}, {}
    for graph in package.spec.graphs:
        path = package.graph_path(graph)
        say(f"{graph}: parsing {path.name}")
        start = time.perf_counter()
        parsed = NetworkFromOnnx(flavour, path, say)()
        networks[graph] = network_io(parsed.network)
        check_network_io(networks[graph], package.spec, graph, path)
        timing = timing_path.read_bytes() if timing_path is not None and timing_path.is_file() else None
        config = CreateConfig(
            flavour,
            profile_shapes(package.spec, graph, ranges),
            timing_cache=(timing or b"") if timing_path is not None else None,
            compute_capabilities=compute_capabilities,
            optimization_level=optimization_level,
            progress=lambda msg, g=graph: say(f"{g}: {msg}"),
            preview_features=("ALIASED_PLUGIN_IO_10_03",) if key["plugin"] and key["plugin"]["in_place_state"] else (),
        )
        say(f"{graph}: building with {flavour.name} {flavour.version}")
        built = EngineBytes(lambda parsed=parsed: parsed, config)()
        if timing_path is not None and built.timing_cache:
            cache.save_timing_cache(timing_path, built.timing_cache)
        engines[graph] = built.plan
        seconds[graph] = round(time.perf_counter() - start, 3)
        say(f"{graph}: {len(built.plan)} bytes in {seconds[graph]:.1f} s")
    info = {"build_seconds": seconds, "arl2rt_version": arl2rt.__version__, "package": str(package.root)}
    if package.target == "tensorrt":
        info["triton"] = triton_version()  # what compiled the plugin kernels (AOT keys leave it out)
    entry = cache.store(key, engines, info)
    status = "rebuilt" if found.status == "corrupt" else "built"
    return BuildResult(entry, status, found.reason, seconds, networks)
