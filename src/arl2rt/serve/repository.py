"""A Triton model repository for one model: ``arl2rt serve triton`` writes it.

Layout (docs/serving.md)::

    REPO/
      NAME/                  the Python-backend model: arl2rt's own backend and Streamer, one stream per sequence
        config.pbtxt         sequence batcher, inputs/outputs (arl2rt.serve.protocol), settings (parameters.arl2rt)
        1/model.py           a thin file: makes arl2rt importable in the stub and re-exports TritonPythonModel
      NAME_step/             an exported package whose model qualifies (arl2rt.serve.implicit_state): one ONNX
        config.pbtxt         graph for the onnxruntime or TensorRT backend, its states kept by Triton
        1/model.onnx, 1/weights.bin

The settings record where the model comes from (a package path, a checkpoint, a random config, the embedded model),
so the server loads exactly the model checked here. Every ``config.pbtxt`` is parsed back with Triton's schema.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import arl2rt
from arl2rt.errors import Arl2rtError, setting
from arl2rt.export.state_spec import StateSpec
from arl2rt.runtime.sources import LoadedModel
from arl2rt.serve import model_config as mc
from arl2rt.serve import protocol as p
from arl2rt.serve.served import ServeSettings

DEFAULT_NAME = "arl2rt"
DEFAULT_MAX_STREAMS = 8
VERSION = "1"

_MODEL_PY = '''"""A Triton Python-backend model written by `arl2rt serve triton`: see arl2rt.serve.python_model."""

import site
import sys
import sysconfig
from pathlib import Path

# The backend's stub runs Python isolated (PYTHONPATH is ignored) and, linked to the system's libpython, may miss the
# interpreter's own site-packages: add them (a venv's first, then its base's if it sees them), then the arl2rt that
# wrote this repository.
_venv_cfg = Path(sys.prefix) / "pyvenv.cfg"
_bases = [sys.prefix]
if _venv_cfg.is_file() and "include-system-site-packages = true" in _venv_cfg.read_text():
    _bases.append(sys.base_prefix)
for _base in _bases:
    for _key in ("purelib", "platlib"):
        site.addsitedir(sysconfig.get_paths(vars={"base": _base, "platbase": _base})[_key])
_ARL2RT = {src!r}
if _ARL2RT not in sys.path:
    sys.path.insert(0, _ARL2RT)

from arl2rt.serve.python_model import TritonPythonModel  # noqa: E402, F401
'''


@dataclass
class RepositoryResult:
    repository: str
    models: dict[str, str]  # model name -> what it is
    notes: list[str] = field(default_factory=list)


def served_spec(loaded: LoadedModel, dtype: str) -> StateSpec:
    """The state contract the served model's backend runs."""
    if loaded.package is not None:
        return loaded.package.spec
    return StateSpec(loaded.cfg, dtype, loaded.vae.config if loaded.vae is not None else None)


def python_model_config(name: str, settings: ServeSettings, spec: StateSpec, *, max_streams: int, instances: int):
    """The Python-backend model's config: one request makes one block of one stream (:mod:`arl2rt.serve.protocol`)."""
    m = mc.pb2()
    io = spec.io_dtype
    context = spec.context().shape[1:]
    latents = spec.velocity().shape[1:]
    config = m.ModelConfig(name=name, backend="python", max_batch_size=max_streams)
    config.input.extend(
        [
            mc.tensor("input", p.BLOCK, "int64", [1]),
            mc.tensor("input", p.SEED, "int64", [1], optional=True),
            mc.tensor("input", p.PROMPT, "bytes", [1], optional=True),
            mc.tensor("input", p.CONTEXT, io, list(context), optional=True),
        ]
    )
    config.output.append(mc.tensor("output", p.LATENTS, io, list(latents)))
    if spec.vae is not None:  # the first block has fewer frames than the others: time is -1
        channels, _, height, width = spec.frames(first=False).shape[1:]
        config.output.append(mc.tensor("output", p.FRAMES, io, [channels, -1, height, width]))
    config.output.extend(
        [mc.tensor("output", p.STATE_BYTES, "int64", [1]), mc.tensor("output", p.STREAMS, "int64", [1])]
    )
    config.sequence_batching.CopyFrom(mc.sequence_batching(idle_timeout=settings.idle_timeout, max_streams=max_streams))
    config.instance_group.append(mc.instance_group(settings.device, instances))
    config.parameters[p.SETTINGS_PARAMETER].string_value = settings.to_json()
    return config


def check_model_dir(out: Path, name: str, overwrite: bool) -> Path:
    """``out/name``, the directory of a model about to be written; an existing one only with ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise Arl2rtError(f"-o {out}: expected a directory for the model repository, found a file")
    model_dir = out / name
    if model_dir.exists() and not overwrite:
        raise Arl2rtError(
            f"-o {out}: model {name} exists there; pass {setting('--overwrite', 'overwrite=True')} to replace it, "
            f"or {setting('--name', 'name=...')} to add another model"
        )
    return model_dir


def write_repository(
    out: Path,
    settings: ServeSettings,
    loaded: LoadedModel,
    *,
    name: str = DEFAULT_NAME,
    max_streams: int = DEFAULT_MAX_STREAMS,
    instances: int = 1,
    overwrite: bool = False,
) -> RepositoryResult:
    """Write the repository (see the module docstring) for ``loaded``, run as ``settings`` say."""
    from arl2rt.serve.implicit_state import SUFFIX, write_stateful_model

    if max_streams < 1 or instances < 1:
        raise Arl2rtError(f"--max-streams and --instances must be >= 1, got {max_streams} and {instances}")
    if not name or "/" in name or name.startswith("."):
        raise Arl2rtError(f"--name {name!r}: expected a model name (no '/', not starting with '.')")
    out = Path(out)
    model_dir = check_model_dir(out, name, overwrite)
    spec = served_spec(loaded, settings.dtype)
    models = {name: f"Python backend: {loaded.description} on {settings.backend} ({settings.device})"}
    if model_dir.exists():
        shutil.rmtree(model_dir)
    (model_dir / VERSION).mkdir(parents=True)
    config = python_model_config(name, settings, spec, max_streams=max_streams, instances=instances)
    mc.write_config(config, model_dir)
    src = str(Path(arl2rt.__file__).resolve().parents[1])
    (model_dir / VERSION / "model.py").write_text(_MODEL_PY.replace("{src!r}", repr(src)), encoding="utf-8")
    notes: list[str] = []
    if loaded.package is not None:
        stateful = name + SUFFIX
        check_model_dir(out, stateful, overwrite)
        reason = write_stateful_model(out, loaded.package, settings, name=stateful, max_streams=max_streams)
        if reason is None:
            models[stateful] = f"onnxruntime backend, implicit state: {loaded.description} (not served by this server)"
        else:
            notes.append(reason)
    return RepositoryResult(str(out), models, notes)
