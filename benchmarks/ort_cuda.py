"""An exported package on onnxruntime's CUDA EP: where its nodes run, parity on the GPU, and speed per block against
the torch backend in the same process.

Parts (each writes its JSON under ``--out``; the last prints a markdown table):

* ``placement``: the tiny config exported for ``onnxruntime`` (standard ``LinearAttention``, opset 27) and
  ``onnxruntime-contrib`` (``com.microsoft::LinearAttention``); every graph loaded on the CUDA EP (CPU EP as
  fallback) with onnxruntime's assignment record: nodes per provider and copy nodes, and whether a session that
  forbids CPU fallback can be made at all.
* ``parity``: ``arl2rt parity --backend onnxruntime --device cuda`` on the fp32 package of each form that placed
  wholly on the GPU (16 blocks), and bf16 drift over 64 blocks.
* ``speed``: Wan2.1-1.3B widths at reduced depth (``--layers``; the full 30-layer export does not fit a device
  call), bf16, rolling window 21, all-hybrid and ARL2-75 % (layer ``--layers - 1`` softmax, the rest hybrid):
  ``arl2rt generate``'s per-block time on the onnxruntime backend (CUDA EP, eager) against the torch backend with
  its CUDA graphs and eagerly, median of the last ``--steady`` blocks; then one onnxruntime profile of a few blocks:
  node types by total time.

Run on the GPU machine with onnxruntime-gpu on the path: ``PYTHONPATH=src python -m benchmarks.ort_cuda --out DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import replace
from pathlib import Path
from unittest import mock

import torch
from safetensors.torch import save_file

from arl2rt.errors import Arl2rtError
from arl2rt.export.package import ModelPackage, export_package
from arl2rt.model.config import PRESETS
from arl2rt.model.random import random_context, random_model
from arl2rt.runtime.generate import GenerateOptions, run_generate
from arl2rt.runtime.onnxruntime_backend import CPU_EP, CUDA_EP, OnnxRuntimeBackend
from arl2rt.runtime.ort_placement import off_device, placement, record_assignment, summary
from arl2rt.runtime.streamer import Streamer
from benchmarks._harness import environment

FORMS = ("onnxruntime", "onnxruntime-contrib")


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def export(cfg, root: Path, target: str, dtype: str) -> ModelPackage:
    out = root / f"{cfg.name.replace(':', '_')}-{target}-{dtype}"
    if (out / "manifest.json").is_file():
        return ModelPackage.load(out)
    t0 = time.perf_counter()
    package = export_package(random_model(cfg, 0), out, target=target, dtype=dtype)
    log(f"exported {out.name} in {time.perf_counter() - t0:.1f} s")
    return package


def graph_placement(package: ModelPackage) -> dict:
    import onnxruntime as ort

    rows = {}
    for graph in package.spec.graphs:
        path = str(package.graph_path(graph))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        record_assignment(options)
        session = ort.InferenceSession(path, options, providers=[CUDA_EP, CPU_EP])
        found = placement(session)
        row = {
            "assignment": summary(found) if found else None,
            "off_device": off_device(found, CUDA_EP) if found else None,
        }
        strict = ort.SessionOptions()
        strict.log_severity_level = 3
        record_assignment(strict)
        strict.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        try:
            forced = placement(ort.InferenceSession(path, strict, providers=[CUDA_EP]))
            row["no_cpu_fallback"] = "; ".join(off_device(forced, CUDA_EP)) or "every node on the CUDA EP, no copies"
        except Exception as exc:  # onnxruntime's own error types; the message is the finding
            row["no_cpu_fallback"] = str(exc).strip().splitlines()[0][:300]
        rows[graph] = row
    return rows


def parity(package: ModelPackage, blocks: int) -> dict:
    cmd = [sys.executable, "-m", "arl2rt", "parity", "--backend", "onnxruntime", "--device", "cuda"]
    cmd += ["--package", str(package.root), "--blocks", str(blocks), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        report = None
    if report is None and done.returncode == 0:  # no report is no parity, whatever the exit status says
        return {"rc": done.returncode, "report": None, "error": "parity printed no JSON report", "stdout": done.stdout}
    return {"rc": done.returncode, "report": report, "stderr": done.stderr[-2000:]}


def block_times(opts: GenerateOptions, graphs: bool | None) -> dict:
    """Per-block seconds of one generate run; ``graphs`` turns the backend's CUDA graphs on or off (torch:
    ARL2RT_GRAPHS, onnxruntime: ARL2RT_ORT_GRAPHS), None leaves the default."""
    variable = "ARL2RT_ORT_GRAPHS" if opts.backend == "onnxruntime" else "ARL2RT_GRAPHS"
    if graphs is not None:
        os.environ[variable] = "1" if graphs else "0"
    marks: list[float] = []
    torch.cuda.reset_peak_memory_stats()
    try:
        result = run_generate(opts, progress=lambda p: marks.append(p.seconds))
    finally:
        os.environ.pop(variable, None)
    return {
        "per_block_s": [b - a for a, b in zip([0.0, *marks], marks)],
        "peak_cuda_bytes": result.peak_cuda_bytes,
    }


@contextlib.contextmanager
def cpu_fallback():
    """The onnxruntime backend with the CPU EP beside the CUDA EP and without its all-on-device check."""
    from arl2rt.runtime import onnxruntime_backend as ob

    providers = ob.OnnxRuntimeBackend._default_providers
    with (
        mock.patch.object(ob, "_check_on_device", lambda *a: None),
        mock.patch.object(ob.OnnxRuntimeBackend, "_default_providers", lambda self: [*providers(self), CPU_EP]),
    ):
        yield


def ort_profile(package: ModelPackage, context: torch.Tensor, blocks: int, tmp: Path) -> dict:
    """Node types by total time over ``blocks`` blocks, from onnxruntime's own profiler."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp / "ort_profile")
    backend = OnnxRuntimeBackend(package, "cuda", session_options=options).activate()
    try:
        Streamer(backend, seed=0).generate(context.to("cuda", backend.spec.context().torch_dtype), blocks)
        files = [s.end_profiling() for s in backend.sessions.values()]
    finally:
        backend.deactivate()
    by_type: Counter[str] = Counter()
    providers: Counter[str] = Counter()
    for name in files:
        for event in json.loads(Path(name).read_text()):
            args = event.get("args", {})
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                by_type[args.get("op_name", "?")] += event["dur"]
                providers[args.get("provider", "?")] += event["dur"]
    total = sum(by_type.values()) or 1
    return {
        "blocks": blocks,
        "top_ms_per_block": {op: us / 1e3 / blocks for op, us in by_type.most_common(12)},
        "share": {op: us / total for op, us in by_type.most_common(12)},
        "provider_ms_per_block": {p: us / 1e3 / blocks for p, us in providers.items()},
    }


