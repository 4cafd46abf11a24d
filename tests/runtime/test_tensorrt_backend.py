"""The TensorRT backend.

The first tests need no TensorRT: how a failed deserialization is explained and how engine I/O is checked. The rest
need TensorRT and a CUDA GPU, and skip with the reason where ``import tensorrt`` fails, which is every machine of this
project (TensorRT cannot be installed here): they are written to TensorRT's documented API and have never run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import StateSpec
from arl2rt.model.config import PRESETS
from arl2rt.runtime.tensorrt_backend import TensorRTBackend, check_engine_io, deserialize_error

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
