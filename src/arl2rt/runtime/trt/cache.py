"""The engine cache: built engines stored under a digest of everything they depend on, verified before use.

An entry is a directory ``<root>/<digest>/`` holding one ``<graph>.engine`` per step graph and ``entry.json``: the key
(TensorRT flavour and version, device or RTX target list, ONNX and plugin hashes, profile shapes, precision, builder
settings), the digest of that key, and each engine's size and sha256. Anything that changes the key lands in another
directory (a miss); an entry whose files do not match its record is corrupt and is rebuilt, never loaded. Entries are
written in a temporary directory and renamed into place, so a killed build leaves no half entry behind.

A stream needs less than an exact key: engines whose optimization profiles contain the stream's shapes run it, at any
builder optimization level (:func:`blocking_fields`). :meth:`EngineCache.find` looks for such an entry when the exact
one is missing, so a stream of 12 frames runs on the engines ``arl2rt build`` made for 21.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arl2rt.errors import Arl2rtError
from arl2rt.files import check_file

ENTRY_FILE = "entry.json"
ENTRY_FORMAT = 1
# key fields in which engines that serve a stream may differ from its key: see blocking_fields()
_PROFILES, _ANY_LEVEL = "profiles", "optimization_level"


def key_digest(key: dict) -> str:
    """sha256 of the key's canonical JSON: the entry's directory name."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    key: dict
    engines: dict[str, Path]
    record: dict

    def engine_bytes(self, graph: str) -> bytes:
        return self.engines[graph].read_bytes()


@dataclass(frozen=True)
class Lookup:
    status: str  # "hit", "miss" or "corrupt"
    entry: CacheEntry | None = None
    reason: str = ""


def profiles_cover(built: Any, needed: Any) -> bool:
    """Whether profiles ``built`` (graph -> input -> [min, opt, max] shapes) contain every shape range of ``needed``."""
    try:
        if built.keys() != needed.keys():
            return False
        for graph, inputs in needed.items():
            have = built[graph]
            if have.keys() != inputs.keys():
                return False
            for name, (lo, _, hi) in inputs.items():
                b_lo, _, b_hi = have[name]
                if len(b_lo) != len(lo) or len(b_hi) != len(hi):
                    return False
                if any(b > n for b, n in zip(b_lo, lo)) or any(b < n for b, n in zip(b_hi, hi)):
                    return False
    except (AttributeError, KeyError, TypeError, ValueError):  # a key of another shape: not ours to run
        return False
    return True


def blocking_fields(built: dict, needed: dict) -> list[str]:
    """The fields of key ``built`` that keep its engines from running what key ``needed`` describes (none: they run
    it): all must be equal, except profiles, which may be wider, and the builder optimization level."""
    fields = []
    for name in sorted(built.keys() | needed.keys()):
        if name == _ANY_LEVEL:
            continue
        if name == _PROFILES:
            if not profiles_cover(built.get(name), needed.get(name)):
                fields.append(name)
        elif built.get(name) != needed.get(name):
            fields.append(name)
    return fields


def _differences(built: dict, needed: dict, exact: bool) -> list[str]:
    if exact:
        return sorted(k for k in needed.keys() | built.keys() if needed.get(k) != built.get(k))
    return blocking_fields(built, needed)


