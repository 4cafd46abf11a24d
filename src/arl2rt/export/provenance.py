"""Which weights a package holds: a digest of the model's state dict, recorded in the manifest at export.

Parity compares a package against a reference model; with other weights the comparison measures nothing but the
difference between two models. :func:`weights_record` is what the exporter writes (field ``weights``: the digest and
what the weights were loaded from), :func:`check_same_weights` what a consumer checks before comparing.

The digest covers every parameter and buffer by name, shape and value, each cast to float32 (integer buffers as
they are): a model loaded in bfloat16, float32 or float64 from one checkpoint has the digest of those values, so the
float64 parity reference matches the package it was exported as.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from arl2rt.errors import Arl2rtError

WEIGHTS_FIELD = "weights"
_DIGEST_DTYPE = torch.float32


def hash_tensors(h, tensors: dict[str, torch.Tensor], float_dtype: torch.dtype | None = None) -> None:
    """Feed ``h`` each tensor's name, dtype, shape and bytes, in name order; floating point ones cast to
    ``float_dtype`` first when given (so one checkpoint loaded at different precisions hashes alike)."""
    for name, tensor in sorted(tensors.items()):
        t = tensor.detach().to("cpu")
        if float_dtype is not None and t.is_floating_point():
            t = t.to(float_dtype)
        t = t.contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the state dict: each entry's name, shape and values (floating point as float32)."""
    h = hashlib.sha256()
    hash_tensors(h, model.state_dict(), _DIGEST_DTYPE)
    return h.hexdigest()


def weights_record(model: torch.nn.Module, source: str | None) -> dict[str, str | None]:
    """The manifest's ``weights`` field: the digest and what the weights came from (None: not said)."""
    return {"sha256": weights_digest(model), "source": source}


def check_same_weights(manifest: dict, package: Path, model: torch.nn.Module, source: str | None = None) -> None:
    """Raise unless ``model`` has the weights ``package`` was exported from (a package without the record passes).

    ``source`` says where ``model``'s weights come from, for the message.
    """
    record = manifest.get(WEIGHTS_FIELD)
    if record is None:
        return  # exported before packages recorded their weights: nothing to compare with
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        raise Arl2rtError(
            f"package {package}: manifest field {WEIGHTS_FIELD!r} expected {{'sha256': str, 'source': str}}, "
            f"found {record!r}"
        )
    found = weights_digest(model)
    if found == record["sha256"]:
        return
    exported = record.get("source") or "weights it does not name"
    here = f" ({source})" if source else ""
    raise Arl2rtError(
        f"package {package} was exported from {exported} (weights sha256 {record['sha256'][:12]}), but the reference "
        f"model{here} has other weights (sha256 {found[:12]}): parity would compare two different models; give the "
        "reference the package's weights (the --config/--checkpoint it was exported from)"
    )
