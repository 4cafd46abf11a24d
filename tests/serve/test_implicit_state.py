"""Implicit-state models (onnxruntime/TensorRT backends): which models qualify, the state entries generated from the
StateSpec, and the joined step graph run on onnxruntime under Triton's state rule (each state output is the next
request's state input, zeros first), driven by the one Streamer: the same blocks, bit for bit, as the package's own
step graphs. No server runs these models here (nvidia-pytriton's has no onnxruntime backend)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from arl2rt.export.state_spec import PAST_STATE, PRESENT_STATE, StateSpec
from arl2rt.model.random import random_context
from arl2rt.runtime.backend import Backend
from arl2rt.runtime.onnxruntime_backend import OnnxRuntimeBackend
from arl2rt.runtime.streamer import Streamer
from arl2rt.serve import model_config as mc
from arl2rt.serve.implicit_state import MODEL_FILE, why_not
from arl2rt.serve.repository import write_repository
from arl2rt.serve.served import plan_settings
from arl2rt.serve.step_graph import COMMIT
from micro_packages import MICRO


class TritonStateRule(Backend):
    """Runs the joined step graph as Triton would for one sequence: it keeps the states itself (zeros at the start,
    each request's present states become the next request's past states) and ignores the past states it is fed,
    checking only that they equal its own. encode_context runs on ``encoder`` (the StateStore wants its outputs); the
    joined graph recomputes the text K/V from the context of every request."""

    name = "triton-state-rule"

    def __init__(self, model_path, encoder: OnnxRuntimeBackend) -> None:
        super().__init__(encoder.spec)
        self.model_path, self.encoder = model_path, encoder
        self.mismatches: list[str] = []

    def activate_impl(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(str(self.model_path), options, providers=["CPUExecutionProvider"])

    def run_impl(self, graph, feeds, out):
        spec = self.spec
        if graph == "encode_context":
            self.context = feeds[spec.name("context")].numpy()
            self.states = {s.name: np.zeros(s.resolve(batch=1), np.float32) for s in spec.of_kind(PAST_STATE)}
            return self.encoder.run(graph, feeds)
        for name, held in self.states.items():
            if not np.array_equal(feeds[name].numpy(), held):
                self.mismatches.append(f"{graph}: {name}")
        request = {
            spec.name("context"): self.context,
            **{s.name: feeds[s.name].numpy() for s in spec.step_inputs()[:2]},
            spec.step_inputs()[2].name: feeds[spec.step_inputs()[2].name].reshape(1).numpy(),
            COMMIT: np.array([graph == "commit_step"]),
            **self.states,
        }
        names = [o.name for o in self.session.get_outputs()]
        outputs = dict(zip(names, self.session.run(names, request)))
        presents = {s.name: outputs[s.name] for s in spec.of_kind(PRESENT_STATE)}
        if graph == "denoise_step":
            assert all(np.array_equal(presents[spec.present_of(n)], v) for n, v in self.states.items())
            return {spec.name("velocity"): torch.from_numpy(outputs[spec.name("velocity")])}
        self.states = {spec.past_of(n): v for n, v in presents.items()}
        return {n: torch.from_numpy(v.copy()) for n, v in presents.items()}


def test_which_models_qualify(micro_vae_exports, hybrid_package, tiny_cfg):
    assert "softmax layers [1] return only each block's new K/V" in why_not(StateSpec(MICRO))
    assert "softmax layers [3]" in why_not(StateSpec(tiny_cfg))
    with_vae = StateSpec(hybrid_package.config, vae=micro_vae_exports.spec().vae)
    assert "decode_first, which takes no caches" in why_not(with_vae)
    assert why_not(hybrid_package.spec) is None


def test_a_package_that_does_not_qualify_gets_a_note_and_only_the_python_model(micro_exports, tmp_path):
    settings, loaded = plan_settings(model=micro_exports.package("onnxruntime").root)
    written = write_repository(tmp_path, settings, loaded, name="m")
    assert list(written.models) == ["m"] and not (tmp_path / "m_step").exists()
    assert written.notes == [
        "no implicit-state model (onnxruntime/TensorRT backends): config micro: softmax layers [1] return only each "
        "block's new K/V, which Triton's implicit state (an output replaces its input whole) cannot append to a cache"
    ]


def test_the_state_entries_follow_the_state_spec(hybrid_package, tmp_path):
    settings, loaded = plan_settings(model=hybrid_package.root, idle_timeout=7)
    written = write_repository(tmp_path, settings, loaded, name="h", max_streams=3)
    assert list(written.models) == ["h", "h_step"] and written.notes == []
    path = tmp_path / "h_step" / "config.pbtxt"
    config = mc.parse_config(path.read_text(), str(path))
    spec, m = hybrid_package.spec, mc.pb2()
    assert config.backend == "onnxruntime" and config.max_batch_size == 1
    states = [(s.input_name, s.output_name, s.data_type, list(s.dims)) for s in config.sequence_batching.state]
    expected = [(s.name, spec.present_of(s.name), m.TYPE_FP32, list(s.shape[1:])) for s in spec.of_kind(PAST_STATE)]
    assert states == expected and len(states) == len(spec.config.hybrid_layers)
    assert all(
        s.initial_state[0].zero_data and list(s.initial_state[0].dims) == list(s.dims)
        for s in config.sequence_batching.state
    )
    assert config.sequence_batching.max_sequence_idle_microseconds == 7_000_000
    assert not config.sequence_batching.control_input  # the graph takes none: Triton starts sequences itself
    session = ort.InferenceSession(str(tmp_path / "h_step" / "1" / MODEL_FILE))
    graph_inputs = {i.name for i in session.get_inputs()}
    assert {i.name for i in config.input} | {s.input_name for s in config.sequence_batching.state} == graph_inputs
    assert {o.name for o in config.output} | {s.output_name for s in config.sequence_batching.state} == {
        o.name for o in session.get_outputs()
    }


@pytest.mark.parametrize("seed", [0, 3])
def test_the_joined_graph_under_triton_state_rule_equals_the_package_bit_for_bit(hybrid_package, tmp_path, seed):
    settings, loaded = plan_settings(model=hybrid_package.root)
    write_repository(tmp_path, settings, loaded, name="h")
    context = random_context(hybrid_package.config, seed)
    with OnnxRuntimeBackend(hybrid_package) as reference:
        streamer = Streamer(reference, seed=seed)
        streamer.start(context)
        expected = [b.clone() for b in streamer.stream(3)]
        rule = TritonStateRule(tmp_path / "h_step" / "1" / MODEL_FILE, reference)
        with rule:
            served = Streamer(rule, seed=seed)
            served.start(context)
            got = list(served.stream(3))
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert rule.mismatches == []  # Triton's rule kept exactly the states the runtime's StateStore keeps
