"""The TensorRT plugins' JIT ``impl`` bodies: the kernels launched from raw device pointers on TensorRT's stream.

:func:`enqueue_state_update` runs the whole update of the one-node ``arl2::gdn_state_update`` plugin (workspace from
torch's caching allocator on that stream); :func:`run_stage_jit` runs one AOT stage through Triton's launcher with the
very launch its ``aot_impl`` embeds. Imports no ``tensorrt``; Triton is imported on the first launch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from arl2rt.plugins.common import DevicePtr, run_launch
from arl2rt.plugins.gdn.aot_stages import AotStage, stage_dtype, stage_launch
from arl2rt.plugins.gdn.chunk_launch import launch_gdn_state_update
from arl2rt.plugins.gdn.chunk_plan import ChunkConfig, plan_chunk

# tactic -> kernel configuration the JIT impl may run (TensorRT times each and keeps the fastest)
JIT_TACTICS: dict[int, ChunkConfig] = {1: ChunkConfig(), 2: ChunkConfig(block_v=32)}


def enqueue_state_update(
    ptrs: dict[str, int],
    batch: int,
    seq_len: int,
    heads: int,
    head_k: int,
    head_v: int,
    dtype: torch.dtype,
    stream: int,
    tactic: int = 1,
) -> None:
    """The JIT ``impl`` body: the whole state update from raw pointers (``key``, ``value``, ``decay``, ``beta``,
    ``past_state``, ``present_state``) on the raw CUDA stream ``stream``; the workspace comes from torch's caching
    allocator on that stream, so it is reused safely across enqueues."""
    config = JIT_TACTICS[tactic]
    plan = plan_chunk(batch, seq_len, heads, head_k, head_v, dtype, config=config)
    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        workspace = torch.empty(plan.workspace_bytes, dtype=torch.uint8, device="cuda")
        launch_gdn_state_update(
            ptrs["key"],
            ptrs["value"],
            ptrs["decay"],
            ptrs["beta"],
            ptrs["past_state"],
            ptrs["present_state"],
            workspace.data_ptr(),
            batch,
            seq_len,
            heads,
            head_k,
            head_v,
            dtype,
            stream=stream,
            config=config,
        )


def run_stage_jit(stage: AotStage, tensors: dict[str, Any], batch: int, seq_len: int, stream: Any = None) -> None:
    """The JIT ``impl`` of one stage: the very launch the AOT path embeds (same grid, ints and argument order), run
    through Triton's launcher. ``tensors`` maps graph tensor names (``stage.tensors``) to tensors or raw device
    pointers; ``stream`` as in :func:`arl2rt.plugins.common.run_launch`."""
    grid, ints = stage_launch(stage, batch, seq_len)
    values: dict[str, Any] = dict(ints)
    for arg in stage.inputs + stage.outputs:
        x = tensors[stage.tensors[arg]]
        values[arg] = x if isinstance(x, torch.Tensor) else DevicePtr(int(x), stage_dtype(stage, arg))
    launch = dataclasses.replace(stage.launch, grid=grid)
    run_launch(launch, [values.get(a) for a in launch.args], stream)  # unused pointers go as None (constexpr)
