"""Wan2.1's text path written out independently of arl2rt, straight on transformers: the expected values."""

from __future__ import annotations

import html

import ftfy
import regex
import torch
from transformers import AutoTokenizer, UMT5EncoderModel


def wan_clean(text: str) -> str:
    # wan/modules/tokenizers.py: whitespace_clean(basic_clean(text))
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip()


def wan_context(folder, prompts, text_len, dtype=torch.float32):
    """[B, text_len, d_model] float32 and each prompt's true length, plus the raw (unmasked) encoder output."""
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = UMT5EncoderModel.from_pretrained(str(folder), dtype=dtype, local_files_only=True).eval()
    t = tok(
        [wan_clean(p) for p in prompts],
        padding="max_length",
        max_length=text_len,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        raw = model(t.input_ids, t.attention_mask).last_hidden_state
    lens = t.attention_mask.gt(0).sum(dim=1).tolist()
    out = torch.stack([torch.cat([u[:n], u.new_zeros(text_len - n, u.shape[1])]) for u, n in zip(raw, lens)])
    return out.float(), lens, raw
