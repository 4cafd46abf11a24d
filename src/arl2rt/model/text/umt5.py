"""umT5 prompt encoder, run as Wan2.1 runs it (``wan/modules/t5.py`` ``T5EncoderModel``, ``wan/modules/model.py``).

Per batch of prompts: clean each (:func:`~arl2rt.model.text.clean.clean_prompt`), tokenize with ``</s>`` appended,
padded and truncated to ``text_len`` (512 for Wan), run the encoder with the attention mask, keep each prompt's rows
up to its true token count and zero the rest: the DiT's cross-attention sees all ``text_len`` rows, so the padding
rows must be exact zeros, not whatever the encoder computed for pad tokens. A prompt longer than ``text_len`` tokens
is truncated, as Wan does, but with a warning naming its token count (Wan is silent).

Precision: bfloat16 (Wan's) or float32. float16 is refused: umT5's activations overflow it and the embeddings come
out NaN or zero.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from arl2rt.errors import Arl2rtError
from arl2rt.model.config import ModelConfig
from arl2rt.model.text.clean import clean_prompt
from arl2rt.model.text.deps import require
from arl2rt.model.text.folder import EncoderFiles, find_encoder_files

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
# Tied to ``shared.weight`` by UMT5's definition; checkpoints may leave it out.
_TIED_KEYS = {"encoder.embed_tokens.weight"}


class EncodedPrompt(NamedTuple):
    """One prompt's encoder output: its true-length rows ``[n, text_dim]`` and its token count before truncation."""

    rows: torch.Tensor
    tokens: int


def encoder_dtype(dtype: str | torch.dtype) -> str:
    """The canonical name of a precision the encoder may run in; float16 and unknown names are Arl2rtErrors."""
    name = str(dtype).removeprefix("torch.")
    if name in ("float16", "half"):
        raise Arl2rtError(
            "text encoder dtype float16: umT5 overflows in float16 (NaN or zero embeddings); use bfloat16 or float32"
        )
    if name not in DTYPES:
        raise Arl2rtError(f"text encoder dtype {name!r}: expected one of {list(DTYPES)}")
    return name


def check_text_dim(files: EncoderFiles, cfg: ModelConfig) -> None:
    if files.text_dim != cfg.text_dim:
        raise Arl2rtError(
            f"text encoder in {files.root} gives {files.text_dim}-dim embeddings; config {cfg.name} expects "
            f"{cfg.text_dim}"
        )


def truncation_warning(prompt: str, tokens: int, text_len: int) -> None:
    preview = prompt if len(prompt) <= 60 else prompt[:57] + "..."
    warnings.warn(
        f"prompt {preview!r} has {tokens} tokens, more than text_len {text_len}: truncated to {text_len} tokens",
        UserWarning,
        stacklevel=3,
    )


def pad_to_text_len(rows: Sequence[torch.Tensor], text_len: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Wan's zero-pad: ``[B, text_len, text_dim]`` with each prompt's rows first and exact zeros after them."""
    out = torch.zeros(len(rows), text_len, rows[0].shape[-1], dtype=dtype)
    for b, r in enumerate(rows):
        out[b, : r.shape[0]] = r.to(dtype)
    return out


class UMT5TextEncoder:
    """A loaded umT5 encoder and its tokenizer, for one ``text_len``; :meth:`from_dir` builds it from local files."""

    def __init__(self, files: EncoderFiles, tokenizer, model: torch.nn.Module, text_len: int) -> None:
        self.files, self.tokenizer, self.model, self.text_len = files, tokenizer, model, text_len

    @property
    def text_dim(self) -> int:
        return self.files.text_dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        cfg: ModelConfig,
        *,
        dtype: str | torch.dtype = "bfloat16",
        device: str | torch.device = "cpu",
    ) -> UMT5TextEncoder:
        """Load the encoder in ``path`` (see :mod:`~arl2rt.model.text.folder`) from local files only, never a hub.

        ``cfg`` is the DiT's config: its ``text_len`` is the padded length and its ``text_dim`` must be the encoder's
        width (checked from config.json, before the weights load).
        """
        name = encoder_dtype(dtype)
        files = find_encoder_files(path)
        check_text_dim(files, cfg)
        transformers = require("transformers")
        tokenizer = _load_tokenizer(transformers, files)
        try:
            model, info = transformers.UMT5EncoderModel.from_pretrained(
                str(files.model_dir), dtype=DTYPES[name], local_files_only=True, output_loading_info=True
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise Arl2rtError(
                f"text encoder {files.model_dir}: weights do not load ({type(exc).__name__}: {exc})"
            ) from None
        missing = sorted(set(info["missing_keys"]) - _TIED_KEYS)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise Arl2rtError(f"text encoder {files.model_dir}: the weights lack encoder parameters: {shown}")
        model = model.eval().requires_grad_(False).to(torch.device(device))
        return cls(files, tokenizer, model, cfg.text_len)

    def token_counts(self, cleaned: Sequence[str]) -> list[int]:
        """Tokens of each cleaned prompt with ``</s>``, before truncation."""
        ids = self.tokenizer(list(cleaned), add_special_tokens=True, verbose=False)["input_ids"]
        return [len(i) for i in ids]

    def encode_rows(self, prompts: str | Sequence[str]) -> list[EncodedPrompt]:
        """Each prompt's true-length encoder rows (in the encoder's dtype, on the CPU) and its untruncated length."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise Arl2rtError("text encoder: no prompts given")
        cleaned = [clean_prompt(p) for p in prompts]
        counts = self.token_counts(cleaned)
        for prompt, n in zip(prompts, counts):
            if n > self.text_len:
                truncation_warning(prompt, n, self.text_len)
        batch = self.tokenizer(
            cleaned,
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        lengths = mask.gt(0).sum(dim=1).tolist()
        return [EncodedPrompt(hidden[b, :n].cpu().clone(), counts[b]) for b, n in enumerate(lengths)]

    def encode(self, prompts: str | Sequence[str], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[B, text_len, text_dim]`` DiT context: Wan's cut to the true length, then zero-pad to ``text_len``."""
        return pad_to_text_len([e.rows for e in self.encode_rows(prompts)], self.text_len, dtype)


def _load_tokenizer(transformers, files: EncoderFiles):
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(files.tokenizer_dir), local_files_only=True)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        raise Arl2rtError(
            f"text encoder {files.tokenizer_dir}: tokenizer does not load ({type(exc).__name__}: {exc})"
        ) from None
    if files.vocab_size and len(tokenizer) > files.vocab_size:
        raise Arl2rtError(
            f"text encoder {files.tokenizer_dir}: tokenizer has {len(tokenizer)} tokens, more than the encoder's "
            f"vocab_size {files.vocab_size} (a tokenizer of another model?)"
        )
    return tokenizer
