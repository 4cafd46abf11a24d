"""The plugins' TensorRT configuration (in-place switch, registration module, sources digest) and the Triton-free side.

``arl2rt export --target tensorrt`` (AOT stages), the engine cache key and running an AOT engine must work where Triton
is not installed: only the kernel modules import it, on the first launch or compile. Checked in a fresh process with
``triton`` blocked in ``sys.modules``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import arl2rt.plugins
from arl2rt.plugins.gdn import trt_register
from arl2rt.plugins.gdn.trt_config import INPLACE_STATE_ENV, plugin_sources_digest, triton_version, trt_plugin_config

SRC = Path(arl2rt.plugins.__file__).parents[2]


@pytest.fixture
def fresh_config():
    trt_plugin_config.cache_clear()
    yield
    trt_plugin_config.cache_clear()


def test_in_place_state_is_read_once_on_first_use(fresh_config, monkeypatch):
    monkeypatch.setenv(INPLACE_STATE_ENV, "1")
    assert trt_plugin_config().in_place_state
    monkeypatch.setenv(INPLACE_STATE_ENV, "0")
    assert trt_plugin_config().in_place_state  # fixed for the process: plugin descriptions and cache key agree


def test_in_place_state_is_off_unless_switched_on(fresh_config, monkeypatch):
    monkeypatch.delenv(INPLACE_STATE_ENV, raising=False)
    assert not trt_plugin_config().in_place_state


def test_registration_module_is_the_plugin_wrapper():
    assert trt_register.REGISTRATION_MODULE == "arl2rt.plugins.gdn.trt_plugin"
    assert (SRC / "arl2rt" / "plugins" / "gdn" / "trt_plugin.py").is_file()


def test_sources_digest_covers_every_plugin_source_and_the_triton_version():
    root = SRC / "arl2rt" / "plugins"
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    assert "gdn/chunk_kernels.py" in dict(files) and "common/launch.py" in dict(files)
    h = hashlib.sha256(f"triton {triton_version()}".encode())
    for name, path in files:
        h.update(name.encode() + hashlib.sha256(path.read_bytes()).hexdigest().encode())
    assert plugin_sources_digest() == h.hexdigest()


def test_triton_version_is_read_from_metadata():
    triton = pytest.importorskip("triton")
    assert triton.__version__ in triton_version()


_TRITON_BLOCKED = """
import json, sys
sys.modules["triton"] = None  # any `import triton` now raises ImportError

import torch

from arl2rt.plugins.gdn import aot_ptx, aot_stages, chunk_plan, read, trt_config
import arl2rt.export.passes.gdn_to_aot_stages
import arl2rt.runtime.tensorrt_backend
import arl2rt.runtime.trt.build

stages = aot_stages.gdn_stages(12, 128, 128, torch.bfloat16, seq_len=4680)
plan = chunk_plan.plan_chunk(1, 4680, 12, 128, 128, torch.bfloat16)
launch, _ = read.plan_block_read(1, 4680, 12, 128, 128, torch.bfloat16)
try:
    import arl2rt.plugins.gdn.chunk_kernels
    kernels = "imported"
except ImportError:
    kernels = "blocked"
print(json.dumps({
    "stages": [s.plugin for s in stages],
    "kernel_modules": sorted({s.launch.kernel.module for s in stages} | {launch.kernel.module}),
    "digest": trt_config.plugin_sources_digest(),
    "chunk_kernels": kernels,
}))
"""


def test_aot_side_and_plugin_config_import_without_triton():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", _TRITON_BLOCKED], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["stages"] == ["gdn_prep", "gdn_scan", "gdn_combine"]
    assert found["kernel_modules"] == ["arl2rt.plugins.gdn.chunk_kernels", "arl2rt.plugins.gdn.read_kernels"]
    assert found["digest"] == plugin_sources_digest()
    assert found["chunk_kernels"] == "blocked"  # the block held: nothing above needed Triton
