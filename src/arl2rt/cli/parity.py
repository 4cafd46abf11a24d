"""``arl2rt parity``: the same seeded stream on the float64 PyTorch reference and a candidate, compared step by step."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from arl2rt.cli._common import out, print_json, progress, user_errors
from arl2rt.errors import Arl2rtError
from arl2rt.model.config import load_config
from arl2rt.model.dit import CausalDiT
from arl2rt.model.random import random_context, random_model
from arl2rt.parity.check import check_parity
from arl2rt.parity.compare import parse_tolerances
from arl2rt.parity.result import MODES, ParityResult
from arl2rt.runtime.backends import BACKENDS, DEFAULT_BACKEND

app = typer.Typer()

_TABLE_WIDTH = 132
_DEFAULT_CONFIG = "tiny"
_RANDOM_SEED = 0  # of the reference's weights without --checkpoint (--seed is the noise's and the text's)
_BACKEND_HELP = f"Candidate backend: {' | '.join(BACKENDS)}."
_TARGET_HELP = "Export target when no --package (default: the backend's first): {}.".format(
    "; ".join(f"{name} runs {' | '.join(b.targets)}" for name, b in BACKENDS.items() if b.targets)
)
_DEVICE_HELP = "cpu, cuda or auto (onnxruntime: its CUDA EP); default: {}.".format(
    ", ".join(f"{name} {b.default_device}" for name, b in BACKENDS.items())
)


@app.command()
@user_errors
def parity(
    config: Annotated[
        str | None,
        typer.Option(
            help="Preset (tiny, wan2.1-t2v-1.3b) or JSON config; random weights (seed 0). Default: tiny, or with "
            "--checkpoint the config the checkpoint stores."
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Load weights from this checkpoint instead (any format arl2rt reads).")
    ] = None,
    backend: Annotated[str, typer.Option(help=_BACKEND_HELP)] = DEFAULT_BACKEND["package"],
    target: Annotated[str | None, typer.Option(help=_TARGET_HELP)] = None,
    dtype: Annotated[
        str | None, typer.Option(help="Candidate precision: float32 (default), float16, bfloat16; or the package's.")
    ] = None,
    package: Annotated[Path | None, typer.Option(help="Run this exported package instead of exporting.")] = None,
    blocks: Annotated[int, typer.Option(min=1, help="AR blocks to stream.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of the noise and the text context.")] = 0,
    mode: Annotated[
        str, typer.Option(help="drift (two free streams), step (candidate fed the reference's inputs) or both.")
    ] = "both",
    atol: Annotated[
        list[str] | None,
        typer.Option(help="Absolute tolerance: VALUE (default) or NAME:VALUE (a tensor or kind); repeatable."),
    ] = None,
    rtol: Annotated[list[str] | None, typer.Option(help="Relative tolerance, as --atol.")] = None,
    device: Annotated[str | None, typer.Option(help=_DEVICE_HELP)] = None,
    save_polygraphy: Annotated[
        Path | None, typer.Option(help="Write one block's feeds and golden outputs for `polygraphy run` here.")
    ] = None,
    polygraphy_block: Annotated[
        int | None, typer.Option(help="Block whose steps --save-polygraphy writes (default: the last).")
    ] = None,
    per_step: Annotated[bool, typer.Option("--per-step", help="Also print one row per step.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print every step's metrics as JSON.")] = False,
) -> None:
    """Compare a backend against the float64 PyTorch reference over a stream; exit 1 when a tolerance is exceeded."""
    modes = MODES if mode == "both" else (mode,)
    if set(modes) - set(MODES):
        raise Arl2rtError(f"--mode {mode!r}: expected drift, step or both")
    model, source = _model(config, checkpoint)
    with progress("parity") as update:
        report = check_parity(
            model,
            random_context(model.cfg, seed),
            backend=backend,
            target=target,
            dtype=dtype,
            package=package,
            blocks=blocks,
            seed=seed,
            modes=modes,
            atol=parse_tolerances(atol or [], "--atol"),
            rtol=parse_tolerances(rtol or [], "--rtol"),
            device=device,
            save_polygraphy=save_polygraphy,
            polygraphy_block=polygraphy_block,
            progress=update,
            source=source,
        )
    if json_:
        print_json(report.to_dict())
    else:
        _print(report.result, per_step)
        if report.polygraphy:
            out.print(f"polygraphy files in {save_polygraphy} (commands in its README.md and commands.json)")
    if not report.result.passed:
        raise typer.Exit(1)


def _model(config: str | None, checkpoint: Path | None) -> tuple[CausalDiT, str]:
    """The reference model and where its weights come from (an explicit --config wins over a checkpoint's own)."""
    if checkpoint is None:
        cfg = load_config(config or _DEFAULT_CONFIG)
        return random_model(cfg, _RANDOM_SEED), f"random weights of seed {_RANDOM_SEED} (config {cfg.name})"
    from arl2rt.model.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint, load_config(config) if config is not None else None)
    return model, f"checkpoint {checkpoint} (config {model.cfg.name})"


def _fmt(x: float | str) -> str:
    if isinstance(x, str):  # JSON-safe "inf"/"nan"
        return x
    return "nan" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.3g}")


def _print(result: ParityResult, per_step: bool) -> None:
    # rich fits tables to 80 columns when stdout is no terminal and would cut the numbers short
    tables = out if out.is_terminal else Console(width=_TABLE_WIDTH)
    for m in result.modes:
        table = Table(
            "block", "max abs", "max rel", "peak rel", "rel L2", "1 - min cosine", "min PSNR dB", "worst tensor", "ok",
            title=f"{m}: {result.candidate} vs {result.reference}",
        )  # fmt: skip
        for p in result.drift(m):
            table.add_row(
                str(p.block), _fmt(p.max_abs), _fmt(p.max_rel), _fmt(p.peak_rel), _fmt(p.rel_l2),
                _fmt(1 - p.min_cosine), _fmt(p.min_psnr), p.worst_tensor, "yes" if p.passed else "no",
            )  # fmt: skip
        tables.print(table)
    if per_step:
        table = Table("mode", "graph", "block", "pass", "worst tensor", "rel L2", "max abs", "ok", title="steps")
        for s in result.steps:
            name, worst = max(s.tensors.items(), key=lambda item: item[1].rel_l2)
            table.add_row(
                s.mode, s.graph, str(s.block), str(s.pass_index), name, _fmt(worst.rel_l2), _fmt(worst.max_abs),
                "yes" if s.passed else "no",
            )  # fmt: skip
        tables.print(table)
    failure = result.first_failure()
    if failure is None:
        out.print(f"PASSED: {len(result.steps)} steps within tolerance over {result.blocks} blocks")
    else:
        out.print(
            f"FAILED: first at {failure['mode']} {failure['graph']} block {failure['block']} pass "
            f"{failure['pass']}, tensor {failure['tensor']}: {failure['mismatches']} elements exceed atol "
            f"{failure['atol']:g} and rtol {failure['rtol']:g} (max abs {_fmt(failure['max_abs'])}, max rel "
            f"{_fmt(failure['max_rel'])}, finite {failure['finite']})"
        )
