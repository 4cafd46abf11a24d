"""Shared fixtures: seeded tiny models and random (never zero) inputs; NaN-poisoned library allocations."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.utils._device

from arl2rt.model.config import PRESETS, ModelConfig
from arl2rt.model.random import random_context, random_model


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return PRESETS["tiny"]


@pytest.fixture
def tiny_model(tiny_cfg):
    return random_model(tiny_cfg, seed=0)


@pytest.fixture
def tiny_context(tiny_cfg) -> torch.Tensor:
    return random_context(tiny_cfg, seed=3)


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
