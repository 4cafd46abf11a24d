"""The TensorRT backend.

The first tests need no TensorRT: how a failed deserialization is explained, how engine I/O is checked, and
activation with the TensorRT module, the GPU and the engine cache faked at the seams (which engines it asks for, what
it registers, which GPU TensorRT-RTX runs on), and what ``arl2rt generate`` hands it. The rest need TensorRT and a
CUDA GPU, and skip with the reason where ``import tensorrt`` fails, which is every machine of this
project (TensorRT cannot be installed here): they are written to TensorRT's documented API and have never run.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import types
from pathlib import Path

import pytest
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import BATCH, DECODE_GRAPHS, GRAPHS, PAST_VAE, PRESENT_VAE, StateSpec
from arl2rt.model.config import PRESETS
from arl2rt.runtime.tensorrt_backend import TensorRTBackend, check_engine_io, deserialize_error
from arl2rt.runtime.trt.flavour import FLAVOURS, Flavour
from arl2rt.runtime.trt.loaders import DTYPE_NAMES
from model.vae.vae_helpers import TINY

ENGINE = Path("/pkg/engines/commit_step.engine")


@pytest.mark.parametrize(
    ("messages", "target", "expected"),
    [
        (
            ["getPluginCreator could not find plugin: gdn_state_update version: 1 namespace: arl2"],
            "tensorrt",
            "import arl2rt.plugins.gdn.trt_plugin before loading",
        ),
        (["Serialization assertion magicTagRead == kMAGIC_TAG failed"], "portable", "built by another TensorRT"),
        (["The engine plan file is generated on an incompatible device"], "portable", "another GPU"),
        (["Target GPU SM 90 is not supported by this engine (compute capability 8.6)"], "portable", "another GPU"),
        ([], "portable", "could not deserialize the engine (no message)"),
    ],
    ids=["plugin-missing", "other-trt", "incompatible", "other-gpu", "silent"],
)
def test_deserialization_failures_say_what_to_do(messages, target, expected):
    message = deserialize_error(ENGINE, messages, target, "tensorrt", "10.13.0")
    assert str(ENGINE) in message and expected in message


def _engine_io(spec: StateSpec, graph: str) -> dict[str, dict]:
    def row(mode, s):
        return {"mode": mode, "shape": [d if isinstance(d, int) else -1 for d in s.shape], "dtype": s.dtype}

    return {s.name: row("input", s) for s in spec.inputs(graph)} | {
        s.name: row("output", s) for s in spec.outputs(graph)
    }


def test_engine_io_must_be_the_state_contract():
    spec = StateSpec(PRESETS["tiny"], "bfloat16")
    found = _engine_io(spec, "denoise_step")
    check_engine_io(found, spec, "denoise_step", ENGINE)
    found["past_key.3"]["dtype"] = "float32"
    with pytest.raises(Arl2rtError, match=r"tensor past_key\.3: expected input \[-1, -1, 4, 16\] bfloat16, found"):
        check_engine_io(found, spec, "denoise_step", ENGINE)
    found = _engine_io(spec, "denoise_step")
    del found["frame_offset"]
    with pytest.raises(Arl2rtError, match=r"missing \['frame_offset'\]"):
        check_engine_io(found, spec, "denoise_step", ENGINE)


def test_cpu_device_is_refused(tmp_path):
    class Package:
        spec = StateSpec(PRESETS["tiny"])
        target = "portable"

    with pytest.raises(Arl2rtError, match="runs on CUDA devices"):
        TensorRTBackend(Package(), device="cpu")


# -- activation with TensorRT faked at its module (no TensorRT, no GPU) ------------------------------------------
class _Severity(enum.IntEnum):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)


class _FakeEngine:
    """An engine whose tensors are exactly the StateSpec's (what check_engine_io accepts)."""

    def __init__(self, spec: StateSpec, graph: str) -> None:
        self.spec, self.graph = spec, graph
        self.io = _engine_io(spec, graph)
        self.names = list(self.io)

    num_io_tensors = property(lambda self: len(self.names))

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return _FakeTrt.TensorIOMode.INPUT if self.io[name]["mode"] == "input" else _FakeTrt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return types.SimpleNamespace(name={v: k for k, v in DTYPE_NAMES.items()}[self.io[name]["dtype"]])

    def get_tensor_shape(self, name):
        return self.io[name]["shape"]

    def is_shape_inference_io(self, name):
        return False

    def create_execution_context(self):
        return _FakeContext(self.spec, self.graph)


