"""Check the TensorRT plugin's kernels the way TensorRT runs them, on a GPU without TensorRT.

For each input dtype (bf16, fp32) at ARL2's shape (B=1, T=4680, H=12, K=V=128), on fresh random inputs:

* **AOT** (what ``aot_impl`` returns, what the engine embeds): every stage kernel is compiled by
  :func:`arl2rt.plugins.gdn.aot_compile.compile_aot` exactly as ``aot_impl`` calls it; the PTX entry must have exactly
  inputs + extra ints + outputs parameters after Triton's scratch pointers are removed; the PTX is loaded through the
  driver (cupy) and launched with TensorRT's argument order and the grid / block / shared memory of
  :func:`stage_launch`, on a non-default stream, intermediates NaN-poisoned. A kernel above 48 KB of shared memory is
  first launched plainly (as a launcher that does not opt in would) and then with the opt-in raised.
* **JIT** (the ``impl`` bodies): :func:`enqueue_state_update` (``arl2::gdn_state_update``, each tactic) and
  :func:`run_stage_jit` (``gdn_prep``/``gdn_scan``) from raw pointers on an external stream.

Each final state is compared with the float64 reference (relative RMS error, NaN fails). Prints a markdown table and
writes it (and JSON) under ``--out``. ``--dry`` compiles for sm_90 and checks the PTX only (no GPU needed).

Usage on the device tool, from the repository root: ``PYTHONPATH=src python -m tools.check_trt_plugin_aot --out $OUT``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.plugins.gdn import aot_compile, aot_ptx, aot_stages, chunk_kernels, chunk_plan
from arl2rt.plugins.gdn.aot_compile import AOT_SHARED_LIMIT, compile_aot, compile_stage
from arl2rt.plugins.gdn.aot_stages import gdn_stages, stage_dtype, stage_launch, stage_tensor_shapes
from arl2rt.plugins.gdn.naive import naive_chunk_gated_delta_rule_state
from arl2rt.plugins.gdn.trt_impl import JIT_TACTICS, enqueue_state_update, run_stage_jit
from benchmarks._harness import environment, max_abs_error, rel_rms, time_calls

B, T, H, K, V = 1, 4680, 12, 128, 128
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# relative RMS error of the final state against float64 (bf16 inputs run their fp32 products as tf32)
TOLERANCE = {"bf16": 1e-2, "fp32": 1e-4}


def inputs(dtype: torch.dtype, seed: int, device: str) -> dict[str, torch.Tensor]:
    """ARL2-range inputs: unit-norm keys correlated across tokens (one shared direction per head, as neighbouring
    video tokens have), log decay < 0, beta in (0, 2), a non-zero incoming state."""
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randn(B, 1, H, K, generator=gen)
    k = torch.nn.functional.normalize(shared + 0.7 * torch.randn(B, T, H, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, generator=gen) + 3.0) * 0.3
    beta = 2 * torch.rand(B, T, H, generator=gen)
    s0 = torch.randn(B, H, K, V, generator=gen)
    return {
        "k": k.to(dtype).to(device),
        "v": v.to(dtype).to(device),
        "g": g.to(device),
        "beta": beta.to(device),
        "s0": s0.to(device),
    }


class DriverKernel:
    """A compiled stage loaded through the driver and launched with TensorRT's argument order."""

    def __init__(self, kernel, workdir: Path) -> None:
        import cupy

        path = workdir / f"{kernel.name}.ptx"
        path.write_text(kernel.ptx)
        self.kernel, self.cupy = kernel, cupy
        self.fn = cupy.RawModule(path=str(path)).get_function(kernel.name)

    def launch(self, tensors: dict[str, torch.Tensor], stream: torch.cuda.Stream) -> None:
        stage = self.kernel.stage
        grid, ints = stage_launch(stage, B, T)
        args = [np.uint64(tensors[stage.tensors[a]].data_ptr()) for a in stage.inputs]
        args += [np.int32(ints[a]) for a in stage.ints]
        args += [np.uint64(tensors[stage.tensors[a]].data_ptr()) for a in stage.outputs]
        with self.cupy.cuda.ExternalStream(stream.cuda_stream):
            self.fn(grid, self.kernel.block, tuple(args), shared_mem=self.kernel.shared)

    def opt_in(self) -> None:
        self.fn.max_dynamic_shared_size_bytes = self.kernel.shared


def poisoned(shape, dtype) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device="cuda")


