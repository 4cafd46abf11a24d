"""Which nodes of an ONNX graph copy between device and host on onnxruntime's CUDA EP, each node run alone.

A whole step can show host<->device copies that its node placement does not (no Memcpy node: the copy is inside a
kernel, or onnxruntime moves a value to CPU memory itself). This runs every node of the graph as a one-node model on
the CUDA EP, its inputs bound in device memory (shapes from onnx's shape inference, dynamic dims as 1, floats random,
integers 1, so a node whose shape input is computed upstream fails alone and is listed as such), its outputs left to
onnxruntime on the device, and counts the memcpy events CUPTI sees during a second run, with their bytes. Then the
whole graph, the same way, for comparison.

Run on the GPU machine with onnxruntime-gpu: ``python -m benchmarks.ort_node_copies PKG/commit_step.onnx``.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import onnx
import torch
from onnx import helper, shape_inference

_TORCH = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 16: torch.bfloat16}


def cuda_trace(run) -> list[dict]:
    """The GPU events (``cat``: kernel, gpu_memcpy, gpu_memset; name; bytes of a copy) CUPTI records during
    ``run()``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text()).get("traceEvents", [])
    return [
        {"cat": e["cat"], "name": e.get("name", ""), "bytes": e.get("args", {}).get("bytes")}
        for e in events
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
    ]


def host_copies(events: list[dict]) -> list[dict]:
    """The device<->host copies among ``events`` (kind, bytes)."""
    return [
        {"kind": e["name"], "bytes": e["bytes"]}
        for e in events
        if e["cat"] == "gpu_memcpy" and ("DtoH" in e["name"] or "HtoD" in e["name"])
    ]


def _feeds(values: list[onnx.ValueInfoProto]) -> dict[str, torch.Tensor]:
    feeds = {}
    for v in values:
        dtype = _TORCH[v.type.tensor_type.elem_type]
        shape = [d.dim_value if d.dim_value > 0 else 1 for d in v.type.tensor_type.shape.dim]
        t = torch.rand(shape, device="cuda") if dtype.is_floating_point else torch.ones(shape, device="cuda")
        feeds[v.name] = t.to(dtype)
    return feeds


def run_on_device(model: onnx.ModelProto, feeds: dict[str, torch.Tensor]):
    """A no-argument callable running ``model`` on the CUDA EP alone with ``feeds`` bound in device memory."""
    import onnxruntime as ort

    from arl2rt.runtime.onnxruntime_backend import _ONNX_TYPES

    session = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
    binding = session.io_binding()
    for name, t in feeds.items():
        binding.bind_input(name, "cuda", 0, _ONNX_TYPES[t.dtype][0], list(t.shape), t.data_ptr())
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda", 0)

    def run():
        session.run_with_iobinding(binding)

    run()  # the first run allocates and plans
    torch.cuda.synchronize()
    return run


def node_copies(path: Path) -> tuple[list[dict], dict]:
    model = shape_inference.infer_shapes(onnx.load(str(path)), data_prop=True)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    known = {v.name: v for v in [*graph.value_info, *graph.input, *graph.output]}
    rows: list[dict] = []
    by_op: collections.Counter[str] = collections.Counter()
    for node in graph.node:
        inputs = list(dict.fromkeys(i for i in node.input if i and i not in inits))
        if any(i not in known for i in inputs):
            rows.append({"node": node.name, "op": node.op_type, "error": "an input has no inferred shape"})
            continue
        # a contrib op has no shape inference: its outputs go in untyped-shape, with its first input's element type
        elem = known[inputs[0]].type.tensor_type.elem_type if inputs else onnx.TensorProto.FLOAT
        outputs = [known.get(o) or helper.make_tensor_value_info(o, elem, None) for o in node.output if o]
        one = helper.make_graph(
            [node],
            node.name or node.op_type,
            [known[i] for i in inputs],
            outputs,
            [inits[i] for i in dict.fromkeys(node.input) if i in inits],
        )
        single = helper.make_model(one, opset_imports=model.opset_import, ir_version=model.ir_version)
        try:
            copies = host_copies(cuda_trace(run_on_device(single, _feeds([known[i] for i in inputs]))))
        except Exception as exc:  # noqa: BLE001 - a node that cannot run alone is a row, not the end of the probe
            rows.append({"node": node.name, "op": node.op_type, "error": f"{type(exc).__name__}: {str(exc)[:160]}"})
            continue
        by_op[node.op_type] += len(copies)
        if copies:
            rows.append({"node": node.name, "op": node.op_type, "copies": copies, "inputs": list(node.input)})
    whole = host_copies(cuda_trace(run_on_device(onnx.load(str(path)), _feeds(list(graph.input)))))
    return rows, {"copies_by_op": dict(by_op), "whole_graph": whole}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graph", type=Path)
    args = ap.parse_args(argv)
    rows, summary = node_copies(args.graph)
    for row in rows:
        print(json.dumps(row))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
