"""Where a umT5 encoder lives on disk, checked before anything loads.

Two layouts, both as ``transformers`` saves them:

* one folder holding ``config.json`` (``model_type`` ``umt5``: a ``UMT5EncoderModel``, or a whole UMT5 model whose
  encoder loads as one), the weights and the tokenizer files;
* a Diffusers pipeline folder (e.g. Wan2.1-T2V-1.3B-Diffusers) with ``text_encoder/`` and ``tokenizer/``.

Wan's own ``models_t5_umt5-xxl-enc-bf16.pth`` uses other parameter names and no ``config.json``; it is not read here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from arl2rt.errors import Arl2rtError

MODEL_TYPE = "umt5"
CONFIG_FILE = "config.json"
# In transformers' order of preference: an index (with the shards it names) or a single file.
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_SINGLES = ("model.safetensors", "pytorch_model.bin")
# Either vocabulary file lets AutoTokenizer build the tokenizer; the others change how it behaves when present.
TOKENIZER_VOCABS = ("tokenizer.json", "spiece.model")
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


@dataclass(frozen=True)
class EncoderFiles:
    """The checked files of one encoder: what :class:`~arl2rt.model.text.umt5.UMT5TextEncoder` loads."""

    root: Path
    model_dir: Path
    tokenizer_dir: Path
    config: dict
    weights: tuple[Path, ...]
    tokenizer: tuple[Path, ...]

    @property
    def text_dim(self) -> int:
        return int(self.config["d_model"])

    @property
    def vocab_size(self) -> int:
        return int(self.config.get("vocab_size", 0))

    def identity(self) -> dict:
        """What the encoder's output depends on, cheaply: config.json's digest, and the name, size and mtime of every
        weight and tokenizer file. Hashing 11 GB of weights would cost more than the cache saves; a replaced, edited
        or re-downloaded file changes its size or mtime, and so the key."""
        files = [
            [str(p.relative_to(self.root)), p.stat().st_size, p.stat().st_mtime_ns]
            for p in (*self.weights, *self.tokenizer)
        ]
        config_bytes = (self.model_dir / CONFIG_FILE).read_bytes()
        return {"config_sha256": hashlib.sha256(config_bytes).hexdigest(), "files": files}


def find_encoder_files(path: str | Path) -> EncoderFiles:
    """The files of the encoder in ``path``; one Arl2rtError names the folder and what is missing or unexpected."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise Arl2rtError(f"text encoder {root}: no such folder")
    if (root / CONFIG_FILE).is_file():
        model_dir = tokenizer_dir = root
    elif (root / "text_encoder" / CONFIG_FILE).is_file():
        model_dir, tokenizer_dir = root / "text_encoder", root / "tokenizer"
    else:
        raise Arl2rtError(
            f"text encoder {root}: no {CONFIG_FILE} (expected a transformers UMT5EncoderModel folder, or a Diffusers "
            "pipeline folder with text_encoder/ and tokenizer/; Wan's own models_t5_*.pth is not supported, use the "
            "Diffusers release of the model)"
        )
    config = _read_config(model_dir / CONFIG_FILE)
    return EncoderFiles(
        root=root,
        model_dir=model_dir,
        tokenizer_dir=tokenizer_dir,
        config=config,
        weights=_weight_files(model_dir),
        tokenizer=_tokenizer_files(tokenizer_dir),
    )


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Arl2rtError(f"text encoder {path}: unreadable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise Arl2rtError(f"text encoder {path}: expected a JSON object, found {type(config).__name__}")
    found = config.get("model_type")
    if found != MODEL_TYPE:
        raise Arl2rtError(
            f"text encoder {path}: model_type {found!r}, expected {MODEL_TYPE!r} (Wan's text encoder is umT5; "
            "T5 and other models lay out their weights differently)"
        )
    if not isinstance(config.get("d_model"), int):
        raise Arl2rtError(f"text encoder {path}: no integer d_model (the embedding width)")
    return config


def _weight_files(model_dir: Path) -> tuple[Path, ...]:
    for name in WEIGHT_INDEXES:
        index = model_dir / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise Arl2rtError(f"text encoder {index}: not a weight index ({type(exc).__name__}: {exc})") from None
            missing = [s for s in shards if not (model_dir / s).is_file()]
            if missing:
                raise Arl2rtError(f"text encoder {index}: names weight shards that are missing: {missing}")
            return (index, *(model_dir / s for s in shards))
    for name in WEIGHT_SINGLES:
        if (model_dir / name).is_file():
            return (model_dir / name,)
    expected = ", ".join((*WEIGHT_SINGLES, *(f"{i} with its shards" for i in WEIGHT_INDEXES)))
    raise Arl2rtError(f"text encoder {model_dir}: no model weights (expected {expected})")


def _tokenizer_files(tokenizer_dir: Path) -> tuple[Path, ...]:
    vocabs = [tokenizer_dir / n for n in TOKENIZER_VOCABS if (tokenizer_dir / n).is_file()]
    if not vocabs:
        raise Arl2rtError(
            f"text encoder {tokenizer_dir}: no tokenizer (expected {' or '.join(TOKENIZER_VOCABS)}, as "
            "save_pretrained writes them beside the model, or in tokenizer/ of a Diffusers pipeline folder)"
        )
    extras = [tokenizer_dir / n for n in TOKENIZER_EXTRAS if (tokenizer_dir / n).is_file()]
    return (*vocabs, *extras)
