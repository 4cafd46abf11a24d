"""Metrics and tolerances of the parity comparator, on tensors whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import GRAPHS, StateSpec
from arl2rt.model.config import PRESETS
from arl2rt.parity.compare import (
    Tolerances,
    check_tolerance_names,
    compare_func,
    compared_names,
    parse_tolerances,
    tensor_metrics,
)


def test_metrics_of_a_known_perturbation():
    ref = torch.tensor([1.0, -2.0, 4.0, 0.5], dtype=torch.float64)
    cand = ref + torch.tensor([0.0, 0.02, -0.04, 0.0])
    m = tensor_metrics(ref, cand, atol=0.0, rtol=0.011)
    assert m.max_abs == pytest.approx(0.04)
    assert m.max_rel == pytest.approx(0.01)
    assert m.peak_rel == pytest.approx(0.04 / 4.0)
    assert m.rel_l2 == pytest.approx(math.sqrt(0.02**2 + 0.04**2) / math.sqrt(1 + 4 + 16 + 0.25))
    assert m.cosine == pytest.approx(float(torch.dot(ref, cand) / (ref.norm() * cand.norm())))
    mse = (0.02**2 + 0.04**2) / 4
    assert m.psnr == pytest.approx(20 * math.log10(4.0) - 10 * math.log10(mse))
    assert m.passed and m.mismatches == 0
    assert tensor_metrics(ref, cand, atol=0.0, rtol=0.009).mismatches == 2


def test_element_fails_only_when_both_tolerances_are_exceeded():
    """polygraphy's elemwise rule: a near-zero reference element passes on atol although its rel error is huge."""
    ref = torch.tensor([1e-9, 1.0], dtype=torch.float64)
    cand = torch.tensor([2e-9, 1.0 + 1e-6], dtype=torch.float64)
    assert tensor_metrics(ref, cand, atol=1e-8, rtol=1e-5).passed
    assert not tensor_metrics(ref, cand, atol=1e-10, rtol=1e-5).passed
    assert not tensor_metrics(ref, cand, atol=1e-8, rtol=1e-7).passed


def test_non_finite_candidate_fails_whatever_the_tolerance():
    ref = torch.randn(8, dtype=torch.float64)
    cand = ref.clone()
    cand[3] = float("nan")
    m = tensor_metrics(ref, cand, atol=1e9, rtol=1e9)
    assert not m.finite and not m.passed and m.mismatches == 1
    assert m.to_dict()["max_abs"] == "nan"  # JSON has no NaN


def test_exact_match_and_empty_tensors():
    ref = torch.randn(3, 5, dtype=torch.float64)
    m = tensor_metrics(ref, ref.float(), atol=0, rtol=0)
    assert m.cosine == pytest.approx(1.0) and m.psnr > 140
    assert tensor_metrics(ref, ref, 0, 0).psnr == math.inf
    assert tensor_metrics(torch.empty(1, 0, 4), torch.empty(1, 0, 4), 0, 0).passed


def test_shape_mismatch_is_an_error():
    with pytest.raises(Arl2rtError, match=r"reference shape \[2, 3\], candidate \[3, 2\]"):
        tensor_metrics(torch.zeros(2, 3), torch.zeros(3, 2), 0, 0)


def test_tolerance_lookup_name_then_kind_then_default():
    tol = Tolerances({"": 1e-3, "present_state": 1e-5, "present_state.2": 1e-7}, {"": 1e-2})
    assert tol.lookup("velocity") == (1e-3, 1e-2)
    assert tol.lookup("present_state.0") == (1e-5, 1e-2)
    assert tol.lookup("present_state.2") == (1e-7, 1e-2)
    compare = compare_func(tol)
    ref = torch.ones(4, dtype=torch.float64)
    assert compare("velocity", ref, ref + 1e-4).passed
    assert not compare("present_state.2", ref, ref + 1e-4 * torch.tensor([0, 0, 0, 1e3])).passed


def test_defaults_per_dtype_keep_states_tighter_and_accept_overrides():
    tol = Tolerances.for_dtype("float32", atol={"velocity": 5e-4})
    assert tol.lookup("present_state.1")[0] < tol.lookup("present_key.3")[0]
    assert tol.lookup("velocity")[0] == 5e-4
    with pytest.raises(Arl2rtError, match="no default tolerances for dtype 'int8'"):
        Tolerances.for_dtype("int8")
    with pytest.raises(Arl2rtError, match="expected a default"):
        Tolerances({"velocity": 1.0}, {"": 1.0})


def test_parse_tolerances_polygraphy_syntax():
    assert parse_tolerances(["1e-4", "present_state:1e-6", "velocity:0.01"], "--atol") == {
        "": 1e-4,
        "present_state": 1e-6,
        "velocity": 0.01,
    }
    with pytest.raises(Arl2rtError, match=r"--rtol 'velocity:abc': expected VALUE or NAME:VALUE"):
        parse_tolerances(["velocity:abc"], "--rtol")
    with pytest.raises(Arl2rtError, match="non-negative"):
        parse_tolerances(["-1"], "--atol")


def test_every_compared_tensor_and_kind_is_a_valid_tolerance_name_and_nothing_else():
    spec = StateSpec(PRESETS["tiny"])
    names = compared_names(spec)
    assert set(names) >= {s.name for g in GRAPHS for s in spec.outputs(g)} and "latents" in names
    check_tolerance_names({"": 1.0, **dict.fromkeys(names, 1.0), "present_state": 1.0, "context_key": 1.0}, spec, "x")
    for typo in ("present_states", "velocity.0", "past_key.3", "timestep", "present_key.0"):
        with pytest.raises(Arl2rtError, match=f"--atol {typo}:1: config tiny has no compared tensor or kind"):
            check_tolerance_names({typo: 1.0}, spec, "--atol")


def test_unknown_tolerance_message_lists_kinds_with_their_layers():
    with pytest.raises(Arl2rtError) as info:
        check_tolerance_names({"veloctiy": 1e-3}, StateSpec(PRESETS["tiny"]), "--rtol")
    message = str(info.value)
    assert "(did you mean 'velocity'?)" in message
    assert message.endswith(
        "context_key.{0-3}, context_value.{0-3}, latents, present_key.{3}, present_state.{0-2}, present_value.{3}, "
        "velocity"
    )
