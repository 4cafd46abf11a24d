"""Hand one step to polygraphy: its feeds and golden outputs in polygraphy's JSON formats, plus the commands to run.

``polygraphy run GRAPH.onnx --trt --load-inputs G.inputs.json --load-outputs G.outputs.json`` then checks a TensorRT
engine on a user's machine against our float64 reference, with no arl2rt installed there. The files are written here
without importing polygraphy (a dev dependency), in the format of polygraphy 0.49+ ``polygraphy.json``:

* inputs: a JSON list with one feed dict per iteration, ``{name: ndarray}``;
* outputs: a ``RunResults``: ``{"lst": [[runner, [IterationResult]]]}`` with each array wrapped in a ``LazyArray``;
* an array is ``{"array": base64(np.save(arr)), "polygraphy_class": "ndarray"}``.

NumPy has no bfloat16, so a bfloat16 package cannot be handed over this way (an error says so).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shlex
import tempfile
from pathlib import Path

import numpy as np
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import StateSpec
from arl2rt.parity.compare import Tolerances
from arl2rt.parity.runner import Capture

RUNNER_NAME = "arl2rt-float64-reference"
COMMANDS_FILE = "commands.json"
_CLASS = "polygraphy_class"


def _array(tensor: torch.Tensor) -> dict:
    if tensor.dtype == torch.bfloat16:
        raise Arl2rtError(
            "polygraphy's JSON stores NumPy arrays, which have no bfloat16: save from a float32 or float16 run"
        )
    buf = io.BytesIO()
    np.save(buf, tensor.detach().cpu().numpy(), allow_pickle=False)
    return {"array": base64.b64encode(buf.getvalue()).decode(), _CLASS: "ndarray"}


def feeds_json(feeds: dict[str, torch.Tensor]) -> list:
    """polygraphy ``--load-inputs`` format: one iteration."""
    return [{name: _array(t) for name, t in feeds.items()}]


def outputs_json(outputs: dict[str, torch.Tensor], runner: str = RUNNER_NAME) -> dict:
    """polygraphy ``--load-outputs`` format (``RunResults``): one runner, one iteration."""
    iteration = {
        "outputs": {name: {"values": _array(t), _CLASS: "LazyArray"} for name, t in outputs.items()},
        "runtime": None,
        "runner_name": runner,
        _CLASS: "IterationResult",
    }
    return {"lst": [[runner, [iteration]]], _CLASS: "RunResults"}


def _write_atomic(path: Path, text: str) -> None:
    """Write next to ``path`` then rename: a failure never leaves a half-written file under the final name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; these are ordinary results
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _tolerance_args(tolerances: Tolerances, names: list[str]) -> list[str]:
    """polygraphy's ``--atol``/``--rtol`` lists: the default, then every output whose tolerance differs from it."""
    args = []
    for flag, table in (("--atol", tolerances.atol), ("--rtol", tolerances.rtol)):
        default = table[""]
        per_output = [f"{n}:{v:g}" for n in names if (v := tolerances.lookup(n)[flag == "--rtol"]) != default]
        args += [flag, f"{default:g}", *per_output]
    return args


def _profile_args(spec: StateSpec, graph: str, feeds: dict[str, torch.Tensor]) -> list[str]:
    """TensorRT needs an optimisation profile for dynamic inputs: pin min = opt = max to this step's shapes."""
    shapes = [
        f"{s.name}:{list(feeds[s.name].shape)}".replace(" ", "")
        for s in spec.inputs(graph)
        if any(isinstance(d, str) for d in s.shape)
    ]
    return [arg for flag in ("--trt-min-shapes", "--trt-opt-shapes", "--trt-max-shapes") for arg in (flag, *shapes)]


def save_polygraphy(
    directory: Path, captures: list[Capture], spec: StateSpec, tolerances: Tolerances, package: Path | None = None
) -> dict[str, dict]:
    """Write ``{graph}.inputs.json`` / ``{graph}.outputs.json`` per captured step, ``commands.json`` and README.md.

    Returns graph -> {"inputs", "outputs", "block", "pass", "onnxrt", "trt"}: the two polygraphy command lines as
    argument lists (the model path is ``package/graph.onnx``, or ``graph.onnx`` when no package is given).
    """
    if not captures:
        raise Arl2rtError("nothing captured to save for polygraphy: run parity with a capture block")
    directory.mkdir(parents=True, exist_ok=True)
    commands: dict[str, dict] = {}
    for cap in captures:
        inputs, outputs = directory / f"{cap.graph}.inputs.json", directory / f"{cap.graph}.outputs.json"
        _write_atomic(inputs, json.dumps(feeds_json(cap.feeds), indent=1))
        _write_atomic(outputs, json.dumps(outputs_json(cap.outputs), indent=1))
        model = str((package / f"{cap.graph}.onnx") if package is not None else Path(f"{cap.graph}.onnx"))
        common = [model, "--load-inputs", str(inputs), "--load-outputs", str(outputs)]
        common += _tolerance_args(tolerances, list(cap.outputs))
        commands[cap.graph] = {
            "inputs": str(inputs),
            "outputs": str(outputs),
            "block": cap.block,
            "pass": cap.pass_index,
            "onnxrt": ["polygraphy", "run", *common, "--onnxrt"],
            "trt": ["polygraphy", "run", *common, "--trt", *_profile_args(spec, cap.graph, cap.feeds)],
        }
    _write_atomic(directory / COMMANDS_FILE, json.dumps(commands, indent=2))
    _write_atomic(directory / "README.md", _readme(commands, spec))
    return commands


def _readme(commands: dict[str, dict], spec: StateSpec) -> str:
    lines = [
        "# Polygraphy hand-off written by `arl2rt parity --save-polygraphy`",
        "",
        f"Model config `{spec.config.name}`, precision `{spec.dtype}`. Each step's feeds are the ones the stream",
        "gave that step (in the package's dtypes); the golden outputs are the float64 PyTorch reference run on exactly",
        "those feeds. Tolerances are the ones parity used (`--atol/--rtol`, polygraphy's element-wise rule).",
        "",
    ]
    for graph, c in commands.items():
        lines += [
            f"## {graph} (block {c['block']}, pass {c['pass']})",
            "",
            "onnxruntime:",
            "```bash",
            shlex.join(c["onnxrt"]),
            "```",
            "TensorRT (the profile pins this step's shapes; a `tensorrt`-target package needs the `arl2` plugin",
            "registered in the process that builds the engine; add `--strongly-typed` to keep the graph's precisions):",
            "```bash",
            shlex.join(c["trt"]),
            "```",
            "",
        ]
    return "\n".join(lines)
