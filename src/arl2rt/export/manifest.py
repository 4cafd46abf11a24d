"""The package manifest (``manifest.json``): what was exported, how, and the hash of every file.

Written last by the exporter and read first by every backend. :func:`check_manifest` validates the schema and
raises an Arl2rtError naming the manifest, the field, what was expected and what was found. The manifest records the
sha256 of its own content (``manifest_sha256``) beside those of the files, so one verified manifest vouches for the
whole package: an edited field (opset, target, dtype) is refused by :func:`check_manifest_digest`. A package with a
VAE decoder records its config under ``vae`` and lists the decode graphs beside the DiT's.
"""

from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path

from arl2rt import __version__
from arl2rt.errors import Arl2rtError
from arl2rt.export.provenance import WEIGHTS_FIELD
from arl2rt.export.state_spec import DECODE_GRAPHS, GRAPHS, StateSpec
from arl2rt.files import file_record, record_digest
from arl2rt.plugins.gdn.plugin_spec import PluginSpec

FORMAT = "arl2rt-package"
FORMAT_VERSION = 1
DIGEST_FIELD = "manifest_sha256"
_VERSIONED = ("torch", "onnx", "onnxscript", "onnx-ir")

# field -> type every manifest must have
REQUIRED = {
    "format": str,
    "format_version": int,
    "arl2rt_version": str,
    "target": str,
    "dtype": str,
    "opset": int,
    "export_opset": int,
    "tokens_per_block": int,
    "config": dict,
    "state_spec": dict,
    "graphs": dict,
    "files": dict,
}


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def build_manifest(
    spec: StateSpec,
    *,
    target: str,
    opset: int,
    export_opset: int,
    graph_files: dict[str, str],
    passes: dict[str, dict[str, int]],
    root: Path,
    files: list[str],
    plugin_mode: str | None = None,
    plugins: tuple[PluginSpec, ...] = (),
    weights: dict | None = None,
) -> dict:
    """The manifest of a package whose ``files`` (relative to ``root``) are all written; ``plugins``: those whose
    nodes the graphs carry, in ``plugin_mode`` (tensorrt: ``aot`` or ``jit``); ``weights``: the record of the weights
    the package was exported from (:mod:`arl2rt.export.provenance`). The manifest's own digest covers all of it."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arl2rt_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": target,
        "dtype": spec.dtype,
        "opset": opset,
        "export_opset": export_opset,
        "tokens_per_block": spec.config.tokens_per_block,
        "config": spec.config.to_dict(),
        "state_spec": spec.to_dict(),
        "graphs": {g: {"file": graph_files[g], "passes": passes[g]} for g in spec.graphs},
        "files": {f: file_record(root / f) for f in sorted(files)},
        "exporter": {"method": "torch.onnx.export(dynamo=True)", "versions": _versions()},
    }
    if spec.vae is not None:
        manifest["vae"] = spec.vae.to_dict()
    if plugin_mode is not None:
        manifest["trt_plugin"] = plugin_mode
    if plugins:
        manifest["plugins"] = [
            {
                "name": p.name,
                "namespace": p.namespace,
                "version": p.version,
                "fields": {f.name: f.type.__name__ for f in p.fields},
            }
            for p in plugins
        ]
    if weights is not None:
        manifest[WEIGHTS_FIELD] = weights
    manifest[DIGEST_FIELD] = manifest_digest(manifest)
    return manifest


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without its own digest field."""
    return record_digest(manifest, DIGEST_FIELD)


def check_manifest_digest(manifest: dict, source: Path) -> None:
    """Raise unless the manifest's recorded digest is that of its content (it was not edited after export)."""
    want = manifest.get(DIGEST_FIELD)
    if not isinstance(want, str):
        raise Arl2rtError(
            f"{source}: expected field {DIGEST_FIELD!r} (the manifest's own sha256), found none; re-export the package"
        )
    got = manifest_digest(manifest)
    if got != want:
        raise Arl2rtError(
            f"{source}: content sha256 {got[:16]}… does not match the recorded {DIGEST_FIELD} {want[:16]}…; the "
            "manifest was edited after export: re-export the package"
        )


def check_manifest(manifest: object, source: Path, graph_files: dict[str, str]) -> dict:
    """Validate the manifest's schema (not the files); returns it."""
    if not isinstance(manifest, dict):
        raise Arl2rtError(f"{source}: expected a JSON object, found {type(manifest).__name__}")
    for field, kind in REQUIRED.items():
        if field not in manifest:
            raise Arl2rtError(f"{source}: missing field {field!r}")
        if not isinstance(manifest[field], kind) or (kind is int and isinstance(manifest[field], bool)):
            raise Arl2rtError(
                f"{source}: field {field!r} expected {kind.__name__}, found {type(manifest[field]).__name__}"
            )
    if manifest["format"] != FORMAT:
        raise Arl2rtError(f"{source}: field 'format' expected {FORMAT!r}, found {manifest['format']!r}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise Arl2rtError(
            f"{source}: format_version expected {FORMAT_VERSION}, found {manifest['format_version']} "
            f"(package written by arl2rt {manifest['arl2rt_version']}, this is {__version__})"
        )
    graphs = manifest["graphs"]
    expected = GRAPHS + (DECODE_GRAPHS if "vae" in manifest else ())  # the decode graphs come with a VAE config
    if sorted(graphs) != sorted(expected):
        raise Arl2rtError(
            f"{source}: field 'graphs' expected {sorted(expected)}"
            + (" (the manifest has a 'vae' config)" if "vae" in manifest else "")
            + f", found {sorted(graphs)}"
        )
    for g, entry in graphs.items():
        file = entry.get("file") if isinstance(entry, dict) else None
        if file != graph_files[g]:
            raise Arl2rtError(f"{source}: graphs.{g}.file expected {graph_files[g]!r}, found {file!r}")
        if file not in manifest["files"]:
            raise Arl2rtError(f"{source}: graph file {file} has no entry in 'files'")
    for name, entry in manifest["files"].items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not isinstance(entry.get("bytes"), int)
            or Path(name).name != name
        ):
            raise Arl2rtError(f"{source}: files.{name} expected a plain file name with 'sha256' and 'bytes'")
    return manifest