def read_entry(path: Path, expected_key: dict | None = None, *, exact: bool = True) -> CacheEntry:
    """Load and verify the entry in ``path``; an Arl2rtError names the file and what does not match.

    With ``expected_key``, an entry built for anything else (another TensorRT, GPU, ONNX file, profile...) is refused
    and the message lists the fields that differ; ``exact=False`` accepts any entry whose engines run what the key
    describes (:func:`blocking_fields`: wider profiles, another optimization level).
    """
    record_path = path / ENTRY_FILE
    try:
        record = json.loads(record_path.read_text())
    except FileNotFoundError:
        raise Arl2rtError(
            f"{record_path}: no engine entry here (expected a directory written by `arl2rt build`)"
        ) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Arl2rtError(f"{record_path}: unreadable engine entry ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != ENTRY_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise Arl2rtError(f"{record_path}: expected entry format {ENTRY_FORMAT}, found {found!r}")
    key = record.get("key")
    if not isinstance(key, dict) or record.get("digest") != key_digest(key):
        raise Arl2rtError(f"{record_path}: the recorded digest does not match the recorded key (edited or corrupted)")
    fields = _differences(key, expected_key, exact) if expected_key is not None else []
    if fields:
        need = expected_key or {}
        diffs = "; ".join(f"{k}: built for {key.get(k)!r}, this machine needs {need.get(k)!r}" for k in fields)
        raise Arl2rtError(f"{path}: engines built for another setup ({diffs}); rebuild with `arl2rt build`")
    engines = {}
    for graph, info in record.get("engines", {}).items():
        file = path / info["file"]
        check_file(file, info)
        engines[graph] = file
    return CacheEntry(path, key, engines, record)


def _profile_volume(key: dict) -> int:
    """Sum of the largest shapes' dims over a key's profiles: the smaller, the closer the fit to a stream."""
    return sum(sum(shapes[2]) for inputs in key[_PROFILES].values() for shapes in inputs.values())


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class EngineCache:
    """Engines on disk under ``root``, one verified entry per key."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def entry_path(self, key: dict) -> Path:
        return self.root / key_digest(key)

    def lookup(self, key: dict) -> Lookup:
        path = self.entry_path(key)
        if not path.exists():
            return Lookup("miss")
        try:
            return Lookup("hit", read_entry(path, expected_key=key))
        except Arl2rtError as exc:
            return Lookup("corrupt", reason=str(exc))

    def find(self, key: dict) -> Lookup:
        """The entry of ``key``; when it is missing or corrupt, the verified entry with the smallest profiles among
        those whose engines serve ``key`` (:func:`blocking_fields`), if any."""
        exact = self.lookup(key)
        if exact.status == "hit" or not self.root.is_dir():
            return exact
        candidates = []
        for path in self.root.iterdir():
            if path.name.startswith(".") or path == self.entry_path(key) or not (path / ENTRY_FILE).is_file():
                continue
            try:
                built = json.loads((path / ENTRY_FILE).read_text()).get("key")
            except (OSError, ValueError, AttributeError):
                continue  # unreadable: never a candidate (and not this key's entry to replace)
            if isinstance(built, dict) and not blocking_fields(built, key):
                candidates.append((_profile_volume(built), path.name, path))
        for _, _, path in sorted(candidates):
            try:
                return Lookup("hit", read_entry(path, expected_key=key, exact=False))
            except Arl2rtError:
                continue  # corrupt: try the next
        return exact

    def store(self, key: dict, engines: dict[str, bytes], info: dict | None = None) -> CacheEntry:
        """Write the engines as the entry of ``key``, replacing a corrupt one; returns the verified entry."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.entry_path(key)
        tmp = self.root / f".tmp-{final.name[:16]}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            files = {}
            for graph, data in engines.items():
                name = f"{graph}.engine"
                (tmp / name).write_bytes(data)
                files[graph] = {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            record = {
                "format": ENTRY_FORMAT,
                "digest": key_digest(key),
                "key": key,
                "engines": files,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **(info or {}),
            }
            (tmp / ENTRY_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
            if final.exists():
                trash = self.root / f".trash-{uuid.uuid4().hex}"
                os.replace(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            try:
                os.replace(tmp, final)
            except OSError:
                # another process stored the same key meanwhile: keep theirs if it verifies
                shutil.rmtree(tmp, ignore_errors=True)
            return read_entry(final, expected_key=key)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    # -- timing cache: shared by every build with the same TensorRT and GPU --------------------------------------
    def timing_cache_path(self, flavour: str, version: str, device: str) -> Path:
        return self.root / "timing" / f"{flavour}-{version}-{device}.cache"

    def save_timing_cache(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_bytes_atomic(path, data)