def speed(args, root: Path) -> list[dict]:
    wan = PRESETS["wan2.1-t2v-1.3b"]
    base = replace(wan, num_layers=args.layers, hybrid_layers=(), attn_window_frames=21, sink_frames=0)
    mixes = {
        "all-hybrid": tuple(range(args.layers)),
        "arl2-75": tuple(range(args.layers - 1)),
    }
    rows = []
    for mix in args.mixes.split(","):
        cfg = replace(base, name=f"wan2.1-{args.layers}L:{mix}", hybrid_layers=mixes[mix])
        row: dict = {"mix": mix, "layers": args.layers}
        try:
            package = export(cfg, root, args.speed_target, args.dtype)
        except Arl2rtError as exc:
            rows.append({**row, "error": str(exc)})
            continue
        row["placement"] = {g: r["off_device"] for g, r in graph_placement(package).items()}
        context_path = root / "context.safetensors"
        context = random_context(cfg, seed=0)
        save_file({"context": context.float().contiguous()}, str(context_path))
        config_path = root / f"{mix}.json"
        config_path.write_text(json.dumps(cfg.to_dict()))
        common = {"blocks": args.blocks, "device": "cuda", "overwrite": True}
        ort_opts = GenerateOptions(
            output=root / "ort.npz", model=package.root, backend="onnxruntime", context=context_path, **common
        )
        torch_opts = GenerateOptions(
            output=root / "torch.npz",
            config=str(config_path),
            backend="torch",
            dtype=args.dtype,
            context=context_path,
            **common,
        )
        for label, opts, graphs in (
            ("onnxruntime_eager", ort_opts, False),
            ("onnxruntime_graphs", ort_opts, True),
            ("torch_graphs", torch_opts, True),
            ("torch_eager", torch_opts, False),
        ):
            log(f"{mix}: {label}")
            try:
                row[label] = block_times(opts, graphs)
            except Exception as exc:  # noqa: BLE001 - one form failing must not lose the others' numbers
                row[label] = {"error": f"{type(exc).__name__}: {str(exc)[:600]}"}
        if "error" in row["onnxruntime_eager"]:
            # what the CUDA EP costs with the nodes it will not take left on a CPU EP (the product refuses that)
            log(f"{mix}: onnxruntime_eager with CPU fallback")
            with cpu_fallback():
                try:
                    row["onnxruntime_eager_cpu_fallback"] = block_times(ort_opts, None)
                except Arl2rtError as exc:
                    row["onnxruntime_eager_cpu_fallback"] = {"error": str(exc)}
        log(f"{mix}: onnxruntime profile")
        fallback = cpu_fallback() if "error" in row["onnxruntime_eager"] else contextlib.nullcontext()
        try:
            with fallback:
                row["ort_profile"] = ort_profile(package, context, 3, root)
        except Arl2rtError as exc:
            row["ort_profile"] = {"error": str(exc)}
        rows.append(row)
    return rows


