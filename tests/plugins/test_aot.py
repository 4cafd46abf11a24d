"""The TensorRT plugin's AOT artefacts and launch arithmetic, checked without TensorRT and without a GPU.

Triton compiles PTX for sm_90 on a CPU-only machine, so the PTX entry (declared + Triton's scratch parameters, then
stripped), the shared-memory check and the argument order are checked here exactly as ``aot_impl`` produces them; the
stripped PTX is assembled with the ptxas Triton ships. The launch arithmetic is pinned to the kernel planner, and the
stage chain (prep → scan → combine) runs under Triton's CPU interpreter against the float64 reference.
The H200 run of the same code is tools/check_trt_plugin_aot.py (benchmarks/results/trt_plugin_aot.md).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton", reason="the GDN kernels need triton")

from arl2rt.errors import Arl2rtError  # noqa: E402
from arl2rt.plugins.common import is_interpreted  # noqa: E402
from arl2rt.plugins.gdn import aot_compile, aot_ptx, aot_stages, chunk_kernels, chunk_plan, trt_impl  # noqa: E402
from arl2rt.plugins.gdn.constants import CHUNK_SIZE  # noqa: E402
from arl2rt.plugins.gdn.naive import naive_chunk_gated_delta_rule_state  # noqa: E402

if not torch.cuda.is_available() and not is_interpreted(chunk_kernels._prep_kernel):
    # another module imported the kernels before the interpreter was switched on
    importlib.reload(chunk_kernels)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


# Compilation runs in a fresh process: under TRITON_INTERPRET=1 (set above on CPU-only machines, and by the kernel
# tests) Triton's own library functions are interpreted and cannot be compiled.
_COMPILE_SCRIPT = """
import json, sys
import torch, triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from arl2rt.errors import Arl2rtError
from arl2rt.plugins.common import KernelLaunch, KernelRef
from arl2rt.plugins.gdn import aot_compile, aot_stages

SM90 = GPUTarget("cuda", 90, 32)


@triton.jit
def scale_kernel(x, n, y, BLOCK: tl.constexpr, FACTOR: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y + offs, tl.load(x + offs, mask=mask) * FACTOR, mask=mask)


def scale_stage(n_type):
    sig = {"x": "*fp32", "n": n_type, "y": "*fp32", "BLOCK": "constexpr", "FACTOR": "constexpr"}
    # the float constant is baked in: AOT extra arguments are ints only
    kernel = KernelRef("__main__", "scale_kernel")
    launch = KernelLaunch(kernel, (4, 1, 1), 4, 1, ("x", "n", "y"), sig, {"BLOCK": 128, "FACTOR": 2.5})
    return aot_stages.AotStage("scale", launch, ("x",), ("n",), ("y",), (), {"x": "x", "y": "y"}, 1, None, None, ())


def error(fn):
    try:
        fn()
    except Arl2rtError as exc:
        return str(exc)
    return None


k = aot_compile.compile_aot(scale_stage("i32"), target=SM90)
out = {"scale": {"ptx": k.ptx, "name": k.name, "params": k.params, "removed": k.removed_params,
                 "block": list(k.block), "header": k.header}}
out["float_error"] = error(lambda: aot_compile.compile_aot(scale_stage("fp32"), target=SM90))
prep = aot_stages.gdn_stages(2, 16, 16, torch.float16, seq_len=64)[0]
shared = aot_compile.compile_aot(prep, target=SM90).shared
out["prep"] = {
    "shared": shared,
    "limit_error": error(lambda: aot_compile.compile_aot(prep, target=SM90, shared_limit=shared - 1)),
    "opt_in_shared": aot_compile.compile_aot(prep, target=SM90, shared_limit=shared - 1, allow_opt_in=True).shared,
}
combine = aot_stages.gdn_stages(2, 32, 32, torch.float16, seq_len=128)[-1]
wide = aot_compile.compile_aot(combine, target=SM90)
narrow = aot_compile.compile_stage(combine, target=SM90, shared_limit=wide.shared - 1)
out["combine"] = {
    "plugin": combine.plugin,
    "wide": [combine.launch.constexprs["BV"], list(combine.launch.grid), wide.shared],
    "narrow": [narrow.stage.launch.constexprs["BV"], list(narrow.stage.launch.grid), narrow.shared],
    "segments": [combine.segments, narrow.stage.segments],
    "none_fits": error(lambda: aot_compile.compile_stage(combine, target=SM90, shared_limit=1)),
}
# every stage at Wan2.1-1.3B's shape, as aot_impl compiles it (no opt-in): fp32 once needed 64 KB in the prep
wan = {dt: aot_stages.gdn_stages(12, 128, 128, dt, seq_len=4680) for dt in (torch.float32, torch.bfloat16)}
out["wan"] = {str(dt): [aot_compile.compile_stage(st, target=SM90).shared for st in sts] for dt, sts in wan.items()}
try:  # the ptxas Triton itself uses for sm_90 (it accepts the PTX version Triton emits)
    from triton.backends.nvidia.compiler import get_ptxas

    out["ptxas"] = get_ptxas(90).path
