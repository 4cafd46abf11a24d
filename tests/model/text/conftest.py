"""A tiny umT5 encoder folder, as save_pretrained writes one: random UMT5Config weights (d_model 32, the tiny preset's
text_dim) and a sentencepiece tokenizer trained here on a few sentences, so nothing is downloaded."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
import torch

from arl2rt.model.config import PRESETS, ModelConfig

SENTENCES = [
    "a red fox runs through the snowy forest",
    "the camera pans over a quiet city at night",
    "waves crash on the rocky shore under a grey sky",
    "a cat sleeps on a warm windowsill in the sun",
    "two people walk along a beach at sunset",
    "rain falls on a busy street with colourful umbrellas",
]


def build_encoder_dir(path: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    spm = pytest.importorskip("sentencepiece")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 20),
        model_writer=buf,
        vocab_size=60,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,  # T5's layout: <pad> 0, </s> 1, <unk> 2, no <s>
        character_coverage=1.0,
        minloglevel=2,
    )
    raw = path.parent / f"{path.name}-spm"
    raw.mkdir(parents=True)
    (raw / "spiece.model").write_bytes(buf.getvalue())
    tokenizer = transformers.T5Tokenizer.from_pretrained(str(raw), extra_ids=0)
    tokenizer.save_pretrained(str(path))
    config = transformers.UMT5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
    )
    torch.manual_seed(0)
    transformers.UMT5EncoderModel(config).save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def umt5_dir(tmp_path_factory) -> Path:
    return build_encoder_dir(tmp_path_factory.mktemp("umt5") / "encoder")


@pytest.fixture
def text_cfg() -> ModelConfig:
    return dataclasses.replace(PRESETS["tiny"], text_len=32)