class _FakeContext:
    """An execution context that records what a run binds; output shapes follow the StateSpec at the bound batch."""

    def __init__(self, spec: StateSpec, graph: str) -> None:
        self.spec, self.graph = spec, graph
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.runs = 0

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name):
        batch = next(iter(self.shapes.values()))[0]
        return next(s for s in self.spec.outputs(self.graph) if s.name == name).resolve(**{BATCH: batch})

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def execute_async_v3(self, stream):
        self.runs += 1
        return True


class _FakeTrt(types.SimpleNamespace):
    """The parts of the tensorrt / tensorrt_rtx module activation touches."""

    TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")

    class ILogger:
        Severity = _Severity

        def __init__(self) -> None:
            pass


@pytest.fixture
def fake_tensorrt(monkeypatch, tmp_path):
    """Activation's seams faked: the flavour's module, the GPU, the engine cache; returns what they were asked."""
    from arl2rt.runtime import tensorrt_backend as backend_module
    from arl2rt.runtime.trt.build import BuildResult
    from arl2rt.runtime.trt.cache import CacheEntry

    seen: dict = {"gpu": ("NVIDIA GeForce RTX 4090", "8.9"), "registered": 0}
    engines = {}
    for graph in GRAPHS + DECODE_GRAPHS:
        engines[graph] = tmp_path / f"{graph}.engine"
        engines[graph].write_bytes(graph.encode())

    def load_flavour(name):
        spec_of = seen["spec"]
        runtime = types.SimpleNamespace(deserialize_cuda_engine=lambda data: _FakeEngine(spec_of, data.decode()))
        module = _FakeTrt(__version__="10.13.0", Runtime=lambda logger: runtime)
        return Flavour(name, module, FLAVOURS[name][1])

    def build_engines(package, **kwargs):
        seen["build"] = kwargs
        return BuildResult(CacheEntry(tmp_path, {}, engines, {}), "hit")

    def register():
        seen["registered"] += 1

    monkeypatch.setattr(backend_module, "load_flavour", load_flavour)
    monkeypatch.setattr(backend_module, "cuda_capability", lambda: seen["gpu"])
    monkeypatch.setattr(backend_module, "build_engines", build_engines)
    monkeypatch.setattr(backend_module, "register_trt_plugins", register)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    stream = types.SimpleNamespace(wait_stream=lambda other: None, cuda_stream=0)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: stream)
    return seen


@pytest.mark.parametrize("target", ["portable", "tensorrt"])
def test_activation_asks_the_cache_for_engines_that_serve_the_stream(micro_exports, fake_tensorrt, target):
    package = micro_exports.package(target)
    fake_tensorrt["spec"] = package.spec
    with TensorRTBackend(package, max_frames=48, max_batch=2, cache_dir=Path("/c")) as backend:
        assert set(backend.engines) == set(backend.contexts) == set(GRAPHS)
    build = fake_tensorrt["build"]
    assert (build["max_frames"], build["max_batch"], build["cache_dir"]) == (48, 2, Path("/c"))
    assert build["reuse_wider"] is True
    assert fake_tensorrt["registered"] == 0  # AOT engines carry their kernels: no plugin module, no Triton


