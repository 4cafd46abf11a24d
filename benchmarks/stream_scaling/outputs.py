"""The files a run writes (markdown, CSV, JSON, PNG), each rewritten whole after every measurement."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from pathlib import Path

from arl2rt.errors import Arl2rtError
from benchmarks.stream_scaling.plan import LABELS, MIXES, log
from benchmarks.stream_scaling.report import enriched_rows, render_markdown

CSV_FIELDS = [
    "config",
    "hybrid_layers",
    "latent_frames",
    "video_frames",
    "block_ms",
    "block_q20_ms",
    "block_q80_ms",
    "eager_ms",
    "fps",
    "peak_gib",
    "accounted_gib",
    "kv_cache_gib",
    "floor_ms",
    "floor_ratio",
    "intra_ms",
    "cross_ms",
    "text_ms",
    "gemm_ms",
    "read_ms",
    "write_ms",
    "rest_ms",
    "mode",
]


def write_csv(rows: list[dict], path: Path) -> str:
    w = io.StringIO()
    writer = csv.DictWriter(w, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return w.getvalue()


def plot(rows: list[dict], path: Path) -> str | None:
    """Time per block and peak (or resident) memory versus latent frames, one line per configuration; or why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no plot: {exc}"
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mix in MIXES:
        mine = sorted((r for r in rows if r["config"] == mix), key=lambda r: r["latent_frames"])
        if not mine:
            continue
        n = [r["latent_frames"] for r in mine]
        ax_t.plot(n, [r["block_ms"] for r in mine], marker="o", label=LABELS[mix])
        mem = [r["peak_gib"] if r.get("peak_gib") not in (None, "") else r["accounted_gib"] for r in mine]
        ax_m.plot(n, mem, marker="o", label=LABELS[mix])
    ax_t.set(xlabel="latent frames N", ylabel="time per block (ms, CUDA graph)", title="time per 12-frame block")
    ax_m.set(xlabel="latent frames N", ylabel="peak GPU memory (GiB)", title="peak memory (DiT)")
    for ax in (ax_t, ax_m):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    _atomic_write(path, buf.getvalue())
    return None


def _atomic_write(path: Path, data: str | bytes) -> None:
    """Write beside ``path``, then rename: a reader never sees half a file, a failure leaves the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, mode) as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Outputs:
    """The markdown at ``--out`` and its .csv, .json and .png siblings, rewritten after every measurement."""

    def __init__(self, md: Path) -> None:
        self.md = md
        self.csv, self.json, self.png = (md.with_suffix(s) for s in (".csv", ".json", ".png"))

    def write(self, result: dict, final: bool = False) -> None:
        _atomic_write(self.json, json.dumps(result, indent=1, default=str))
        rows = enriched_rows(result)
        _atomic_write(self.csv, write_csv(rows, self.csv))
        if final and rows:
            why = plot(rows, self.png)
            if why:
                result["plot"] = why
        _atomic_write(self.md, render_markdown(result))


def plot_from_csv(csv_path: Path, png: Path) -> None:
    try:
        with open(csv_path, newline="") as fh:
            raw = list(csv.DictReader(fh))
    except OSError as exc:
        raise Arl2rtError(f"{csv_path}: cannot read ({exc})") from None
    need = {"config", "latent_frames", "block_ms", "accounted_gib"}
    if not raw or not need <= set(raw[0]):
        raise Arl2rtError(f"{csv_path}: expected CSV columns {sorted(need)}, found {sorted(raw[0]) if raw else 'none'}")
    rows = []
    for r in raw:
        rows.append(
            {
                "config": r["config"],
                "latent_frames": int(r["latent_frames"]),
                "block_ms": float(r["block_ms"]),
                "peak_gib": float(r["peak_gib"]) if r.get("peak_gib") else None,
                "accounted_gib": float(r["accounted_gib"]),
            }
        )
    why = plot(rows, png)
    if why:
        raise Arl2rtError(f"{png}: {why} (pip install matplotlib)")
    log(f"wrote {png}")
