"""Wan's prompt clean (its tokenizer wrapper, ``clean='whitespace'``), applied before tokenizing.

Same steps in the same order: ``ftfy.fix_text`` (mojibake, curly quotes, full-width forms, control characters, NFC),
HTML entities unescaped twice, stripped, every run of whitespace made one space (``regex``'s Unicode ``\\s``, as
Wan's), stripped again.
"""

from __future__ import annotations

import html

from arl2rt.model.text.deps import require

# Part of every cache key: change it when the steps above change.
CLEAN_RULE = "wan-whitespace-1"


def clean_prompt(text: str) -> str:
    ftfy, regex = require("ftfy"), require("regex")
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip()