def test_a_package_with_a_vae_decodes_on_its_engines_as_the_dit_steps_run(fake_tensorrt):
    spec = StateSpec(PRESETS["tiny"], vae=TINY)
    package = types.SimpleNamespace(spec=spec, target="portable", plugin_mode=None)
    fake_tensorrt["spec"] = spec
    with TensorRTBackend(package, max_batch=2) as backend:
        assert set(backend.engines) == set(backend.contexts) == set(GRAPHS + DECODE_GRAPHS)
        backend.device = torch.device("cpu")  # the fake engines run nothing: host tensors stand in for the GPU's
        feeds = {s.name: torch.zeros(s.resolve(batch=2), dtype=s.torch_dtype) for s in spec.inputs("decode_step")}
        spare = {s.name: torch.zeros(s.resolve(batch=2), dtype=s.torch_dtype) for s in spec.vae_caches(PRESENT_VAE)}
        outputs = backend.run("decode_step", feeds, spare)
        ctx = backend.contexts["decode_step"]
        assert ctx.runs == 1 and ctx.shapes == {n: tuple(t.shape) for n, t in feeds.items()}
        assert set(outputs) == {s.name for s in spec.outputs("decode_step")}
        assert all(outputs[n] is t for n, t in spare.items())  # the caches' ping-pong: written into the spares
        assert ctx.addresses == {n: t.data_ptr() for n, t in {**feeds, **outputs}.items()}
        assert outputs["frames"].shape == spec.frames(False).resolve(batch=2)
        assert len([n for n in feeds if n.startswith(f"{PAST_VAE}.")]) == 32
        first = backend.run("decode_first", {"vae_latents": feeds["vae_latents"]})
        assert first["first_frames"].shape == spec.frames(True).resolve(batch=2)
        assert backend.contexts["decode_first"].runs == 1


def test_jit_engines_register_the_plugin_first(micro_exports, fake_tensorrt):
    package = dataclasses.replace(micro_exports.package("tensorrt"), plugin_mode="jit")
    fake_tensorrt["spec"] = package.spec
    with TensorRTBackend(package):
        assert fake_tensorrt["registered"] == 1


def test_tensorrt_rtx_runs_where_its_runtime_supports_the_gpu(micro_exports, fake_tensorrt):
    package = micro_exports.package("portable")
    fake_tensorrt["spec"] = package.spec
    with TensorRTBackend(package, flavour="tensorrt-rtx") as backend:
        assert backend.label == "tensorrt-rtx portable float32"
    assert fake_tensorrt["build"]["flavour"].name == "tensorrt-rtx"
    fake_tensorrt["gpu"] = ("NVIDIA H100 80GB HBM3", "9.0")
    with pytest.raises(Arl2rtError, match="compute capability 9.0, which TensorRT-RTX does not run on"):
        TensorRTBackend(package, flavour="tensorrt-rtx").activate()


def test_an_explicit_engine_entry_built_for_a_longer_stream_serves(micro_exports, fake_tensorrt, monkeypatch, tmp_path):
    from arl2rt.runtime import tensorrt_backend as backend_module
    from arl2rt.runtime.trt.cache import EngineCache

    package = micro_exports.package("portable")
    fake_tensorrt["spec"] = package.spec
    longer = {"flavour": "tensorrt", "profiles": {"g": {"x": [[1, 0], [1, 8], [1, 40]]}}}
    shorter = {"flavour": "tensorrt", "profiles": {"g": {"x": [[1, 0], [1, 4], [1, 20]]}}}
    entry = EngineCache(tmp_path / "cache").store(longer, {g: g.encode() for g in GRAPHS})
    monkeypatch.setattr(backend_module, "engine_key", lambda *a, **k: (shorter, {}))
    with TensorRTBackend(package, engine_dir=entry.path) as backend:
        assert set(backend.engines) == set(GRAPHS)
    monkeypatch.setattr(backend_module, "engine_key", lambda *a, **k: ({**longer, "flavour": "x"}, {}))
    with pytest.raises(Arl2rtError, match="engines built for another setup"):
        TensorRTBackend(package, engine_dir=entry.path).activate()


