"""Gated DeltaNet kernels: the chunked state update and the block-level read (Triton), beside their references.

Modules by concern: :mod:`.naive` (pure-torch references), :mod:`.constants` (the chunk size), ``*_kernels`` (Triton),
:mod:`.chunk_plan` and :mod:`.read` (launch plans), :mod:`.chunk_launch` (raw-pointer launches), :mod:`.chunk` and
:mod:`.read` (the torch API); :mod:`.op` is the ``torch.ops.arl2.gdn_state_update`` custom op, and the ``aot_*``,
``trt_*`` and :mod:`.plugin_spec` modules are the TensorRT plugins. Triton is imported by the ``*_kernels`` modules
alone (on the first launch) and by :mod:`.aot_compile` when it compiles; only :mod:`.trt_plugin` imports TensorRT.
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

# the fast names' modules are imported on first use: importing the package loads only the references
_LAZY = {
    "ChunkConfig": "chunk_plan",
    "plan_chunk": "chunk_plan",
    "launch_gdn_forward": "chunk_launch",
    "launch_gdn_state_update": "chunk_launch",
    "chunk_gated_delta_rule": "chunk",
    "chunk_gated_delta_rule_state": "chunk",
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
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
