"""On-disk cache of prompt embeddings, so that a second run with the same prompt never loads the 11 GB encoder.

One safetensors file per prompt, ``<cache dir>/<key digest>.safetensors``, holding the prompt's true-length rows
``[n, text_dim]`` in the encoder's dtype (the zero padding is added on read) and, in its metadata, the key itself,
the sha256 of the rows and the prompt's untruncated token count. The key is everything the rows depend on: the
encoder folder's identity (:meth:`~arl2rt.model.text.folder.EncoderFiles.identity`), the prompt as given, the clean
rule, ``text_len``, the dtype and the versions of transformers and ftfy (a new tokenizer may split text differently).

Files are written to a temporary name and renamed into place, so a killed run leaves no half entry. An entry that does
not parse, holds another key, has the wrong shape or fails its checksum is reported, recomputed and overwritten,
never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from arl2rt.errors import Arl2rtError
from arl2rt.model.config import ModelConfig
from arl2rt.model.text.clean import CLEAN_RULE
from arl2rt.model.text.deps import version_of
from arl2rt.model.text.folder import find_encoder_files
from arl2rt.model.text.umt5 import (
    DTYPES,
    EncodedPrompt,
    UMT5TextEncoder,
    check_text_dim,
    encoder_dtype,
    pad_to_text_len,
    truncation_warning,
)

ENTRY_FORMAT = "1"
ROWS = "rows"


def default_text_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/arl2rt/text``, else ``~/.cache/arl2rt/text``."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "arl2rt" / "text"


def encode_prompts(
    prompts: str | Sequence[str],
    encoder_dir: str | Path,
    cfg: ModelConfig,
    cache_dir: str | Path | None = None,
    *,
    dtype: str | torch.dtype = "bfloat16",
    device: str | torch.device = "cpu",
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """DiT context ``[B, text_len, text_dim]`` (``out_dtype``, on the CPU) for ``prompts``, from the cache where it
    can; the encoder in ``encoder_dir`` is loaded (on ``device``, in ``dtype``) only when some prompt is missing."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise Arl2rtError("encode_prompts: no prompts given")
    name = encoder_dtype(dtype)
    files = find_encoder_files(encoder_dir)
    check_text_dim(files, cfg)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_text_cache_dir()
    identity = files.identity()
    keys = [_key(identity, p, cfg.text_len, name) for p in prompts]
    unique = dict(zip(keys, prompts))  # a repeated prompt is looked up and encoded once
    found: dict[str, EncodedPrompt] = {}
    for key, prompt in unique.items():
        entry = _read_entry(_entry_path(root, key), key, DTYPES[name], files.text_dim, cfg.text_len)
        if entry is not None:
            if entry.tokens > cfg.text_len:
                truncation_warning(prompt, entry.tokens, cfg.text_len)
            found[key] = entry
    todo = {key: prompt for key, prompt in unique.items() if key not in found}
    if todo:
        encoder = UMT5TextEncoder.from_dir(files.root, cfg, dtype=name, device=device)
        for key, entry in zip(todo, encoder.encode_rows(list(todo.values()))):
            _write_entry(_entry_path(root, key), key, entry)
            found[key] = entry
        on_cuda = encoder.device.type == "cuda"
        del encoder
        if on_cuda:  # hand the encoder's memory back: TensorRT and onnxruntime allocate outside torch's pool
            torch.cuda.empty_cache()
    return pad_to_text_len([found[k].rows for k in keys], cfg.text_len, out_dtype)


def _key(identity: dict, prompt: str, text_len: int, dtype: str) -> str:
    key = {
        "format": ENTRY_FORMAT,
        "encoder": identity,
        "prompt": prompt,
        "clean": CLEAN_RULE,
        "text_len": text_len,
        "dtype": dtype,
        "transformers": version_of("transformers"),
        "ftfy": version_of("ftfy"),
    }
    return json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _entry_path(root: Path, key: str) -> Path:
    return root / f"{hashlib.sha256(key.encode()).hexdigest()}.safetensors"


def _rows_digest(rows: torch.Tensor) -> str:
    return hashlib.sha256(rows.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def _read_entry(path: Path, key: str, dtype: torch.dtype, text_dim: int, text_len: int) -> EncodedPrompt | None:
    """The entry in ``path``, None on a miss; a corrupt entry warns and reads as a miss."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            rows = f.get_tensor(ROWS)
        tokens = int(meta.get("tokens", ""))
    except Exception as exc:  # noqa: BLE001 - any decode failure means the same: the file is not a usable entry
        return _corrupt(path, f"unreadable: {type(exc).__name__}: {exc}")
    if meta.get("format") != ENTRY_FORMAT or meta.get("key") != key:
        return _corrupt(path, "its recorded key is not the one it is stored under")
    if rows.dtype != dtype or rows.dim() != 2 or rows.shape[1] != text_dim or not 1 <= rows.shape[0] <= text_len:
        return _corrupt(path, f"rows {str(rows.dtype).removeprefix('torch.')} {list(rows.shape)}")
    if _rows_digest(rows) != meta.get("sha256"):
        return _corrupt(path, "checksum mismatch")
    return EncodedPrompt(rows, tokens)


def _corrupt(path: Path, reason: str) -> None:
    warnings.warn(f"text cache entry {path} is corrupt ({reason}); recomputing it", UserWarning, stacklevel=3)
    return None


def _write_entry(path: Path, key: str, entry: EncodedPrompt) -> None:
    rows = entry.rows.contiguous()
    meta = {"format": ENTRY_FORMAT, "key": key, "sha256": _rows_digest(rows), "tokens": str(entry.tokens)}
    data = save({ROWS: rows}, metadata=meta)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # the cache only saves time: a read-only or full disk must not stop the run
        warnings.warn(f"text cache entry {path} not written ({exc})", UserWarning, stacklevel=3)
    finally:
        with contextlib.suppress(OSError):  # gone after the rename; never there if the folder could not be made
            tmp.unlink(missing_ok=True)
