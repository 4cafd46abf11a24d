"""Resumable streams: snapshots of a Streamer on disk (``--save-session DIR``, ``--resume DIR``).

A session directory holds one complete snapshot, named by a pointer file::

    DIR/LATEST                      "snap-000012" (replaced atomically: write a temp file, fsync, rename)
    DIR/snap-000012/state.safetensors   GDN states, valid K/V of every cache, text K/V, VAE caches (a model with a
                                    VAE decoder, once a block is decoded), the noise generator's state
    DIR/snap-000012/session.json    position (block, frame, RoPE frame), model identity, config, precision, backend,
                                    seed, target length, output writer state (with the sha256 of the output up to
                                    the snapshot), the sha256 of state.safetensors, and the sha256 of the record itself

A save writes a new ``snap-*`` under a temporary name, fsyncs it, renames it into place, then points LATEST at it and
only then deletes the previous snapshot: a crash at any moment leaves LATEST naming a complete snapshot. Loading
checks the format, the record's own checksum (an edited position or output path is refused, never continued from),
the record's fields, the tensors' checksum and every tensor's name, shape and dtype; resuming checks the model
identity (sha256 of the package manifest, or of the config and state_dict of a PyTorch model), and the output writer
checks that the output is still the stream's own before it touches it (:mod:`arl2rt.runtime.video`). So another
model, a corrupted or edited snapshot or a replaced output is an :class:`Arl2rtError`, never a silently different
stream or a changed file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from arl2rt import __version__
from arl2rt.errors import Arl2rtError
from arl2rt.export.provenance import hash_tensors
from arl2rt.files import file_record, record_digest, sha256_file
from arl2rt.model.dit import CausalDiT
from arl2rt.model.vae.kinds import VaeDecoder
from arl2rt.runtime.streamer import Streamer, StreamPosition

FORMAT = "arl2rt-session"
VERSION = 1
LATEST = "LATEST"
TENSORS = "state.safetensors"
META = "session.json"
RNG_KEY = "__rng_state__"
CHECKSUM = "record_sha256"
_SNAP = re.compile(r"snap-(\d{6,})")


def module_identity(model: CausalDiT, vae: VaeDecoder | None = None) -> str:
    """sha256 over the config and every parameter/buffer (name, dtype, shape, bytes) of a PyTorch model, and of its
    VAE decoder if it has one (a stream resumed with another decoder would decode differently)."""
    h = hashlib.sha256(json.dumps(model.cfg.to_dict(), sort_keys=True).encode())
    hash_tensors(h, model.state_dict())
    if vae is not None:
        h.update(json.dumps({"vae": vae.config.to_dict()}, sort_keys=True).encode())
        hash_tensors(h, vae.state_dict())
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# session.json nests the model's fields of a SessionRecord under "model"; the run's fields sit at the top
_MODEL_FIELDS = {"identity": str, "source": dict, "description": str, "config": dict}
_RUN_FIELDS = {
    "backend": str,
    "dtype": str,
    "device": str,
    "batch": int,
    "seed": int,
    "text": str,
    "target_blocks": int,
    "output": dict,
}
_OUTPUT_FIELDS = {"format": str, "path": str}  # the rest is the writer's to check (video.open_writer)
_POSITION_FIELDS = ("block", "frame", "rope_frame")


def _problems(record: object, fields: dict[str, type], prefix: str = "") -> list[str]:
    """``name: expected TYPE, found ...`` for each field of ``fields`` missing from ``record`` or of another type."""
    if not isinstance(record, dict):
        found = "missing" if record is None else f"expected an object, found {type(record).__name__}"
        return [f"{prefix.rstrip('.') or 'record'}: {found}"]
    found = []
    for name, kind in fields.items():
        value = record.get(name)
        if name not in record:
            found.append(f"{prefix}{name}: missing")
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            found.append(f"{prefix}{name}: expected {kind.__name__}, found {type(value).__name__}")
    return found


@dataclass(frozen=True)
class SessionRecord:
    """What ``arl2rt generate`` records beside the tensors: enough to load the same model and continue the stream.

    On disk it is part of ``session.json`` (:meth:`to_meta`), beside the position and the tensors' checksum.
    """

    identity: str  # of the model: see module_identity, or the sha256 of a package's manifest
    source: dict[str, Any]  # how to load the model again (kind, path, config)
    description: str
    config: dict[str, Any]
    backend: str
    dtype: str
    device: str
    batch: int
    seed: int
    text: str  # where the text context came from (the context itself is a tensor of the snapshot)
    target_blocks: int
    output: dict[str, Any]  # the output writer's state, to append after

    def to_meta(self) -> dict[str, Any]:
        model = {k: getattr(self, k) for k in _MODEL_FIELDS}
        return {"model": model, **{k: getattr(self, k) for k in _RUN_FIELDS}}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], where: Path) -> SessionRecord:
        problems = _problems(meta.get("model"), _MODEL_FIELDS, "model.") + _problems(meta, _RUN_FIELDS)
        if not problems:
            problems = _problems(meta["output"], _OUTPUT_FIELDS, "output.")
        if problems:
            raise Arl2rtError(f"session {where}: expected a record written by generate; " + "; ".join(problems))
        return cls(**{k: meta["model"][k] for k in _MODEL_FIELDS}, **{k: meta[k] for k in _RUN_FIELDS})


@dataclass
class Snapshot:
    """A loaded, verified snapshot: its metadata and the Streamer tensors (RNG state separate)."""

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    rng_state: torch.Tensor

    @property
    def position(self) -> StreamPosition:
        p = self.meta["position"]
        return StreamPosition(p["block"], p["frame"], p["rope_frame"])

    def restore(self, streamer: Streamer) -> None:
        streamer.restore(self.tensors, self.position, self.rng_state)


def latest_name(root: Path) -> str | None:
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not _SNAP.fullmatch(name):
        raise Arl2rtError(f"session {pointer}: expected a snapshot name like snap-000012, found {name[:40]!r}")
    return name


def prepare_session_dir(root: Path, *, resuming_from: Path | None = None) -> None:
    """A directory new snapshots may go to: new or empty, or the session being resumed (never someone's files)."""
    if resuming_from is not None and root.resolve() == resuming_from.resolve():
        return
    if root.exists():
        if not root.is_dir():
            raise Arl2rtError(f"session {root}: expected a directory, found a file")
        if latest_name(root) is not None:
            raise Arl2rtError(
                f"session {root}: already holds a session; continue it with --resume {root} or choose another directory"
            )
        if any(root.iterdir()):
            raise Arl2rtError(f"session {root}: expected a new or empty directory, found other files in it")
    root.mkdir(parents=True, exist_ok=True)


def save_snapshot(root: Path, streamer: Streamer, meta: dict[str, Any]) -> Path:
    """Write a snapshot of ``streamer`` (plus the caller's ``meta``) into ``root`` atomically; returns its directory."""
    pos = streamer.position
    name = f"snap-{pos.block:06d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in streamer.store.state_dict().items()}
        tensors[RNG_KEY] = streamer.generator.get_state()
        save_file(tensors, str(tmp / TENSORS))
        with open(tmp / TENSORS, "rb+") as f:
            os.fsync(f.fileno())
        record = {
            "format": FORMAT,
            "version": VERSION,
            "arl2rt": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **meta,
            "position": {"block": pos.block, "frame": pos.frame, "rope_frame": pos.rope_frame},
            "tensors": {"file": TENSORS, **file_record(tmp / TENSORS)},
        }
        record = json.loads(json.dumps(record))  # as it reads back (tuples -> lists), for the checksum
        record[CHECKSUM] = record_digest(record, CHECKSUM)
        with open(tmp / META, "w") as f:
            json.dump(record, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        final = root / name
        if final.exists():  # a stale copy from a run that crashed before moving LATEST to it
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / f".{LATEST}.partial"
        with open(pointer, "w") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(pointer, root / LATEST)
        _fsync_dir(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in root.iterdir():  # only now is the previous snapshot redundant
        if old.name != name and (_SNAP.fullmatch(old.name) or old.name.startswith(".tmp-snap-")):
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_snapshot(root: Path) -> Snapshot:
    """The snapshot LATEST names, verified (format, checksum, tensors present); see :func:`check_compatible`."""
    if not root.is_dir():
        raise Arl2rtError(f"session {root}: no such directory")
    name = latest_name(root)
    if name is None:
        raise Arl2rtError(f"session {root}: no {LATEST} file; expected a directory written by --save-session")
    snap = root / name
    try:
        meta = json.loads((snap / META).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise Arl2rtError(f"session {snap / META}: cannot read the snapshot record ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        found = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else type(meta).__name__
        raise Arl2rtError(f"session {snap / META}: expected format {FORMAT!r} version {VERSION}, found {found}")
    _check_record(meta, snap / META)
    path = snap / TENSORS
    if not path.is_file():
        raise Arl2rtError(f"session {path}: missing; the snapshot is incomplete")
    want, got = meta["tensors"]["sha256"], sha256_file(path)
    if want != got:
        raise Arl2rtError(f"session {path}: sha256 {got[:16]}… does not match the recorded {want[:16]}…; corrupted")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise Arl2rtError(f"session {path}: cannot read tensors ({exc})") from None
    rng = tensors.pop(RNG_KEY, None)
    if rng is None:
        raise Arl2rtError(f"session {path}: no {RNG_KEY} tensor; expected the noise generator's state")
    return Snapshot(snap, meta, tensors, rng)


def _check_record(meta: dict[str, Any], where: Path) -> None:
    """The record is the one the save wrote (its checksum), with the position and tensors' entry loading needs."""
    want = meta.get(CHECKSUM)
    if not isinstance(want, str):
        raise Arl2rtError(
            f"session {where}: expected the record's own checksum {CHECKSUM!r}, found none; written by another arl2rt "
            "version or edited"
        )
    got = record_digest(meta, CHECKSUM)
    if got != want:
        raise Arl2rtError(
            f"session {where}: content sha256 {got[:16]}… does not match the recorded {CHECKSUM} {want[:16]}…; the "
            "record was edited or damaged, so the stream cannot continue from it"
        )
    problems = _problems(meta.get("position"), dict.fromkeys(_POSITION_FIELDS, int), "position.")
    problems += _problems(meta.get("tensors"), {"sha256": str}, "tensors.")
    if not problems and any(meta["position"][k] < 0 for k in _POSITION_FIELDS):
        problems.append(f"position: expected counts >= 0, found {meta['position']}")
    if problems:
        raise Arl2rtError(f"session {where}: expected a snapshot record; " + "; ".join(problems))


def check_compatible(snapshot: Snapshot, *, identity: str, source: str, config: dict, dtype: str) -> None:
    """The run that resumes must load the very model (and precision) the snapshot was made with."""
    model = snapshot.meta["model"]
    where = snapshot.path / META
    config = json.loads(json.dumps(config))  # tuples -> lists, as the record holds them
    if model["identity"] != identity:
        raise Arl2rtError(
            f"session {where}: made with model {model['identity'][:16]}… ({model['description']}), this run loads "
            f"{identity[:16]}… ({source}); resume with the same model"
        )
    if model["config"] != config:
        diff = sorted(k for k in set(config) | set(model["config"]) if config.get(k) != model["config"].get(k))
        raise Arl2rtError(f"session {where}: config differs from this run's in {diff}")
    if snapshot.meta["dtype"] != dtype:
        raise Arl2rtError(f"session {where}: made at precision {snapshot.meta['dtype']}, this run uses {dtype}")
