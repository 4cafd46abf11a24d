"""Shared fixtures: seeded tiny models and random (never zero) inputs."""

from __future__ import annotations

import pytest
import torch

from arl2rt.model.config import PRESETS, ModelConfig
from arl2rt.runtime.generate import random_context, random_model


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return PRESETS["tiny"]


@pytest.fixture
def tiny_model(tiny_cfg):
    return random_model(tiny_cfg, seed=0)


@pytest.fixture
def tiny_context(tiny_cfg) -> torch.Tensor:
    return random_context(tiny_cfg, seed=3)
