"""Where onnxruntime puts a package's nodes: read from its own assignment record, and refused on CUDA when a step
would not run wholly on the device. The contrib form (target onnxruntime-contrib) streams like the standard form."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import onnxruntime as ort
import pytest
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import GRAPHS
from arl2rt.runtime import onnxruntime_backend
from arl2rt.runtime.onnxruntime_backend import CPU_EP, CUDA_EP, OnnxRuntimeBackend
from arl2rt.runtime.ort_placement import off_device, placement, record_assignment, summary
from arl2rt.runtime.streamer import Streamer


def _session(path, record: bool = True):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if record:
        record_assignment(options)
    return ort.InferenceSession(str(path), options, providers=[CPU_EP])


@pytest.mark.parametrize("target", ["onnxruntime", "onnxruntime-contrib"])
def test_placement_counts_every_node_of_a_cpu_session(micro_exports, target):
    package = micro_exports.package(target)
    path = package.graph_path("commit_step")
    found = placement(_session(path))
    assert set(found) == {CPU_EP}
    hybrid = len(package.config.hybrid_layers)
    if target == "onnxruntime-contrib":  # a kernel of its own
        la = "com.microsoft::LinearAttention"
        assert found[CPU_EP][la] == hybrid
    else:  # a kernel, or (onnxruntime 1.32 CPU) the op's ONNX function body, one Scan over the tokens
        la = "LinearAttention" if found[CPU_EP]["LinearAttention"] else "Scan"
        assert found[CPU_EP][la] == hybrid
    assert off_device(found, CPU_EP) == []
    lines = off_device(found, CUDA_EP)
    assert len(lines) == 1 and lines[0].startswith(f"{sum(found[CPU_EP].values())} nodes on {CPU_EP}: ")
    assert la in lines[0]
    assert list(summary(found)[CPU_EP].values()) == sorted(found[CPU_EP].values(), reverse=True)


def test_without_the_record_placement_says_it_does_not_know(micro_exports):
    assert placement(_session(micro_exports.package("onnxruntime").graph_path("denoise_step"), record=False)) is None


def test_copy_nodes_are_named_even_on_the_device():
    found = {CUDA_EP: Counter({"MatMul": 3, "MemcpyFromHost": 2}), CPU_EP: Counter({"Shape": 1})}
    assert off_device(found, CUDA_EP) == [
        f"1 nodes on {CPU_EP}: Shape x1",
        "copy nodes between host and device: MemcpyFromHost x2",
    ]


def test_a_step_off_the_device_is_refused_before_the_first_block(micro_exports, monkeypatch, tmp_path):
    """The CUDA check reads the session's assignment: a node left on the CPU EP is an error naming file, graph, op."""
    fake = SimpleNamespace(
        get_provider_graph_assignment_info=lambda: [
            SimpleNamespace(ep_name=CUDA_EP, get_nodes=lambda: [SimpleNamespace(domain="", op_type="MatMul")]),
            SimpleNamespace(ep_name=CPU_EP, get_nodes=lambda: [SimpleNamespace(domain="", op_type="LinearAttention")]),
        ]
    )
    path = tmp_path / "commit_step.onnx"
    with pytest.raises(Arl2rtError) as err:
        onnxruntime_backend._check_on_device(fake, path, "commit_step")
    text = str(err.value)
    assert f"{path}: the commit_step graph does not run wholly on {CUDA_EP}" in text
    assert f"  1 nodes on {CPU_EP}: LinearAttention x1" in text.splitlines()
    # a session all on the device passes
    onnxruntime_backend._check_on_device(
        SimpleNamespace(get_provider_graph_assignment_info=lambda: fake.get_provider_graph_assignment_info()[:1]),
        path,
        "commit_step",
    )


def test_contrib_package_streams_like_the_standard_one(micro_exports, micro_context):
    videos = []
    for target in ("onnxruntime", "onnxruntime-contrib"):
        package = micro_exports.package(target)
        assert set(package.spec.graphs) == set(GRAPHS)
        with OnnxRuntimeBackend(package) as be:
            videos.append(Streamer(be, seed=5).generate(micro_context, 3))
    torch.testing.assert_close(videos[1], videos[0], rtol=1e-5, atol=1e-5)
    assert videos[0].abs().max() > 0.1  # a stream, not zeros