def _median_ms(entry: dict, steady: int) -> float | None:
    times = entry.get("per_block_s") if isinstance(entry, dict) else None
    return statistics.median(times[-steady:]) * 1e3 if times else None


def table(result: dict, steady: int) -> str:
    env = result["environment"]
    lines = [f"device {env.get('device')}; onnxruntime {result.get('onnxruntime')}; torch {env.get('torch')}", ""]
    for form, graphs in result.get("placement", {}).items():
        for graph, row in graphs.items():
            where = "; ".join(row["off_device"]) if row["off_device"] else "all on CUDA EP, no copies"
            lines.append(f"placement {form} {graph}: {where} | no-CPU-fallback session: {row['no_cpu_fallback']}")
    for name, entry in result.get("parity", {}).items():
        report = entry.get("report")
        if report is None:
            lines.append(f"parity {name}: NOT RUN ({entry.get('error') or 'rc ' + str(entry['rc'])})")
            continue
        drift = report["summary"]["drift"]
        lines.append(
            f"parity {name}: passed {report['passed']}, drift peak-rel {drift['peak_rel']:.2e}, "
            f"min cosine {drift['min_cosine']:.6f} ({report['candidate']})"
        )
    lines += [
        "",
        "| mix | onnxruntime CUDA eager ms | onnxruntime CUDA graphs ms | torch graphs ms | torch eager ms "
        "| ort graphs / torch graphs | ort eager / torch graphs |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result.get("speed", []):
        ort_ms, ort_graph_ms, graph_ms, eager_ms = (_median_ms(row.get(k, {}), steady) for k in FORMS_SPEED)
        ratios = [f"{a / graph_ms:.2f}" if a and graph_ms else "-" for a in (ort_graph_ms, ort_ms)]
        cells = [f"{v:.1f}" if v else "-" for v in (ort_ms, ort_graph_ms, graph_ms, eager_ms)]
        lines.append(f"| {row['mix']} ({row['layers']} layers) | {' | '.join(cells)} | {' | '.join(ratios)} |")
        for k in FORMS_SPEED:
            if isinstance(row.get(k), dict) and "error" in row[k]:
                lines.append(f"  {row['mix']} {k}: {row[k]['error'][:300]}")
    return "\n".join(lines)


FORMS_SPEED = ("onnxruntime_eager", "onnxruntime_graphs", "torch_graphs", "torch_eager")


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--parts", default="placement,parity,speed")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--mixes", default="all-hybrid,arl2-75")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--speed-target", default="onnxruntime-contrib")
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--parity-forms", default="onnxruntime-contrib", help="packages parity runs (placement: both)")
    ap.add_argument("--steady", type=int, default=4)
    ap.add_argument("--work", type=Path, default=None, help="where packages go (default: a temporary folder)")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"environment": environment(torch.device("cuda")), "onnxruntime": ort.__version__}
    result["providers"] = ort.get_available_providers()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        tiny = PRESETS["tiny"]
        try:
            _parts(args, parts, root, tiny, result)
        except Exception:  # a benchmark keeps what it measured before a failure, and says where it failed
            result["failure"] = traceback.format_exc()
            log(result["failure"])
        _save(args.out, result)
    print(table(result, args.steady))
    return 0


def _parts(args, parts: set[str], root: Path, tiny, result: dict) -> None:
    if "placement" in parts or "parity" in parts:
        packages = {form: export(tiny, root, form, "float32") for form in FORMS}
        result["placement"] = {form: graph_placement(p) for form, p in packages.items()}
        _save(args.out, result)
    if "parity" in parts:
        result["parity"] = {}
        for form, package in packages.items():
            if form not in args.parity_forms.split(","):
                continue
            if any(not r["no_cpu_fallback"].startswith("every node") for r in result["placement"][form].values()):
                continue
            log(f"parity {form} float32")
            result["parity"][f"{form} float32 16 blocks"] = parity(package, 16)
            log(f"parity {form} bfloat16")
            result["parity"][f"{form} bfloat16 64 blocks"] = parity(export(tiny, root, form, "bfloat16"), 64)
            _save(args.out, result)
    if "speed" in parts:
        result["speed"] = speed(args, root)
        _save(args.out, result)


def _save(out: Path, result: dict) -> None:
    (out / "ort_cuda.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
