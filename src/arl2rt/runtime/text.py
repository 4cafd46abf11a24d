"""The text context of a new stream: words of a vocabulary, precomputed embeddings, or random embeddings.

* ``--prompt "two red balls and one blue ball"``: words of the embedded model's vocabulary (also for a package exported
  from it);
* ``--context FILE.safetensors``: precomputed text embeddings under the key ``context``, float ``[B, text_len,
  text_dim]``. For Wan2.1 these are umT5-XXL encoder outputs, ``[1, 512, 4096]``: the last hidden state of the prompt's
  real tokens, zero-padded to 512 rows, as Wan's own pipeline (and diffusers' ``WanPipeline``) make them::

      from transformers import AutoTokenizer, UMT5EncoderModel
      from safetensors.torch import save_file
      repo = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
      tok = AutoTokenizer.from_pretrained(repo, subfolder="tokenizer")
      enc = UMT5EncoderModel.from_pretrained(repo, subfolder="text_encoder").eval()
      t = tok([prompt], padding="max_length", max_length=512, truncation=True, add_special_tokens=True,
              return_attention_mask=True, return_tensors="pt")
      h = enc(t.input_ids, t.attention_mask).last_hidden_state   # [1, 512, 4096]
      h = h * t.attention_mask[..., None]                        # rows past the prompt are zeros
      save_file({"context": h.float().contiguous()}, "prompt.safetensors")

* neither: the embedded model's default prompt, or random embeddings (seeded by ``--seed``) for random weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from arl2rt.errors import Arl2rtError
from arl2rt.model.config import ModelConfig
from arl2rt.model.random import random_context
from arl2rt.runtime import sources

CONTEXT_KEY = "context"


def load_context(path: Path, cfg: ModelConfig) -> torch.Tensor:
    """Text embeddings ``[B, text_len, text_dim]`` from a safetensors file (key ``context``), every value finite."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise Arl2rtError(f"--context {path}: cannot read safetensors ({exc})") from None
    if CONTEXT_KEY not in tensors:
        raise Arl2rtError(f"--context {path}: expected a tensor named {CONTEXT_KEY!r}, found {sorted(tensors)}")
    ctx = tensors[CONTEXT_KEY]
    want = ["B", cfg.text_len, cfg.text_dim]
    if ctx.dim() != 3 or list(ctx.shape[1:]) != want[1:] or ctx.shape[0] < 1 or not ctx.is_floating_point():
        raise Arl2rtError(
            f"--context {path}: tensor {CONTEXT_KEY!r}: expected float {want} (model {cfg.name}), "
            f"found {str(ctx.dtype).removeprefix('torch.')} {list(ctx.shape)}"
        )
    finite = torch.isfinite(ctx)
    if not bool(finite.all()):
        nan = int(torch.isnan(ctx).sum())
        raise Arl2rtError(
            f"--context {path}: tensor {CONTEXT_KEY!r}: expected finite values, found {nan} NaN and "
            f"{int((~finite).sum()) - nan} infinite of {ctx.numel()}"
        )
    return ctx.float()


def _vocab_encoder(cfg: ModelConfig):
    """The embedded model's prompt encoder for a model made from it (same vocabulary), else None."""
    try:
        candidate = sources.embedded_model()  # through the module: tests stand a small model in for it
    except Arl2rtError:
        return None
    return candidate if tuple(candidate.vocab) == tuple(cfg.vocab) else None


def resolve_context(
    loaded: sources.LoadedModel,
    seed: int,
    *,
    prompt: str | None = None,
    context: Path | None = None,
    text_encoder: Path | None = None,
) -> tuple[torch.Tensor, str]:
    """Text context of a new stream (from ``prompt`` — through ``text_encoder``, a local umT5 folder, when given — or a
    ``context`` file, else a default) and where it came from."""
    if prompt is not None and context is not None:
        raise Arl2rtError("--prompt and --context exclude each other")
    if text_encoder is not None:
        if prompt is None:
            raise Arl2rtError(f"--text-encoder {text_encoder}: expected --prompt, the text it encodes")
        from arl2rt.model.text import encode_prompts  # transformers loads only on a cache miss

        return encode_prompts([prompt], Path(text_encoder), loaded.cfg), f"prompt {prompt!r} (umT5 {text_encoder})"
    if context is not None:
        return load_context(Path(context), loaded.cfg), f"context {context}"
    embedded = loaded.embedded
    if embedded is None and loaded.cfg.vocab and (prompt is not None or loaded.source["kind"] != "random"):
        embedded = _vocab_encoder(loaded.cfg)
    if prompt is not None:
        if embedded is None:
            raise Arl2rtError(
                f"--prompt: model {loaded.cfg.name} has no word vocabulary (it takes text embeddings); "
                "pass --text-encoder DIR (a local umT5 folder) or --context FILE.safetensors"
            )
        return embedded.encode_prompt(prompt), f"prompt {prompt!r}"
    if embedded is not None:
        return embedded.encode_prompt(embedded.default_prompt), f"prompt {embedded.default_prompt!r}"
    if loaded.source["kind"] == "random":
        return random_context(loaded.cfg, seed), f"random text embeddings (seed {seed})"
    # no word vocabulary reached this far (else its default prompt would serve), so --prompt is no way out
    raise Arl2rtError(
        f"model {loaded.description} needs text: pass --context FILE.safetensors, embeddings "
        f"[B, {loaded.cfg.text_len}, {loaded.cfg.text_dim}] (it has no word vocabulary for --prompt)"
    )