def check_dtype(name: str, rows: list[dict], workdir: Path, dry: bool) -> None:
    dtype = DTYPES[name]
    stages = gdn_stages(H, K, V, dtype, seq_len=T)
    target = None
    if dry:
        from triton.backends.compiler import GPUTarget

        target = GPUTarget("cuda", 90, 32)
    kernels = []
    for s in stages:
        try:  # exactly what aot_impl does: shrink the tile until the plain-launch limit is met
            kernels.append(compile_stage(s, target=target))
        except Arl2rtError:  # no tile fits: keep the opt-in kernel, to record what it takes
            kernels.append(compile_aot(s, target=target, allow_opt_in=True))
    stages = tuple(k.stage for k in kernels)
    artefacts = []
    for kern in kernels:
        grid, ints = stage_launch(kern.stage, B, T)
        rows.append(
            {
                "dtype": name,
                "path": f"AOT {kern.stage.plugin}",
                "kernel": kern.name,
                "params": f"{len(kern.stage.kernel_args)} declared, {kern.params + kern.removed_params} in PTX, "
                f"{kern.removed_params} scratch removed → {kern.params}",
                "params_ok": kern.params == len(kern.stage.kernel_args),
                "shared": kern.shared,
                "within_48k": kern.shared <= AOT_SHARED_LIMIT,
                "launch": f"grid {grid} block {kern.block} ints {ints}",
                "ptx": f"{kern.header['version']} {kern.header['target']}",
            }
        )
        artefacts.append(rows[-1])
    if dry:
        return
    x = inputs(dtype, seed=11 if name == "bf16" else 12, device="cuda")
    ref = naive_chunk_gated_delta_rule_state(*(x[n].double() for n in ("k", "v", "g", "beta")), x["s0"])
    stream = torch.cuda.Stream()
    shapes = stage_tensor_shapes(B, T, H, K, V, stages[0].segments)
    chain = "→".join(s.plugin for s in stages)

    def fresh_tensors() -> dict[str, torch.Tensor]:
        t = dict(x)
        for s in stages:
            for a in s.outputs:
                t[s.tensors[a]] = poisoned(shapes[s.tensors[a]], stage_dtype(s, a))
        return t

    def guarded(path: str, check) -> None:
        """One path; its failure (a CUDA error poisons the process, so the driver path runs last) becomes a row."""
        try:
            err, max_abs, ms = check()
        except Exception as exc:  # noqa: BLE001 - the failure is the finding
            rows.append(_result(name, f"{path}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}", *_NAN))
            return
        rows.append(_result(name, path, err, max_abs, ms))

    # JIT impl of the stages: the launches the AOT path embeds, through Triton's launcher, raw pointers, own stream
    def jit_stages():
        tensors = fresh_tensors()
        ptrs = {n: t.data_ptr() for n, t in tensors.items()}
        for s in stages:
            run_stage_jit(s, ptrs, B, T, stream.cuda_stream)
        stream.synchronize()
        return rel_rms(tensors["out"], ref), max_abs_error(tensors["out"], ref), None

    guarded(f"JIT {chain} (stage impls)", jit_stages)

    # JIT impl of arl2::gdn_state_update, each tactic, raw pointers on an external stream
    for tactic in JIT_TACTICS:

        def jit(tactic=tactic):
            out = poisoned((B, H, K, V), torch.float32)
            ptrs = {
                "key": x["k"].data_ptr(),
                "value": x["v"].data_ptr(),
                "decay": x["g"].data_ptr(),
                "beta": x["beta"].data_ptr(),
                "past_state": x["s0"].data_ptr(),
                "present_state": out.data_ptr(),
            }

            def once() -> None:
                enqueue_state_update(ptrs, B, T, H, K, V, dtype, stream.cuda_stream, tactic)

            once()
            stream.synchronize()
            err = rel_rms(out, ref), max_abs_error(out, ref)
            with torch.cuda.stream(stream):
                return (*err, median_ms(once))

        guarded(f"JIT gdn_state_update tactic {tactic}", jit)

    # AOT: the PTX through the driver, stage by stage (synchronised, so a fault names its stage)
    def aot():
        drivers = [DriverKernel(k, workdir) for k in kernels]
        tensors = fresh_tensors()
        for drv, row in zip(drivers, artefacts):
            if drv.kernel.shared > AOT_SHARED_LIMIT:
                try:
                    drv.launch(tensors, stream)
                    stream.synchronize()
                    row["plain_launch"] = "ran"
                except Exception as exc:  # noqa: BLE001 - the failure is the finding
                    row["plain_launch"] = f"fails: {type(exc).__name__}: {exc}".splitlines()[0][:80]
                drv.opt_in()
            try:
                drv.launch(tensors, stream)
                stream.synchronize()
            except Exception as exc:
                raise RuntimeError(f"stage {drv.kernel.stage.plugin}: {exc}") from exc
        err = rel_rms(tensors["out"], ref), max_abs_error(tensors["out"], ref)

        def all_stages() -> None:
            for drv in drivers:
                drv.launch(tensors, stream)

        with torch.cuda.stream(stream):
            return (*err, median_ms(all_stages))

    guarded(f"AOT {chain} (driver launch)", aot)


