"""What a user keeps on disk (packages, engines, session snapshots): the content record of a file and its check, and
the digest a JSON record keeps of itself."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from arl2rt.errors import Arl2rtError


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path) -> dict[str, int | str]:
    """``{"bytes": size, "sha256": digest}``: what :func:`check_file` verifies later."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def check_file(path: Path, record: dict) -> None:
    """Raise unless ``path`` exists with the size and sha256 of ``record`` (size first: cheap, and says truncation)."""
    if not path.is_file():
        raise Arl2rtError(f"{path}: missing (recorded as {record['bytes']} bytes)")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise Arl2rtError(f"{path}: expected {record['bytes']} bytes, found {size} (truncated or replaced?)")
    digest = sha256_file(path)
    if digest != record["sha256"]:
        raise Arl2rtError(f"{path}: expected sha256 {record['sha256']}, found {digest} (modified?)")


def record_digest(record: dict, field: str) -> str:
    """sha256 of a JSON record's canonical form (sorted keys, no spaces) without its own digest entry ``field``."""
    body = {k: v for k, v in record.items() if k != field}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
