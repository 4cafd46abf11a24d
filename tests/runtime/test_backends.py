"""The backend registry: which targets and flavours each backend takes, its defaults, and the errors naming them."""

from __future__ import annotations

import pytest

from arl2rt.errors import Arl2rtError
from arl2rt.export.targets import TARGETS
from arl2rt.runtime.backends import BACKENDS, DEFAULT_BACKEND, DEFAULT_TARGET, check_target, resolve_device
from arl2rt.runtime.trt.flavour import DEFAULT_FLAVOUR, FLAVOURS


def test_every_target_a_backend_names_is_an_export_target_and_runs_somewhere():
    named = {t for b in BACKENDS.values() for t in b.targets}
    assert named == set(TARGETS) and DEFAULT_TARGET in TARGETS
    assert BACKENDS["tensorrt"].targets == ("tensorrt", "portable")  # what some TensorRT flavour builds
    assert BACKENDS["onnxruntime"].targets == ("onnxruntime", "onnxruntime-contrib", "portable")
    assert BACKENDS["torch"].targets == ()


def test_flavours_come_from_the_tensorrt_module():
    assert BACKENDS["tensorrt"].flavours == tuple(FLAVOURS) and BACKENDS["tensorrt"].default_flavour == DEFAULT_FLAVOUR
    assert all(not b.flavours for name, b in BACKENDS.items() if name != "tensorrt")


def test_defaults():
    assert {BACKENDS[name].runs for name in DEFAULT_BACKEND.values()} == set(DEFAULT_BACKEND)
    assert [resolve_device(name, None) for name in ("torch", "onnxruntime", "tensorrt")] == ["cpu", "cpu", "cuda"]
    assert resolve_device("tensorrt", "cuda:1") == "cuda:1"
    assert resolve_device("torch", "auto") in ("cpu", "cuda")


@pytest.mark.parametrize(
    "backend, target, message",
    [
        (
            "onnxruntime",
            "tensorrt",
            (
                r"onnxruntime runs the targets \['onnxruntime', 'onnxruntime-contrib', 'portable'\]"
                r"; the tensorrt"
            ),
        ),
        ("tensorrt", "onnxruntime", r"tensorrt runs the targets \['tensorrt', 'portable'\]; TensorRT does not parse"),
        ("torch", "portable", "torch runs no exported package"),
    ],
)
def test_a_target_a_backend_does_not_run_is_named(backend, target, message):
    for runs in BACKENDS[backend].targets:
        check_target(backend, runs, "--target")
    with pytest.raises(Arl2rtError, match=rf"--target '{target}': {message}"):
        check_target(backend, target, "--target")
