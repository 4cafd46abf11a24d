"""Parity runs over torch backends: exact on identical backends, within tolerance for float32, and a planted error is
found at the step that made it (step mode) and followed as drift over later blocks (drift mode)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import StateSpec
from arl2rt.model.random import random_context, random_model
from arl2rt.model.scheduler import FlowMatchScheduler
from arl2rt.parity.runner import run_parity
from arl2rt.runtime.backend import Backend
from arl2rt.runtime.torch_backend import TorchBackend


@pytest.fixture
def small_cfg(tiny_cfg):
    return dataclasses.replace(tiny_cfg, frames_per_block=1, latent_height=4, latent_width=4)


def _torch(cfg, dtype):
    return TorchBackend(lambda: random_model(cfg, seed=0), StateSpec(cfg, dtype))


class PlantedError(Backend):
    """Wraps a backend; adds ``delta`` to one output of one block's commit (the block read from ``frame_offset``)."""

    name = "planted"

    def __init__(self, inner: Backend, tensor: str, block: int, delta: float) -> None:
        super().__init__(inner.spec, inner.device)
        self.inner, self.tensor, self.block, self.delta = inner, tensor, block, delta

    def activate_impl(self) -> None:
        self.inner.activate()

    def run_impl(self, graph, feeds, out):
        outputs = dict(self.inner.run(graph, feeds, out))
        block = int(feeds["frame_offset"]) // self.spec.config.frames_per_block if graph != "encode_context" else -1
        if graph == "commit_step" and block == self.block:
            outputs[self.tensor] = outputs[self.tensor] + self.delta
        return outputs


def test_identical_backends_compare_exactly(small_cfg):
    blocks = 2
    with _torch(small_cfg, "float64") as ref, _torch(small_cfg, "float64") as cand:
        result, captures = run_parity(ref, cand, random_context(small_cfg, 1), blocks=blocks, seed=3)
    passes = len(FlowMatchScheduler.from_config(small_cfg).timesteps) + 1
    assert [s.mode for s in result.steps].count("step") == 1 + blocks * passes
    assert [s.mode for s in result.steps].count("drift") == 1 + blocks * passes
    assert result.passed and captures == []
    assert all(m.max_abs == 0.0 for s in result.steps for m in s.tensors.values())
    # drift mode also compares the step inputs: the commit step's latents are the emitted block
    commit = next(s for s in result.steps if s.mode == "drift" and s.graph == "commit_step")
    assert set(commit.tensors) == {"latents", *(s.name for s in ref.spec.commit_outputs())}


def test_float32_candidate_is_within_default_tolerances(small_cfg):
    with _torch(small_cfg, "float64") as ref, _torch(small_cfg, "float32") as cand:
        result, _ = run_parity(ref, cand, random_context(small_cfg, 1), blocks=3, seed=3)
    assert result.passed, result.first_failure()
    summary = result.summary()
    for mode in ("drift", "step"):
        assert 0 < summary[mode]["rel_l2"] < 1e-5 and summary[mode]["min_cosine"] > 0.999999
    assert [p.block for p in result.drift("drift")] == [0, 1, 2]
    json.dumps(result.to_dict(), allow_nan=False)


def test_planted_state_error_is_found_where_it_was_made_and_drifts_on(small_cfg):
    with (
        _torch(small_cfg, "float64") as ref,
        PlantedError(_torch(small_cfg, "float64"), "present_state.1", 1, 1e-4) as c,
    ):
        result, _ = run_parity(ref, c, random_context(small_cfg, 1), blocks=3, seed=3)
    failure = result.first_failure()
    assert (failure["mode"], failure["graph"], failure["block"], failure["tensor"]) == (
        "step",
        "commit_step",
        1,
        "present_state.1",
    )
    assert failure["max_abs"] == pytest.approx(1e-4, rel=1e-6)
    step_ok = {p.block: p.passed for p in result.drift("step")}
    drift = {p.block: p for p in result.drift("drift")}
    # teacher forcing: only block 1's commit is wrong; free streams: every block after it has inherited the error
    assert step_ok == {0: True, 1: False, 2: True}
    assert drift[0].passed and drift[0].max_abs == 0 and not drift[1].passed and not drift[2].passed


def test_capture_returns_golden_outputs_for_the_candidate_feeds(small_cfg):
    with _torch(small_cfg, "float64") as ref, _torch(small_cfg, "float32") as cand:
        result, captures = run_parity(
            ref, cand, random_context(small_cfg, 1), blocks=2, seed=3, modes=("drift",), capture_block=1
        )
        assert [(c.graph, c.block) for c in captures] == [
            ("encode_context", 0),
            ("denoise_step", 1),
            ("commit_step", 1),
        ]
        commit = captures[-1]
        assert all(t.dtype == s.torch_dtype for s, t in zip(cand.spec.step_inputs(), commit.feeds.values()))
        assert commit.feeds["past_key.3"].shape[1] == small_cfg.tokens_per_block  # the past of block 1
        got = cand.run("commit_step", commit.feeds)
    for name, golden in commit.outputs.items():
        assert golden.dtype == torch.float32
        torch.testing.assert_close(got[name], golden, rtol=1e-4, atol=1e-5)
    assert {s.mode for s in result.steps} == {"drift"}


def test_bad_arguments_are_named(small_cfg, tiny_cfg):
    ctx = random_context(small_cfg, 1)
    with _torch(small_cfg, "float64") as ref, _torch(small_cfg, "float32") as cand:
        with pytest.raises(Arl2rtError, match=r"parity modes \['teacher'\]"):
            run_parity(ref, cand, ctx, blocks=1, modes=("teacher",))
        with pytest.raises(Arl2rtError, match="capture block 5: expected 0..1"):
            run_parity(ref, cand, ctx, blocks=2, capture_block=5)
        with _torch(tiny_cfg, "float32") as other, pytest.raises(Arl2rtError, match="configs? .*differ"):
            run_parity(ref, other, ctx, blocks=1)