@pytest.mark.parametrize("mode", ["aot", "jit"])
def test_an_aot_engine_built_with_triton_loads_where_triton_is_missing(
    micro_exports, fake_tensorrt, monkeypatch, tmp_path, mode
):
    from arl2rt.plugins.gdn import trt_config
    from arl2rt.runtime.trt import build
    from arl2rt.runtime.trt.cache import EngineCache

    package = dataclasses.replace(micro_exports.package("tensorrt"), plugin_mode=mode)
    fake_tensorrt["spec"] = package.spec
    monkeypatch.setattr(build, "device_key", lambda flavour, ccs=(): {"gpu": "RTX 4090", "compute_capability": "8.9"})
    monkeypatch.setattr(trt_config, "triton_version", lambda: "triton 3.5.0")
    flavour = Flavour("tensorrt", types.SimpleNamespace(__version__="10.13.0"), FLAVOURS["tensorrt"][1])
    built_key = build.engine_key(package, flavour)[0]  # on the machine that built it, with Triton
    entry = EngineCache(tmp_path / "cache").store(built_key, {g: g.encode() for g in GRAPHS})
    monkeypatch.setattr(trt_config, "triton_version", lambda: "absent")  # the machine that runs it (a Jetson)
    monkeypatch.setitem(sys.modules, "triton", None)  # and any `import triton` fails from here on
    if mode == "aot":
        with TensorRTBackend(package, engine_dir=entry.path) as backend:
            assert set(backend.engines) == set(GRAPHS)
        assert fake_tensorrt["registered"] == 0
    else:  # JIT kernels are compiled by Triton when the engine runs: its version is part of the key
        with pytest.raises(Arl2rtError, match=r"engines built for another setup \(plugin: built for"):
            TensorRTBackend(package, engine_dir=entry.path).activate()


# -- generate hands the backend its stream -----------------------------------------------------------------------
@pytest.fixture
def micro_generate(micro_exports, tmp_path):
    """``arl2rt generate`` of the micro portable package with a text file, to ``out.npz``: (args, output)."""
    from safetensors.torch import save_file

    from arl2rt.model.random import random_context
    from micro_packages import MICRO

    text, out = tmp_path / "text.safetensors", tmp_path / "out.npz"
    save_file({"context": random_context(MICRO, 0)}, str(text))
    package = micro_exports.package("portable").root
    return ["generate", "--model", str(package), "--context", str(text), "-o", str(out)], out


@pytest.fixture
def recorded_activation(monkeypatch):
    """TensorRTBackend.activate records what the backend was made with, then stops the run (exit 1)."""
    seen: dict = {}

    def activate_impl(self):
        seen.update(flavour=self.flavour_name, max_frames=self.max_frames, max_batch=self.max_batch)
        raise Arl2rtError("activation recorded")

    monkeypatch.setattr(TensorRTBackend, "activate_impl", activate_impl)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # generate's device checks see a GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    return seen


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], {"flavour": "tensorrt", "max_frames": 48, "max_batch": 1}),  # the default 48 frames: 24 blocks of 2
        (["--flavour", "tensorrt-rtx", "--frames", "5"], {"flavour": "tensorrt-rtx", "max_frames": 6, "max_batch": 1}),
    ],
    ids=["default-length", "rtx-rounded-up"],
)
def test_generate_asks_for_engines_of_its_own_stream(micro_generate, recorded_activation, args, expected):
    from typer.testing import CliRunner

    from arl2rt.cli.main import app

    cli, out = micro_generate
    res = CliRunner().invoke(app, [*cli, "--backend", "tensorrt", *args])
    assert res.exit_code == 1 and "activation recorded" in res.output and "Traceback" not in res.output
    assert recorded_activation == expected
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--flavour", "tensorrt-rtx"], "--flavour tensorrt-rtx: backend onnxruntime takes none"),
        (
            ["--backend", "tensorrt", "--flavour", "lean"],
            "--flavour lean: backend tensorrt takes one of",
        ),
        (["--backend", "tensorrt", "--blocks", "600"], "stream at most 512 blocks on the tensorrt backend"),
    ],
    ids=["flavour-without-tensorrt", "unknown-flavour", "global-cache-beyond-rope"],
)
def test_generate_refuses_what_the_tensorrt_backend_cannot_run(micro_generate, recorded_activation, args, message):
    from typer.testing import CliRunner

    from arl2rt.cli.main import app

    cli, out = micro_generate
    res = CliRunner().invoke(app, [*cli, *args])
    assert res.exit_code == 1 and message in " ".join(res.output.split()) and "Traceback" not in res.output
    assert not recorded_activation  # refused while planning, before any backend was made
    assert not out.exists()