except Exception:
    from pathlib import Path

    out["ptxas"] = str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas")
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    script = tmp_path_factory.mktemp("aot") / "compile_aot.py"
    script.write_text(_COMPILE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(aot_stages.__file__).parents[3]), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_entry_has_exactly_inputs_ints_outputs_after_scratch_removal(compiled, tmp_path):
    k = compiled["scale"]
    assert k["params"] == 3  # x, n, y: TensorRT's inputs -> extra ints -> outputs
    assert k["removed"] in (0, aot_ptx.TRITON_SCRATCH_PARAMS)
    params = aot_ptx.ptx_entry_params(k["ptx"], k["name"])
    assert [p.split()[-1] for p in params] == [f"{k['name']}_param_{i}" for i in range(3)]
    assert ".u64" in params[0] and ".u32" in params[1] and ".u64" in params[2]
    assert k["block"] == [128, 1, 1] and k["header"]["target"].startswith("sm_90")
    # the stripped PTX is valid: Triton's own ptxas for sm_90 assembles it
    (tmp_path / "k.ptx").write_text(k["ptx"])
    cmd = [compiled["ptxas"], "-arch=sm_90a", str(tmp_path / "k.ptx"), "-o", str(tmp_path / "k.cubin")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_strip_refuses_a_parameter_the_body_reads():
    ptx = (
        ".visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u64 k_param_1\n)\n"
        "{\n\tld.param.b64 %rd1, [k_param_1];\n}\n"
    )
    with pytest.raises(Arl2rtError, match="parameter 1"):
        aot_ptx.strip_trailing_params(ptx, "k", 1)
    stripped = aot_ptx.strip_trailing_params(ptx.replace("[k_param_1]", "[k_param_0]"), "k", 1)
    assert aot_ptx.ptx_entry_params(stripped, "k") == [".param .u64 k_param_0"]


def test_float_runtime_scalar_is_refused(compiled):
    assert "float runtime arguments ['n']" in compiled["float_error"]


def test_shared_memory_above_the_limit_is_refused_without_opt_in(compiled):
    prep = compiled["prep"]
    assert 0 < prep["shared"] <= aot_compile.AOT_SHARED_LIMIT
    assert "shared memory" in prep["limit_error"] and str(prep["shared"]) in prep["limit_error"]
    assert prep["opt_in_shared"] == prep["shared"]


def test_every_stage_at_wan_shape_fits_a_plain_launch(compiled):
    for dtype, shared in compiled["wan"].items():
        assert len(shared) == 3 and all(0 < s <= aot_compile.AOT_SHARED_LIMIT for s in shared), (dtype, shared)


def test_a_stage_over_the_limit_shrinks_its_tile_not_its_tensors(compiled):
    c = compiled["combine"]
    assert c["plugin"] == "gdn_combine" and c["wide"][0] == 32 and c["narrow"][0] == 16
    assert c["narrow"][2] < c["wide"][2]  # fits the lowered limit
    assert c["narrow"][1] == [2, 2, 1] and c["wide"][1] == [1, 2, 1]  # only the grid follows the tile
    assert c["segments"][0] == c["segments"][1] == 2  # the segment buffer between scan and combine keeps its shape
    assert "every tile tried" in c["none_fits"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("seq_len", [None, 64, 100, 4680], ids=["T-dynamic", "T64", "T100", "T4680"])
def test_stages_keep_tensorrt_argument_order(dtype, seq_len):
    stages = aot_stages.gdn_stages(12, 128, 128, dtype, seq_len=seq_len)
    assert [s.plugin for s in stages][:2] == ["gdn_prep", "gdn_scan"]
    for s in stages:
        kinds = ["ptr" if s.launch.signature[a].startswith("*") else s.launch.signature[a] for a in s.kernel_args]
        n_in, n_int = len(s.inputs), len(s.ints)
        assert kinds == ["ptr"] * n_in + ["i32"] * n_int + ["ptr"] * len(s.outputs)
        assert all(s.launch.signature[a] == "constexpr" for a in s.launch.constexprs)
    if seq_len is None:
        assert len(stages) == 2 and stages[1].tensors["dst"] == "out"  # one segment: the scan writes the state


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize(("seq_len", "heads", "dim"), [(64, 12, 128), (100, 2, 16), (4680, 12, 128), (1560, 4, 64)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_launch_arithmetic_equals_the_planner(batch, seq_len, heads, dim, dtype):
    """Grid and extra ints of every stage at any batch == what the kernel planner and launcher use for that batch."""
    stages = aot_stages.gdn_stages(heads, dim, dim, dtype, seq_len=seq_len)
    nseg = stages[1].segments
    plan = chunk_plan.plan_chunk(
        batch, seq_len, heads, dim, dim, dtype, config=aot_stages.aot_chunk_config(segments=nseg)
    )
    sizes = {
        "T": seq_len,
        "H": heads,
        "NT": -(-seq_len // CHUNK_SIZE),
        "CPS": plan.chunks_per_segment,
        "NSEG": plan.segments,
    }
    assert [s.launch.name for s in stages] == [launch.name for launch in plan.launches]
    shapes = aot_stages.stage_tensor_shapes(batch, seq_len, heads, dim, dim, nseg)
    for stage, launch in zip(stages, plan.launches):
        grid, ints = aot_stages.stage_launch(stage, batch, seq_len)
        assert grid == launch.grid and ints == {a: sizes[a] for a in stage.ints}
        assert launch.constexprs == stage.launch.constexprs and launch.num_warps == stage.launch.num_warps
    for name, (_, dt, numel) in plan.buffers.items():  # the intermediates TensorRT allocates hold the workspace
        assert torch.Size(shapes[name]).numel() == numel
        assert dt == aot_stages.stage_dtype(next(s for s in stages if name in s.tensors.values()), _arg(stages, name))


def _arg(stages, tensor: str) -> str:
    return next(a for s in stages for a, t in s.tensors.items() if t == tensor)


def test_combine_stage_alone_matches_the_chain():
    stages = aot_stages.gdn_stages(12, 128, 128, torch.bfloat16, seq_len=4680)
    combine = aot_stages.combine_stage(12, stages[1].segments, 128, 128, torch.bfloat16)
    assert stages[-1].plugin == "gdn_combine" and combine.launch == stages[-1].launch


def _gdn_inputs(b, t, h, d, seed):
    gen = torch.Generator().manual_seed(seed)
    k = torch.nn.functional.normalize(torch.randn(b, t, h, d, generator=gen), dim=-1)
    v = torch.randn(b, t, h, d, generator=gen)
    g = torch.nn.functional.logsigmoid(torch.randn(b, t, h, generator=gen) + 2.0) * 0.5
    beta = 2 * torch.rand(b, t, h, generator=gen)
    s0 = torch.randn(b, h, d, d, generator=gen)
    return {n: x.to(DEVICE) for n, x in {"k": k, "v": v, "g": g, "beta": beta, "s0": s0}.items()}


@pytest.mark.parametrize(
    ("batch", "seq_len", "plan_len"), [(2, 100, 100), (1, 130, None)], ids=["segments", "dynamic-T"]
)
def test_stage_chain_equals_float64_reference(batch, seq_len, plan_len):
    """prep → scan (→ combine) through the stage launches, intermediates NaN-poisoned, fp32, vs float64."""
    heads, dim = 2, 16
    x = _gdn_inputs(batch, seq_len, heads, dim, seed=seq_len)
    stages = aot_stages.gdn_stages(heads, dim, dim, torch.float32, seq_len=plan_len)
    assert (len(stages) == 3) == (plan_len is not None)  # two chunks and a batch-1 plan: two segments
    shapes = aot_stages.stage_tensor_shapes(batch, seq_len, heads, dim, dim, stages[1].segments)
    tensors = dict(x)
    for s in stages:
        for a in s.outputs:
            nan = torch.full(shapes[s.tensors[a]], float("nan"), dtype=aot_stages.stage_dtype(s, a), device=DEVICE)
            tensors[s.tensors[a]] = nan
    for s in stages:
        trt_impl.run_stage_jit(s, tensors, batch, seq_len)
    ref = naive_chunk_gated_delta_rule_state(*(x[n].double() for n in ("k", "v", "g", "beta")), x["s0"].double())
    out = tensors["out"].double().cpu()
    assert not out.isnan().any()
    assert ((out - ref.cpu()).norm() / ref.norm()).item() < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the JIT impl body launches on a raw CUDA stream")
@pytest.mark.parametrize("tactic", sorted(trt_impl.JIT_TACTICS))
def test_jit_impl_body_on_an_external_stream(tactic):
    x = _gdn_inputs(1, 300, 4, 64, seed=tactic)
    out = torch.full_like(x["s0"], float("nan"))
    stream = torch.cuda.Stream()
    ptrs = {"key": x["k"], "value": x["v"], "decay": x["g"], "beta": x["beta"], "past_state": x["s0"]}
    ptrs = {n: t.data_ptr() for n, t in ptrs.items()} | {"present_state": out.data_ptr()}
    trt_impl.enqueue_state_update(ptrs, 1, 300, 4, 64, 64, torch.float32, stream.cuda_stream, tactic)
    stream.synchronize()
    ref = naive_chunk_gated_delta_rule_state(*(x[n].double() for n in ("k", "v", "g", "beta")), x["s0"].double())
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-4
