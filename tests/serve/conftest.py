"""A real tritonserver (nvidia-pytriton's) on loopback for the serving tests: found through $ARL2RT_TRITONSERVER
(.ci/run installs it), else the tests that need it skip, naming what is missing; CI (CI=true) fails instead."""

from __future__ import annotations

import os

import pytest

from arl2rt.errors import Arl2rtError
from arl2rt.export.package import export_package
from arl2rt.model.random import random_model
from arl2rt.serve.repository import write_repository
from arl2rt.serve.served import plan_settings
from arl2rt.serve.server import TritonServer, check_stub_python, find_install
from micro_configs import micro_config

IDLE_MODEL = "tiny-idle"  # its streams are freed after IDLE_TIMEOUT seconds (a model of its own: under load, four
# concurrent streams of one instance can wait longer than that between two blocks)
IDLE_TIMEOUT = 2.0


@pytest.fixture(scope="session")
def triton_install():
    try:
        install = find_install()
        check_stub_python(install.python)
    except Arl2rtError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must install the tritonserver (.ci/run): {exc}")
        pytest.skip(f"no usable tritonserver here: {exc}")
    return install


@pytest.fixture(scope="module")
def served(triton_install, micro_exports, tmp_path_factory):
    """A server with four models: tiny (random weights, torch), the same with a short idle timeout, the embedded
    model (torch) and the micro package (onnxruntime); stopped when the module's tests are done, whatever happened."""
    root = tmp_path_factory.mktemp("triton")
    repo = root / "repo"
    for name, source, idle in (
        ("tiny", {"config": "tiny"}, 120.0),
        (IDLE_MODEL, {"config": "tiny"}, IDLE_TIMEOUT),
        ("embedded", {}, 120.0),
        ("micro", {"model": micro_exports.package("onnxruntime").root}, 120.0),
    ):
        settings, loaded = plan_settings(idle_timeout=idle, **source)
        write_repository(repo, settings, loaded, name=name, max_streams=4)
    server = TritonServer(repo, root / "work", install=triton_install)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def hybrid_package(tmp_path_factory):
    """An all-hybrid micro model's package (onnxruntime target): the kind of model Triton's implicit state can hold."""
    cfg = micro_config("micro-hybrid", num_layers=1, hybrid_layers=(0,), latent_width=6, text_len=5, frames_per_block=2)
    return export_package(random_model(cfg, seed=0).eval(), tmp_path_factory.mktemp("hybrid") / "pkg")
