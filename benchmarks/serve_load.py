"""Load on the Triton Python-backend model: N concurrent streams against one server on this machine's CPU.

For each served model (the embedded model on one and on two model instances, ``tiny`` with random weights on one)
and N in {1, 2, 4, 8}: N client threads each stream ``--blocks`` blocks through ``arl2rt.serve.client.stream_remote``
(one gRPC request per block, ``.npz`` output), all started together. Reported: blocks per second over all streams
(blocks made / wall time of the slowest stream), p50 and p99 of the per-block request latency seen by the clients
(with few samples p99 is close to the maximum), and the state one stream holds on the server after its last block
(``STATE_BYTES``: GDN states, K/V cache, text K/V). Each instance is warmed by one stream first (a first block costs
seconds of one-off set-up). Instances run one CPU thread each, as ``arl2rt generate`` runs these small models.

Run: ``PYTHONPATH=src python -m benchmarks.serve_load [--blocks 6] [--out benchmarks/results/serve_load.md]`` with
``$ARL2RT_TRITONSERVER`` set (docs/serving.md). The server is stopped at the end, whatever happened.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from arl2rt.serve.client import RemoteOptions, connect, stream_remote
from arl2rt.serve.repository import write_repository
from arl2rt.serve.served import plan_settings
from arl2rt.serve.server import TritonServer, find_install
from benchmarks._harness import environment

# served model -> (model source, instances, blocks per stream relative to --blocks)
MODELS = {
    "embedded": ({}, 1, 1),
    "embedded-x2": ({}, 2, 1),
    "tiny": ({"config": "tiny"}, 1, 4),
}
STREAMS = (1, 2, 4, 8)


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def run_streams(url: str, model: str, n: int, blocks: int, out: Path) -> dict:
    def one(i: int):
        opts = RemoteOptions(
            server=url, output=out / f"{model}-{n}-{i}.npz", model_name=model, blocks=blocks, seed=i, overwrite=True
        )
        return stream_remote(opts)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    latencies = [t for r in results for t in r.latencies]
    return {
        "model": model,
        "streams": n,
        "blocks_per_stream": blocks,
        "blocks_per_s": sum(r.blocks for r in results) / wall,
        "p50_ms": 1e3 * statistics.median(latencies),
        "p99_ms": 1e3 * percentile(latencies, 0.99),
        "state_bytes_per_stream": max(r.state_bytes for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=6, help="blocks per stream of the embedded model (tiny: 4x)")
    parser.add_argument("--out", type=Path, default=None, help="markdown table to write (else printed)")
    args = parser.parse_args()
    install = find_install()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, (source, instances, _) in MODELS.items():
            settings, loaded = plan_settings(idle_timeout=120, **source)
            write_repository(root / "repo", settings, loaded, name=name, max_streams=max(STREAMS), instances=instances)
        with TritonServer(root / "repo", root / "work", install=install) as server:
            version = connect(server.url).get_server_metadata().version
            for name, (_, instances, scale) in MODELS.items():
                log(f"{name}: warming {instances} instance(s)")
                run_streams(server.url, name, instances, 2, root)
                for n in STREAMS:
                    row = run_streams(server.url, name, n, args.blocks * scale, root)
                    row["instances"] = instances
                    log(json.dumps(row))
                    rows.append(row)
    env = environment()
    lines = [
        "# Serving load: N concurrent streams on the Triton Python-backend model (CPU)",
        "",
        f"Measured {env['date']} by `PYTHONPATH=src python -m benchmarks.serve_load --blocks {args.blocks}` on "
        f"{env['device']} ({env['host_cpu']}), Python {env['python']}, torch {env['torch']}, tritonserver {version} "
        f"(nvidia-pytriton's), tritonclient {metadata.version('tritonclient')}, git {env['git']}. Server and clients "
        "share the machine's cores; one CPU thread per model instance. One run per row: differences under ~10 % are "
        "noise.",
        "",
        "| model | instances | streams | blocks/stream | blocks/s (all streams) | p50 latency/block (ms) | "
        "p99 latency/block (ms) | state/stream (KiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['instances']} | {r['streams']} | {r['blocks_per_stream']} | "
            f"{r['blocks_per_s']:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
            f"{r['state_bytes_per_stream'] / 1024:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    if args.out is not None:
        args.out.write_text(text)
        log(f"wrote {args.out}")
    print(text)


if __name__ == "__main__":
    main()