def test_make_backend_passes_options_through_and_names_unknown_ones(micro_exports, monkeypatch):
    from arl2rt.runtime.backends import make_backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the tensorrt backend's cuda device "exists"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    package = micro_exports.package("portable")
    backend = make_backend("tensorrt", package=package, options={"flavour": "tensorrt-rtx", "max_frames": 12})
    assert (backend.flavour_name, backend.max_frames) == ("tensorrt-rtx", 12)
    with pytest.raises(Arl2rtError, match=r"backend tensorrt: no option max_frame; it takes \['engine_dir', 'flavour'"):
        make_backend("tensorrt", package=package, options={"max_frame": 12})
    with pytest.raises(Arl2rtError, match="backend onnxruntime: no option flavour"):
        make_backend("onnxruntime", package=package, options={"flavour": "tensorrt"})


# -- with TensorRT and a GPU -------------------------------------------------------------------------------------
def _tensorrt_missing() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - the reason is reported in the skip
        return f"import tensorrt failed ({type(exc).__name__}: {exc}); TensorRT cannot be installed on this machine"
    if not torch.cuda.is_available():
        return "TensorRT is installed but there is no CUDA GPU"
    return None


needs_tensorrt = pytest.mark.skipif(_tensorrt_missing() is not None, reason=str(_tensorrt_missing()))


@pytest.fixture
def micro_tensorrt_package(micro_exports):
    return micro_exports.package("tensorrt")


@needs_tensorrt
def test_stream_matches_the_torch_backend(micro_tensorrt_package, micro_context, tmp_path):
    from arl2rt.model.random import random_model
    from arl2rt.parity.compare import Tolerances
    from arl2rt.parity.runner import run_parity
    from arl2rt.runtime.torch_backend import TorchBackend
    from micro_packages import MICRO

    model = random_model(MICRO)  # the package's weights; TorchBackend casts it in place
    ref = TorchBackend(model, StateSpec(MICRO, "float64"), "cuda")
    cand = TensorRTBackend(micro_tensorrt_package, cache_dir=tmp_path)
    with ref, cand:
        result, _ = run_parity(
            ref, cand, micro_context.cuda(), blocks=4, seed=1, tolerances=Tolerances.for_dtype("float32")
        )
    assert result.passed, result.first_failure()


@needs_tensorrt
def test_ping_pong_and_graph_replay(micro_tensorrt_package, micro_context, tmp_path):
    from arl2rt.runtime.streamer import Streamer

    outputs = {}
    for graphs in (False, True):
        with TensorRTBackend(micro_tensorrt_package, cache_dir=tmp_path, cuda_graphs=graphs) as be:
            streamer = Streamer(be, seed=0)
            streamer.start(micro_context.cuda())
            blocks, pointers = [], []
            for _ in range(3):
                blocks.append(streamer.next_block())
                pointers.append({n: t.data_ptr() for n, t in streamer.store.states.items()})
            outputs[graphs] = torch.cat(blocks, dim=2)
        for name in pointers[0]:  # present_state of commit n+2 lands in the buffer of commit n
            assert pointers[2][name] == pointers[0][name] != pointers[1][name]
    assert torch.equal(outputs[False], outputs[True])


@needs_tensorrt
def test_engines_of_another_setup_are_refused(micro_tensorrt_package, tmp_path):
    from arl2rt.runtime.trt.build import build_engines

    entry = build_engines(micro_tensorrt_package, cache_dir=tmp_path, max_frames=9).entry
    with pytest.raises(Arl2rtError, match="engines built for another setup"):
        with TensorRTBackend(micro_tensorrt_package, engine_dir=entry.path, max_frames=21):
            pass
