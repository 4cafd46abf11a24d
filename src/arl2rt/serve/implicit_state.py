"""Models whose states Triton itself keeps (implicit state), for Triton's onnxruntime backend, alone or with its
TensorRT execution accelerator.

Triton's rule: every state output of a request is the state input of the sequence's next request, and a sequence's
first request gets zeros. The step graphs' states fit it only in part:

* a hybrid layer's GDN state: ``commit_step`` returns it whole (``present_state.i`` replaces ``past_state.i``), and a
  new stream starts from zeros: fits;
* a softmax layer's K/V: ``commit_step`` returns only the block's new K/V, which the runtime appends to its cache (a
  global one grows, a rolling one keeps sink frames): Triton cannot append, so these models do not qualify;
* the VAE decoder's caches: ``present_vae.i`` replaces ``past_vae.i``, but a stream's first block runs
  ``decode_first``, which takes no caches, so zeros are not its start: these packages do not qualify either.

A model qualifies when every layer is hybrid and it has no VAE decoder; it is then served as one joined graph
(:mod:`arl2rt.serve.step_graph`) with a ``state`` entry per GDN state, generated from the StateSpec. No preset
qualifies (tiny, wan2.1-t2v-1.3b and the embedded model all have softmax layers); those are served by the
Python-backend model alone. The client of such a model runs the AR loop itself (noise, scheduler, one request per
pass) and cannot re-base RoPE positions (the states are Triton's), so a stream ends at the RoPE table's length.

This server binary (nvidia-pytriton's) has no onnxruntime backend: these models are written and their configs
checked with Triton's schema here, never served here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import PAST_STATE, StateSpec
from arl2rt.serve import model_config as mc
from arl2rt.serve.served import ServeSettings
from arl2rt.serve.step_graph import COMMIT, build_step_graph

MODEL_FILE = "model.onnx"
SUFFIX = "_step"  # the stateful model's name: the Python-backend model's, then this


def why_not(spec: StateSpec) -> str | None:
    """Why Triton cannot keep this model's states (one line), or None if it can."""
    cfg = spec.config
    if cfg.softmax_layers:
        return (
            f"config {cfg.name}: softmax layers {list(cfg.softmax_layers)} return only each block's new K/V, which "
            "Triton's implicit state (an output replaces its input whole) cannot append to a cache"
        )
    if spec.vae is not None:
        return (
            f"config {cfg.name}: its VAE decoder's first block runs decode_first, which takes no caches, so the "
            "decoder's state cannot start from Triton's zero initial state"
        )
    return None


def state_entries(spec: StateSpec) -> list:
    """A ``sequence_batching.state`` entry per GDN state: past/present names, dtype, dims without batch, zeros."""
    m = mc.pb2()
    entries = []
    for s in spec.of_kind(PAST_STATE):
        dims = list(s.shape[1:])
        initial = m.ModelSequenceBatching.InitialState(
            data_type=mc.data_type(s.dtype), dims=dims, zero_data=True, name="zeros"
        )
        entries.append(
            m.ModelSequenceBatching.State(
                input_name=s.name,
                output_name=spec.present_of(s.name),
                data_type=mc.data_type(s.dtype),
                dims=dims,
                initial_state=[initial],
            )
        )
    return entries


def stateful_model_config(name: str, package, settings: ServeSettings, *, max_streams: int):
    """The onnxruntime-backend config of the joined graph: one request is one pass of one stream (batch 1)."""
    m, spec = mc.pb2(), package.spec
    config = m.ModelConfig(name=name, backend="onnxruntime", max_batch_size=1, default_model_filename=MODEL_FILE)
    config.input.append(mc.tensor("input", spec.context().name, spec.io_dtype, list(spec.context().shape[1:])))
    for s in spec.step_inputs()[:2]:  # latents, timestep
        config.input.append(mc.tensor("input", s.name, s.dtype, list(s.shape[1:])))
    for input_name, dtype in ((spec.step_inputs()[2].name, "int64"), (COMMIT, "bool")):  # one scalar per stream
        scalar = mc.tensor("input", input_name, dtype, [1])
        scalar.reshape.SetInParent()  # [1] per request, a scalar per batch row in the graph
        config.input.append(scalar)
    config.output.append(mc.tensor("output", spec.velocity().name, spec.io_dtype, list(spec.velocity().shape[1:])))
    batching = mc.sequence_batching(idle_timeout=settings.idle_timeout, max_streams=max_streams, controls=False)
    batching.state.extend(state_entries(spec))
    config.sequence_batching.CopyFrom(batching)
    config.instance_group.append(mc.instance_group(settings.device, 1))
    if package.target == "portable" and settings.device.startswith("cuda"):
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add()
        accelerator.name = "tensorrt"  # onnxruntime's TensorRT EP: the portable graph has no plugin node
    return config


def write_stateful_model(out: Path, package, settings: ServeSettings, *, name: str, max_streams: int) -> str | None:
    """Write ``out/name`` for a package that qualifies; else return the one-line reason it does not."""
    reason = why_not(package.spec)
    if reason is not None:
        return f"no implicit-state model (onnxruntime/TensorRT backends): {reason}"
    model_dir = out / name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    version = model_dir / "1"
    version.mkdir(parents=True)
    model = build_step_graph(package)
    onnx.save(model, version / MODEL_FILE)
    if package.weights_path.is_file():  # a copy: onnx's checker refuses external data with several hard links
        shutil.copyfile(package.weights_path, version / package.weights_path.name)
    try:
        onnx.checker.check_model(str(version / MODEL_FILE), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise Arl2rtError(f"{version / MODEL_FILE}: the onnx checker rejects the joined step graph: {exc}") from None
    mc.write_config(stateful_model_config(name, package, settings, max_streams=max_streams), model_dir)
    return None
