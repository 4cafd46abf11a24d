"""Shared fixtures: seeded tiny and micro models, random (never zero) inputs, the micro model's exports traced once
per session (micro_packages.py), with a tiny VAE decoder too, Wan2.1's or TAEHV's (micro_vae_packages.py);
NaN-poisoned library allocations."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.utils._device

from arl2rt.model.config import PRESETS, ModelConfig
from arl2rt.model.random import random_context, random_model
from arl2rt.model.vae.taehv.checkpoint import decoder_from_tensors
from micro_packages import MICRO, MicroExports
from micro_vae_packages import MicroVaeExports
from model.vae.taehv_reference import TINY_TAEHV, random_taehv_state


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return PRESETS["tiny"]


@pytest.fixture
def tiny_model(tiny_cfg):
    return random_model(tiny_cfg, seed=0)


@pytest.fixture
def tiny_context(tiny_cfg) -> torch.Tensor:
    return random_context(tiny_cfg, seed=3)


@pytest.fixture(scope="session")
def micro_model():
    """Seed 0, as ``arl2rt parity --config`` builds it: packages of its weights pass the CLI's parity check."""
    return random_model(MICRO, seed=0).eval()


@pytest.fixture
def micro_context() -> torch.Tensor:
    return random_context(MICRO, seed=3)


@pytest.fixture(scope="session")
def micro_exports(micro_model, tmp_path_factory) -> MicroExports:
    """The micro model's graphs and packages, each traced or built once per session (read-only: see its docstring)."""
    return MicroExports(micro_model, tmp_path_factory.mktemp("micro-packages"))


@pytest.fixture(scope="session")
def micro_vae_exports(micro_exports, tmp_path_factory) -> MicroVaeExports:
    """The micro model with a tiny VAE decoder: decode graphs traced once per session, packages built once."""
    return MicroVaeExports(micro_exports, tmp_path_factory.mktemp("micro-vae-packages"))


@pytest.fixture(scope="session")
def micro_taehv_exports(micro_exports, tmp_path_factory) -> MicroVaeExports:
    """The micro model with a tiny TAEHV decoder (random weights under the real key names), likewise."""
    decoder = decoder_from_tensors(random_taehv_state(seed=0), TINY_TAEHV, "random TAEHV weights")
    return MicroVaeExports(micro_exports, tmp_path_factory.mktemp("micro-taehv-packages"), decoder)


_EMPTY_FACTORIES = ("empty", "empty_like", "empty_strided")


@pytest.fixture(autouse=True)
def _poison_uninitialised_memory(monkeypatch):
    """torch.empty* called from arl2rt code returns NaN-filled memory, so reading a slot nothing wrote fails loudly."""

    def poisoned(factory):
        def make(*args, **kwargs):
            out = factory(*args, **kwargs)
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("arl2rt") and out.is_floating_point():
                out.fill_(float("nan"))
            return out

        return make

    # `with torch.device("meta")` caches its set of factories on first use: cache the real ones, or models built on
    # meta (checkpoint loading, parameter counts) would silently allocate and initialise real memory under the patch.
    torch.utils._device._device_constructors()
    for name in _EMPTY_FACTORIES:
        monkeypatch.setattr(torch, name, poisoned(getattr(torch, name)))
