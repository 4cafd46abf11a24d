"""Model packages: a directory with the step graphs, one shared weights file and ``manifest.json``.

The graphs are the DiT's three and, for a package exported with a VAE decoder, the two decode graphs
(``decode_first.onnx``, ``decode_step.onnx``), whose weights share the same ``weights.bin``; the manifest then records
the decoder's config (``vae``).

``export_package`` traces the model once per graph, runs the target's passes, writes everything to a temporary
directory beside ``out_dir`` and renames it into place only when complete, so a failed export leaves nothing behind
and never touches an existing package; a temporary directory that a killed export left (its name holds the host and
process id of its owner) is removed by the next export of the same name. ``ModelPackage.load`` checks the manifest (its
own digest too), the files' sizes and hashes, that every graph has the manifest's opset, that its inputs and outputs are
exactly the StateSpec's and its external data lies inside the weights file, and (tensorrt) that every plugin node is
exactly a node of a plugin of the package's plugin mode; each failure names the file or tensor, the expected and the
found.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from arl2rt.errors import Arl2rtError
from arl2rt.export.external_data import SharedWeights, check_external_data
from arl2rt.export.manifest import build_manifest, check_manifest, check_manifest_digest
from arl2rt.export.onnx_export import EXPORT_DTYPES, EXPORT_OPSET, export_decode_graph, export_graph
from arl2rt.export.provenance import weights_record
from arl2rt.export.state_spec import GRAPHS, PAST_LEN, StateSpec, TensorSpec
from arl2rt.export.targets import TRT_PLUGIN_MODES, apply_target, get_target
from arl2rt.files import check_file, sha256_file
from arl2rt.model.config import ModelConfig
from arl2rt.model.dit import CausalDiT
from arl2rt.model.vae.kinds import VaeDecoder, config_from_dict
from arl2rt.plugins.gdn.plugin_spec import register_onnx_schema

MANIFEST_NAME = "manifest.json"
GRAPH_FILES = {
    "encode_context": "encode_context.onnx",
    "denoise_step": "denoise_step.onnx",
    "commit_step": "commit_step.onnx",
    "decode_first": "decode_first.onnx",
    "decode_step": "decode_step.onnx",
}
WEIGHTS_NAME = "weights.bin"

# (stages done, stages in all, what runs now) -> None
Progress = Callable[[int, int, str], None]

_ELEM_TYPES = {
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.INT64: "int64",
}


@dataclass
class ModelPackage:
    root: Path
    manifest: dict
    config: ModelConfig
    spec: StateSpec
    target: str
    opset: int
    plugin_mode: str | None = None  # tensorrt: "aot" (stage plugins) or "jit" (one node); None: no plugins
    _weights_digest: str | None = field(default=None, repr=False)  # set by verification, else hashed on first use

    @property
    def weights_path(self) -> Path:
        return self.root / WEIGHTS_NAME

    @property
    def weights_digest(self) -> str | None:
        """sha256 of ``weights.bin`` (None: the package has none), hashed once: verification's hash is reused."""
        if WEIGHTS_NAME not in self.manifest["files"]:
            return None
        if self._weights_digest is None:
            self._weights_digest = sha256_file(self.weights_path)
        return self._weights_digest

    def graph_path(self, graph: str) -> Path:
        if graph not in self.spec.graphs:
            raise Arl2rtError(f"package {self.root}: no step graph {graph!r}; expected one of {list(self.spec.graphs)}")
        return self.root / GRAPH_FILES[graph]

    @property
    def nbytes(self) -> int:
        """Bytes of all files the manifest lists."""
        return sum(entry["bytes"] for entry in self.manifest["files"].values())

    def load_graph(self, graph: str) -> onnx.ModelProto:
        """The graph without its weights (they stay in the external data file)."""
        return _load_proto(self.graph_path(graph))

    def op_histogram(self, graph: str) -> dict[str, int]:
        """``domain::op`` (plain ``op`` for the default domain) -> node count, most frequent first."""
        ops = Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in self.load_graph(graph).graph.node)
        return dict(ops.most_common())

    def describe(self) -> dict:
        """What ``arl2rt inspect`` shows: the package, its state contract with bytes per stream, and op histograms.

        Bytes are for batch 1; a tensor with a ``past_len`` axis is given per latent frame of past (it grows).
        """
        per_frame = self.config.tokens_per_frame
        tensors: dict[tuple[str, str], dict] = {}  # (io, name) -> row; a tensor of several graphs is listed once
        for graph in self.spec.graphs:
            for io, specs in (("input", self.spec.inputs(graph)), ("output", self.spec.outputs(graph))):
                for s in specs:
                    row = tensors.setdefault(
                        (io, s.name),
                        {
                            "graphs": [],
                            "io": io,
                            "name": s.name,
                            "shape": list(s.shape),
                            "dtype": s.dtype,
                            "kind": s.kind,
                            "bytes": s.nbytes(batch=1, past_len=per_frame),
                            "per_past_frame": PAST_LEN in s.shape,
                        },
                    )
                    row["graphs"].append(graph)
        m = self.manifest
        return {
            "package": str(self.root),
            "target": self.target,
            "dtype": self.spec.dtype,
            "opset": self.opset,
            "config": self.config.name,
            "vae": self.spec.vae.name if self.spec.vae is not None else None,
            "tokens_per_block": m["tokens_per_block"],
            "arl2rt_version": m["arl2rt_version"],
            "files": m["files"],
            "bytes": self.nbytes,
            "stream_bytes": {
                "gdn_states": self.spec.state_bytes(),
                "context_kv": sum(s.nbytes(batch=1) for s in self.spec.context_kv()),
                "kv_cache_per_latent_frame": self.spec.kv_bytes_per_frame(),
                "vae_caches": self.spec.vae_cache_bytes(),
            },
            "tensors": list(tensors.values()),
            "passes": {g: m["graphs"][g].get("passes", {}) for g in self.spec.graphs},
            "ops": {g: self.op_histogram(g) for g in self.spec.graphs},
        }

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True) -> ModelPackage:
        """Open a package directory; ``verify`` also checks sizes, hashes and every graph's I/O against the spec."""
        root = Path(path)
        source = root / MANIFEST_NAME
        if not root.is_dir():
            raise Arl2rtError(f"package {root}: expected a directory with {MANIFEST_NAME}, found none")
        if not source.is_file():
            raise Arl2rtError(f"package {root}: expected {MANIFEST_NAME}, found no such file")
        try:
            data = json.loads(source.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Arl2rtError(f"{source}: expected JSON, found unreadable content ({exc})") from None
        manifest = check_manifest(data, source, GRAPH_FILES)
        if verify:
            check_manifest_digest(manifest, source)
        config = ModelConfig.from_dict(manifest["config"], source=f"{source} (config)")
        target = get_target(manifest["target"]).name
        plugin_mode = manifest.get("trt_plugin", "jit" if target == "tensorrt" else None)  # older packages: jit
        if plugin_mode not in (tuple(TRT_PLUGIN_MODES) if target == "tensorrt" else (None,)):
            raise Arl2rtError(
                f"{source}: trt_plugin expected one of {sorted(TRT_PLUGIN_MODES)} for target tensorrt and absent "
                f"otherwise, found {plugin_mode!r} for target {target}"
            )
        vae = config_from_dict(manifest["vae"], f"{source} (vae)") if "vae" in manifest else None
        try:
            spec = StateSpec(config, manifest["dtype"], vae)
        except Arl2rtError as exc:
            raise Arl2rtError(f"{source}: {exc}") from None
        if manifest["state_spec"] != json.loads(spec.to_json()):
            raise Arl2rtError(
                f"{source}: state_spec does not match the StateSpec of its config and dtype {manifest['dtype']} "
                "(written by another arl2rt version?)"
            )
        if manifest["tokens_per_block"] != config.tokens_per_block:
            raise Arl2rtError(
                f"{source}: tokens_per_block expected {config.tokens_per_block} (from config), "
                f"found {manifest['tokens_per_block']}"
            )
        package = cls(root, manifest, config, spec, target, manifest["opset"], plugin_mode)
        package._check_files(verify)
        if verify:
            for graph in spec.graphs:
                package.check_graph(graph)
        return package

    def _check_files(self, hashes: bool) -> None:
        for name, entry in self.manifest["files"].items():
            path = self.root / name
            if not path.is_file():
                raise Arl2rtError(f"package {self.root}: file {name} listed in {MANIFEST_NAME} is missing")
            if hashes:
                check_file(path, entry)
                if name == WEIGHTS_NAME:
                    self._weights_digest = entry["sha256"]

    def check_graph(self, graph: str) -> None:
        """Raise unless the graph has the manifest's opset, its inputs and outputs are the StateSpec's, name for name,
        dtype and shape, each custom node is exactly a node of one of the package's plugins (attributes as its spec
        declares), and each tensor stored outside it lies inside the package's weights file."""
        path = self.graph_path(graph)
        proto = _load_proto(path)
        opsets = {o.domain: o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")}
        if list(opsets.values()) != [self.opset]:
            raise Arl2rtError(
                f"{path}: default-domain opset expected {self.opset} (the opset in {MANIFEST_NAME}), found "
                f"{sorted(opsets.values())}"
            )
        self._check_plugin_nodes(path, proto)
        for kind, values, specs in (
            ("input", proto.graph.input, self.spec.inputs(graph)),
            ("output", proto.graph.output, self.spec.outputs(graph)),
        ):
            names = [v.name for v in values]
            want = [s.name for s in specs]
            if names != want:
                missing = [n for n in want if n not in names]
                extra = [n for n in names if n not in want]
                raise Arl2rtError(
                    f"{path}: {kind}s do not match {MANIFEST_NAME}: missing {missing}, unexpected {extra}"
                    + ("" if missing or extra else f", order expected {want}, found {names}")
                )
            for value, spec in zip(values, specs):
                _check_value(path, kind, value, spec)
        data_files = {
            n: (self.root / n).stat().st_size for n in self.manifest["files"] if n not in GRAPH_FILES.values()
        }
        check_external_data(path, proto, data_files)

    def _check_plugin_nodes(self, path: Path, proto: onnx.ModelProto) -> None:
        plugins = {(p.namespace, p.name): p for p in TRT_PLUGIN_MODES.get(self.plugin_mode or "", ())}
        runtime_ops = get_target(self.target).runtime_ops
        for node in proto.graph.node:
            if node.domain in ("", "ai.onnx") or (node.domain, node.op_type) in runtime_ops:
                continue
            plugin = plugins.get((node.domain, node.op_type))
            if plugin is None:
                raise Arl2rtError(
                    f"{path}: node {node.name or '?'} is {node.domain}::{node.op_type}; expected standard ops"
                    + (f" or the plugins {sorted(p.qualified_name for p in plugins.values())}" if plugins else "")
                    + f" (target {self.target}, plugin mode {self.plugin_mode})"
                )
            problems = plugin.node_problems(node)
            if problems:
                raise Arl2rtError(f"{path}: " + "; ".join(problems))


def _load_proto(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise Arl2rtError(f"{path}: expected an ONNX file, found none")
    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as exc:
        raise Arl2rtError(f"{path}: expected an ONNX model, found an unreadable file (truncated?): {exc}") from None


def _check_value(path: Path, kind: str, value: onnx.ValueInfoProto, spec: TensorSpec) -> None:
    tensor = value.type.tensor_type
    dtype = _ELEM_TYPES.get(tensor.elem_type, onnx.TensorProto.DataType.Name(tensor.elem_type).lower())
    if dtype != spec.dtype:
        raise Arl2rtError(f"{path}: {kind} {spec.name} expected dtype {spec.dtype}, found {dtype}")
    dims = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in tensor.shape.dim]
    if dims != list(spec.shape):
        raise Arl2rtError(f"{path}: {kind} {spec.name} expected shape {list(spec.shape)}, found {dims}")


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise Arl2rtError(f"output {out_dir}: expected a directory, found a file")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / MANIFEST_NAME).is_file():
            raise Arl2rtError(f"output {out_dir}: expected an empty directory or an arl2rt package, found other files")
        if not overwrite:
            raise Arl2rtError(f"output {out_dir}: a package already exists (pass overwrite=True / --overwrite)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def _partial_prefix(out_dir: Path) -> str:
    """Start of the name of a temporary export directory of ``out_dir`` made by a process on this host."""
    return f".{out_dir.name}.partial-{socket.gethostname()}-"


def _process_alive(pid: int) -> bool:
    if os.name != "posix":  # no harmless probe of another process: keep its directory
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_stale_partials(out_dir: Path) -> None:
    """Remove the temporary directories of exports of ``out_dir`` whose process (on this host) is gone (kill -9)."""
    prefix = _partial_prefix(out_dir)
    for path in out_dir.parent.iterdir():
        pid, _, rest = path.name.removeprefix(prefix).partition("-")
        if path.name.startswith(prefix) and pid.isdigit() and rest and path.is_dir() and not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _install(tmp: Path, out_dir: Path) -> None:
    """Move the finished package into place; an old package there is removed only after the new one is in."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{tmp.name}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_package(
    model: CausalDiT,
    out_dir: Path,
    *,
    target: str = "onnxruntime",
    dtype: str = "float32",
    opset: int | None = None,
    trt_plugin: str | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
    source: str | None = None,
    vae: VaeDecoder | None = None,
) -> ModelPackage:
    """Export ``model`` as a package for ``target`` with ``dtype`` activations (states stay fp32).

    ``vae``: a VAE decoder whose latents are the model's output (``z_dim`` = ``out_channels``); the package then
    also holds ``decode_first`` and ``decode_step`` (decoder weights and caches in ``dtype``, frames fp32).

    ``trt_plugin`` (target tensorrt only): ``aot`` (default; one kernel per plugin node, engines run without Python)
    or ``jit`` (one ``arl2::gdn_state_update`` node per GDN write).

    Weights of at least 1 KiB go to one shared ``weights.bin``. ``progress(done, total, stage)`` is called before each
    stage. Returns the loaded package; on any failure nothing is left at ``out_dir`` that was not there before.
    ``source`` (e.g. ``checkpoint PATH``) is recorded with the digest of the weights in the manifest's ``weights``
    field, against which parity checks its reference.
    """
    tgt = get_target(target)
    opset = tgt.resolve_opset(opset)
    plugin_mode = tgt.resolve_plugin_mode(trt_plugin)
    if dtype not in EXPORT_DTYPES:
        raise Arl2rtError(f"export dtype {dtype!r}: expected one of {list(EXPORT_DTYPES)}")
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite)
    spec = StateSpec(model.cfg, dtype, vae.config if vae is not None else None)
    weights_of = weights_record(model, source)  # of the caller's model, before any cast
    if model.dtype != spec.config_dtype or model.patch_embedding.weight.device.type != "cpu":
        model = copy.deepcopy(model).to("cpu", spec.config_dtype)  # export traces on the CPU; never touch the caller's
    model = model.eval()
    if vae is not None and (vae.dtype != spec.config_dtype or next(vae.parameters()).device.type != "cpu"):
        vae = copy.deepcopy(vae).to("cpu", spec.config_dtype)
    register_onnx_schema()
    total = 2 * len(spec.graphs) + 2
    report = progress or (lambda done, all_, stage: None)

    _remove_stale_partials(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_partial_prefix(out_dir)}{os.getpid()}-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the package is an ordinary directory
        passes: dict[str, dict[str, int]] = {}
        with SharedWeights(tmp / WEIGHTS_NAME) as weights:
            for i, graph in enumerate(spec.graphs):
                report(2 * i, total, f"trace {graph}")
                if graph in GRAPHS:
                    onnx_model = export_graph(model, spec, graph)
                else:
                    onnx_model = export_decode_graph(vae.eval(), spec, graph)
                report(2 * i + 1, total, f"{target} passes, write {graph}")
                passes[graph] = apply_target(onnx_model, spec, graph, target, opset, plugin_mode)
                weights.externalize(onnx_model)
                ir.save(onnx_model, tmp / GRAPH_FILES[graph])
                del onnx_model
        report(total - 2, total, "onnx checker")
        for graph in spec.graphs:
            try:
                onnx.checker.check_model(str(tmp / GRAPH_FILES[graph]), full_check=True)
            except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
                raise Arl2rtError(f"{GRAPH_FILES[graph]}: the onnx checker rejects the exported graph: {exc}") from exc
        report(total - 1, total, "hash files")
        files = [*(GRAPH_FILES[g] for g in spec.graphs), *([WEIGHTS_NAME] if weights.tensors else [])]
        if not weights.tensors:
            (tmp / WEIGHTS_NAME).unlink()
        manifest = build_manifest(
            spec,
            target=target,
            opset=opset,
            export_opset=EXPORT_OPSET,
            graph_files=GRAPH_FILES,
            passes=passes,
            root=tmp,
            files=files,
            plugin_mode=plugin_mode,
            plugins=tgt.plugins(plugin_mode),
            weights=weights_of,
        )
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        _install(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ModelPackage.load(out_dir, verify=False)
