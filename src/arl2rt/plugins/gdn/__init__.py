"""Gated DeltaNet kernels: the chunked state update and the block-level read (Triton), beside their references.

The fast names import Triton on first use, so ``import arl2rt.plugins.gdn`` works where Triton is absent.
"""

from __future__ import annotations

import importlib
from typing import Any

from arl2rt.plugins.gdn.naive import (
    naive_block_read,
    naive_chunk_gated_delta_rule,
    naive_chunk_gated_delta_rule_state,
    naive_recurrent_gated_delta_rule,
)

_FAST = {
    "ChunkConfig": "chunk",
    "chunk_gated_delta_rule": "chunk",
    "chunk_gated_delta_rule_state": "chunk",
    "launch_gdn_forward": "chunk",
    "launch_gdn_state_update": "chunk",
    "plan_chunk": "chunk",
    "ReadConfig": "read",
    "block_read": "read",
    "launch_block_read": "read",
    "plan_block_read": "read",
}

__all__ = [
    "ChunkConfig",
    "ReadConfig",
    "block_read",
    "chunk_gated_delta_rule",
    "chunk_gated_delta_rule_state",
    "launch_block_read",
    "launch_gdn_forward",
    "launch_gdn_state_update",
    "naive_block_read",
    "naive_chunk_gated_delta_rule",
    "naive_chunk_gated_delta_rule_state",
    "naive_recurrent_gated_delta_rule",
    "plan_block_read",
    "plan_chunk",
]


def __getattr__(name: str) -> Any:
    if name in _FAST:
        return getattr(importlib.import_module(f"{__name__}.{_FAST[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