_NAN = (float("nan"), float("nan"), None)


def _result(dtype: str, path: str, err: float, max_abs: float, ms: float | None) -> dict:
    return {
        "dtype": dtype,
        "path": path,
        "rel_rms": err,
        "max_abs": max_abs,
        "passed": err == err and err <= TOLERANCE[dtype],
        "median_ms": ms,
    }


def median_ms(fn) -> float:
    """Median of 10 timed calls, in ms, on the current stream (``fn`` already ran once: compiled, warm)."""
    return 1e3 * statistics.median(time_calls(fn, 10, torch.device("cuda")))


def check_environment(dry: bool) -> dict:
    env = environment(None if dry else torch.device("cuda"))
    if dry:
        env["device"] = "none (--dry: PTX compiled for sm_90)"
    env["kernel sources sha256[:12]"] = {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:12]
        for f in (Path(m.__file__) for m in (chunk_kernels, chunk_plan, aot_stages, aot_compile, aot_ptx))
    }
    if not dry:
        import cupy

        env["cupy"] = cupy.__version__
        env["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        env["compute_capability"] = "{}.{}".format(*torch.cuda.get_device_capability())
    return env


def markdown(env: dict, rows: list[dict]) -> str:
    lines = [
        "# TensorRT plugin kernels, launched as TensorRT would (no TensorRT installed)",
        "",
        "Made by `tools/check_trt_plugin_aot.py`. " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".",
        f"Shape B={B}, T={T}, H={H}, K={K}, V={V}; fresh random inputs; final state vs float64 reference.",
        "",
        "## AOT artefacts (what `aot_impl` returns)",
        "",
        "| dtype | stage | kernel | PTX entry parameters | ok | shared B | ≤ 48 KB | plain launch | launch | PTX |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "params" in r:
            lines.append(
                f"| {r['dtype']} | {r['path']} | {r['kernel']} | {r['params']} | {'yes' if r['params_ok'] else 'NO'} "
                f"| {r['shared']} | {'yes' if r['within_48k'] else 'NO'} | {r.get('plain_launch', '')} "
                f"| {r['launch']} | {r['ptx']} |"
            )
    results = [r for r in rows if "rel_rms" in r]
    if results:
        lines += [
            "",
            "## Final state vs float64 (relative RMS; tolerance bf16 1e-2, fp32 1e-4)",
            "",
            "| dtype | path | rel RMS | max abs | pass | median ms |",
            "|---|---|---|---|---|---|",
        ]
        for r in results:
            ms = "" if r["median_ms"] is None else f"{r['median_ms']:.3f}"
            lines.append(
                f"| {r['dtype']} | {r['path']} | {r['rel_rms']:.2e} | {r['max_abs']:.2e} "
                f"| {'yes' if r['passed'] else 'NO'} | {ms} |"
            )
    lines += ["", "A full TensorRT engine with these plugins was not run: TensorRT is not installable here.", ""]
    return "\n".join(lines)


def run_isolated(name: str, tmp: Path) -> list[dict]:
    """Check one dtype in a fresh process: a CUDA fault poisons its process, not the other dtype's checks."""
    out = tmp / f"{name}.json"
    cmd = [sys.executable, "-m", "tools.check_trt_plugin_aot", "--only", name, "--rows", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if not out.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return [_result(name, f"process failed: {tail[0][:200]}", *_NAN)]
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="directory for trt_plugin_aot.md and .json")
    parser.add_argument("--dry", action="store_true", help="compile for sm_90 and check PTX only (no GPU)")
    parser.add_argument("--only", choices=list(DTYPES), help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.dry and not torch.cuda.is_available():
        print("no CUDA GPU: use --dry", file=sys.stderr)
        return 2
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [args.only] if args.only else list(DTYPES):
            if not args.dry and not args.only:
                rows += run_isolated(name, Path(tmp))
                continue
            try:
                check_dtype(name, rows, Path(tmp), args.dry)
            except Arl2rtError as exc:
                rows.append(_result(name, f"error: {exc}", *_NAN))
    if args.rows is not None:
        args.rows.write_text(json.dumps(rows))
        return 0
    env = check_environment(args.dry)
    text = markdown(env, rows)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "trt_plugin_aot.md").write_text(text)
        (args.out / "trt_plugin_aot.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    ok = all(r.get("params_ok", True) and r.get("passed", True) for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
