"""Carry a wheel larger than one device call may take (onnxruntime-gpu, ~256 MB) to the GPU machine in parts.

One call to the device tool carries at most 64 MiB in all: the tracked tree (~18 MiB) plus the carried paths. Ignored
files left on a warm machine survive until the next call, so the wheel travels one part per consecutive call and is
joined and installed by the last one. If the machine goes cold in between, the parts there are gone: start over
(``status`` says what is left to carry). Stdlib only: it runs before anything is installed there.

Plan (run from the repository root; ``W`` stands for the wheel's file name)::

    # here, once. The staging folder .whl/ is ignored by the repo's .gitignore (``/.whl/``); on a checkout where it
    # is not, ignore it locally so the parts never travel with the tree uninvited:
    echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
    pip download onnxruntime-gpu==1.31.1 --no-deps --only-binary=:all: --implementation cp --python-version 3.12 \
        --abi cp312 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 -d .whl
    # for one GPU architecture, blank the others' device code first (tools/slim_wheel.py: 256 MB -> 70 MB for sm_90,
    # two parts instead of six), then split the slim wheel:
    python tools/slim_wheel.py .whl/W --keep-sm 90 --out .whl/slim
    python tools/stage_wheel.py split .whl/slim/W --out .whl/parts   # part size: what the 64 MiB leaves beside the tree

    # on the device, N calls back to back (each within the warm machine's idle window, status's idle_release_s),
    # call k carrying part k-1 beside the manifest and doing the session's useful work after a status line:
    #   carry: [".whl/parts/W.manifest.json", ".whl/parts/W.partNN"]     (NN = k - 1)
    #   command: python tools/stage_wheel.py status .whl/parts; <the call's useful work>
    # Carry the part *files*, never the folder .whl/parts: a carried folder replaces the whole folder there, dropping
    # the parts earlier calls left. A part status calls missing or corrupt rides again with the next call.
    # Call N also joins, installs into an ignored target dir and uses it, the target first on PYTHONPATH so that the
    # GPU build wins over the image's CPU onnxruntime (keep that PYTHONPATH on later calls to the same warm machine):
    python tools/stage_wheel.py join .whl/parts --manifest W.manifest.json \
      && python tools/stage_wheel.py install .whl/parts/W --target .whl/site \
      && PYTHONPATH=.whl/site:src python -m arl2rt doctor

With ``--part-mib 60`` (what 64 MiB would allow without the tree) the wheel is ceil(256/60) = 5 parts, but the tree
itself takes ~18 MiB of the 64, so ``split`` by default sizes parts to fit beside it (~44 MiB: 6 parts, 6 calls) and
refuses a part size that does not fit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MIB = 1 << 20
CARRY_LIMIT_MIB = 64.0  # what one device call may carry: the tree and the carried paths together
MARGIN_MIB = 2.0  # for the manifest and untracked files beside the part
CHUNK = 4 * MIB


class StageError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def tracked_tree_bytes(root: Path) -> int:
    """Bytes of the tracked files under ``root`` (what travels with every call); 0 outside a git checkout."""
    try:
        listing = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum((root / p).stat().st_size for p in listing.split("\0") if p and (root / p).is_file())


def default_part_bytes(tree_bytes: int) -> int:
    room = CARRY_LIMIT_MIB - MARGIN_MIB - tree_bytes / MIB
    if room < 1:
        raise StageError(f"the tracked tree ({tree_bytes / MIB:.1f} MiB) leaves no room in one call's 64 MiB")
    return int(room) * MIB


def part_name(wheel: str, index: int) -> str:
    return f"{wheel}.part{index:02d}"


def split(wheel: Path, out: Path, part_bytes: int) -> Path:
    """Write ``out/NAME.partNN`` and ``out/NAME.manifest.json``; returns the manifest's path."""
    if not wheel.is_file():
        raise StageError(f"wheel {wheel} not found")
    if part_bytes <= 0:
        raise StageError(f"part size must be positive, got {part_bytes} bytes")
    out.mkdir(parents=True, exist_ok=True)
    size = wheel.stat().st_size
    count = max(1, math.ceil(size / part_bytes))
    parts = []
    with wheel.open("rb") as src:
        for index in range(count):
            data = src.read(part_bytes)
            name = part_name(wheel.name, index)
            (out / name).write_bytes(data)
            parts.append({"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {
        "wheel": wheel.name,
        "size": size,
        "sha256": sha256_of(wheel),
        "part_bytes": part_bytes,
        "part_count": count,
        "parts": parts,
    }
    path = out / f"{wheel.name}.manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def load_manifest(folder: Path, manifest: str | None) -> dict:
    if manifest is None:
        found = sorted(folder.glob("*.manifest.json"))
        if len(found) != 1:
            raise StageError(f"expected one *.manifest.json in {folder}, found {len(found)}: pass --manifest")
        path = found[0]
    else:
        path = folder / manifest
    if not path.is_file():
        raise StageError(f"manifest {path} not found: carry it with every staging call")
    return json.loads(path.read_text())


def part_states(folder: Path, manifest: dict) -> list[tuple[dict, str]]:
    """Each part with ``intact``, ``missing`` or ``corrupt`` (wrong size or sha256)."""
    states = []
    for part in manifest["parts"]:
        path = folder / part["name"]
        if not path.is_file():
            state = "missing"
        elif path.stat().st_size != part["size"] or sha256_of(path) != part["sha256"]:
            state = "corrupt"
        else:
            state = "intact"
        states.append((part, state))
    return states


def carry_hint(folder: Path, manifest: dict, part: dict) -> str:
    call = manifest["parts"].index(part) + 1
    return f"{part['name']} (call {call} of {manifest['part_count']}: carry {folder / part['name']} again)"


def join(folder: Path, manifest_name: str | None) -> Path:
    """Check every part, join them into ``folder/NAME`` via a temporary file, check the whole; returns its path."""
    manifest = load_manifest(folder, manifest_name)
    bad = [(p, s) for p, s in part_states(folder, manifest) if s != "intact"]
    if bad:
        raise StageError("; ".join(f"{state} part {carry_hint(folder, manifest, p)}" for p, state in bad))
    target = folder / manifest["wheel"]
    fd, tmp_name = tempfile.mkstemp(prefix=f"{manifest['wheel']}.partial-", dir=folder)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as dst:
            for part in manifest["parts"]:
                with (folder / part["name"]).open("rb") as src:
                    while block := src.read(CHUNK):
                        digest.update(block)
                        dst.write(block)
            dst.flush()
            os.fsync(dst.fileno())
        if digest.hexdigest() != manifest["sha256"]:
            raise StageError(
                f"joined {manifest['wheel']} has sha256 {digest.hexdigest()}, expected {manifest['sha256']}: "
                "a part changed while joining; run join again"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def status(folder: Path, manifest_name: str | None) -> list[str]:
    """One line per part and a last line: ``complete`` or what is left to carry."""
    manifest = load_manifest(folder, manifest_name)
    states = part_states(folder, manifest)
    lines = [f"{part['name']}: {state}" for part, state in states]
    left = [part["name"] for part, state in states if state != "intact"]
    lines.append("complete: join can run" if not left else f"left to carry: {', '.join(left)}")
    return lines


def pip_command(wheel: Path, target: Path) -> list[str]:
    # --upgrade: a second install into the same target replaces what a first one left instead of skipping it.
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--no-deps",
        "--upgrade",
        "--target",
        str(target),
        str(wheel),
    ]


PROVIDERS_PROBE = "import onnxruntime as o, json; print(json.dumps([o.__file__, o.get_available_providers()]))"


def install(wheel: Path, target: Path) -> list[str]:
    """pip-install ``wheel`` into ``target`` and check that onnxruntime from there lists the CUDA EP."""
    if not wheel.is_file():
        raise StageError(f"wheel {wheel} not found: run join first")
    subprocess.run(pip_command(wheel, target), check=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}
    probe = subprocess.run([sys.executable, "-c", PROVIDERS_PROBE], capture_output=True, text=True, env=env)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise StageError(f"import onnxruntime from {target} failed: {last}")
    module, providers = json.loads(probe.stdout.strip().splitlines()[-1])
    print(f"onnxruntime from {module}: {', '.join(providers)}")
    if not Path(module).resolve().is_relative_to(target.resolve()):
        raise StageError(f"onnxruntime was imported from {module}, not from {target}: another install shadows it")
    if "CUDAExecutionProvider" not in providers:
        raise StageError(f"onnxruntime from {target} lacks CUDAExecutionProvider (providers: {', '.join(providers)})")
    return providers


def _part_bytes(args: argparse.Namespace) -> int:
    if args.part_bytes is not None:
        return args.part_bytes
    if args.part_mib is not None:
        part = int(args.part_mib * MIB)
        tree = tracked_tree_bytes(Path.cwd())
        if (part + tree) / MIB > CARRY_LIMIT_MIB:
            raise StageError(
                f"a {args.part_mib} MiB part and the {tree / MIB:.1f} MiB tracked tree exceed one call's 64 MiB: "
                f"use --part-mib {default_part_bytes(tree) // MIB} or less"
            )
        return part
    return default_part_bytes(tracked_tree_bytes(Path.cwd()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stage_wheel", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("split", help="cut a wheel into parts and write their manifest")
    p.add_argument("wheel", type=Path)
    p.add_argument("--out", type=Path, required=True)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--part-mib", type=float, help="part size in MiB (fractions allowed); default: what fits")
    size.add_argument("--part-bytes", type=int, help="part size in bytes (tests)")
    p = sub.add_parser("join", help="check the parts, join them, check the whole; prints the wheel's path")
    p.add_argument("dir", type=Path)
    p.add_argument("--manifest", help="the manifest's file name in DIR (default: the only one there)")
    p = sub.add_parser("status", help="which parts are present and intact")
    p.add_argument("dir", type=Path)
    p.add_argument("--manifest")
    p = sub.add_parser("install", help="pip-install the wheel into a target dir and check the CUDA EP")
    p.add_argument("wheel", type=Path)
    p.add_argument("--target", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "split":
            manifest = split(args.wheel, args.out, _part_bytes(args))
            print(manifest)
        elif args.cmd == "join":
            print(join(args.dir, args.manifest))
        elif args.cmd == "status":
            print("\n".join(status(args.dir, args.manifest)))
        else:
            install(args.wheel, args.target)
    except StageError as exc:
        print(f"stage_wheel {args.cmd}: error: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"stage_wheel {args.cmd}: error: {' '.join(map(str, exc.cmd))} exited {exc.returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
