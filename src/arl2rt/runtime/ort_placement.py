"""Where onnxruntime put each node of a session: which execution provider runs it, and whether copies were inserted.

A step graph that runs on the CUDA EP must run there whole: a node left to the CPU EP makes onnxruntime insert
``MemcpyToHost``/``MemcpyFromHost`` around it, so a state or an activation crosses the PCIe bus every step, and CUDA
graphs cannot be captured. onnxruntime records the assignment when the session option
:data:`RECORD_ASSIGNMENT` is set; :func:`placement` reads it back and :func:`off_device` names what is not on the
device, for the backend to refuse before the first block.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

RECORD_ASSIGNMENT = "session.record_ep_graph_assignment_info"
COPY_OPS = ("MemcpyToHost", "MemcpyFromHost")


def record_assignment(options: Any) -> None:
    """Ask onnxruntime to keep the node -> provider assignment of sessions made with ``options``."""
    options.add_session_config_entry(RECORD_ASSIGNMENT, "1")


def placement(session: Any) -> dict[str, Counter[str]] | None:
    """Provider -> op type -> node count; ``None`` when this onnxruntime cannot say (no assignment API, or the
    session was made without :func:`record_assignment`)."""
    get = getattr(session, "get_provider_graph_assignment_info", None)
    if get is None:
        return None
    try:
        subgraphs = get()
    except Exception:  # onnxruntime's Fail when the record was not asked for (its types share no other base)
        return None
    if not subgraphs:
        return None
    found: dict[str, Counter[str]] = {}
    for subgraph in subgraphs:
        ops = found.setdefault(subgraph.ep_name, Counter())
        for node in subgraph.get_nodes():
            ops[_qualified(node.domain, node.op_type)] += 1
    return found


def off_device(found: dict[str, Counter[str]], provider: str) -> list[str]:
    """One line per fact that keeps a step from running wholly on ``provider``: nodes other providers took, and the
    copy nodes onnxruntime inserted between them."""
    lines = []
    for other, ops in sorted(found.items()):
        if other != provider and ops:
            lines.append(f"{sum(ops.values())} nodes on {other}: {_ops_text(ops)}")
    copies = Counter({op: n for ops in found.values() for op, n in ops.items() if op in COPY_OPS})
    if copies:
        lines.append(f"copy nodes between host and device: {_ops_text(copies)}")
    return lines


def summary(found: dict[str, Counter[str]]) -> dict[str, dict[str, int]]:
    """JSON-friendly form: provider -> op type -> count, op types most frequent first."""
    return {ep: dict(ops.most_common()) for ep, ops in sorted(found.items())}


def _qualified(domain: str, op_type: str) -> str:
    return op_type if domain in ("", "ai.onnx") else f"{domain}::{op_type}"


def _ops_text(ops: Counter[str]) -> str:
    return ", ".join(f"{op} x{n}" for op, n in ops.most_common())
