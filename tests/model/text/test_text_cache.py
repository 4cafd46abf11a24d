"""encode_prompts: cached per prompt, the encoder loaded only on a miss, corrupt entries recomputed, never trusted."""

from __future__ import annotations

import dataclasses
import os
import warnings

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")
pytest.importorskip("ftfy")

from arl2rt.errors import Arl2rtError  # noqa: E402
from arl2rt.model.text import UMT5TextEncoder, encode_prompts  # noqa: E402

PROMPTS = ["a red fox", "the camera pans over a quiet city", "a red fox"]
LONG = " ".join(["waves crash on the rocky shore"] * 8)


@pytest.fixture
def count_loads(monkeypatch):
    """Counts UMT5TextEncoder.from_dir calls; ``count_loads.forbid()`` makes any further load fail the test."""
    real = UMT5TextEncoder.from_dir.__func__
    state = {"n": 0, "forbidden": False}

    def spy(cls, *args, **kwargs):
        assert not state["forbidden"], "the encoder was loaded on a cache hit"
        state["n"] += 1
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(UMT5TextEncoder, "from_dir", classmethod(spy))

    class Loads:
        @property
        def n(self):
            return state["n"]

        def forbid(self):
            state["forbidden"] = True

    return Loads()


def _entries(cache):
    return sorted(cache.glob("*.safetensors"))


def test_second_run_hits_without_loading_the_encoder(umt5_dir, text_cfg, tmp_path, count_loads):
    cache = tmp_path / "cache"
    first = encode_prompts(PROMPTS, umt5_dir, text_cfg, cache, dtype="float32")
    assert count_loads.n == 1 and len(_entries(cache)) == 2  # the repeated prompt is one entry
    direct = UMT5TextEncoder.from_dir(umt5_dir, text_cfg, dtype="float32").encode(PROMPTS)
    assert torch.equal(first, direct)
    count_loads.forbid()
    second = encode_prompts(PROMPTS, umt5_dir, text_cfg, cache, dtype="float32")
    assert torch.equal(second, first) and second.shape == (3, text_cfg.text_len, text_cfg.text_dim)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".safetensors")] == []  # no temporary left


def test_key_covers_dtype_text_len_and_encoder_files(umt5_dir, text_cfg, tmp_path, count_loads):
    cache = tmp_path / "cache"
    encode_prompts(["a red fox"], umt5_dir, text_cfg, cache, dtype="float32")
    bf16 = encode_prompts(["a red fox"], umt5_dir, text_cfg, cache, dtype="bfloat16")
    assert bf16.dtype == torch.float32
    shorter = dataclasses.replace(text_cfg, text_len=8)
    assert encode_prompts(["a red fox"], umt5_dir, shorter, cache, dtype="float32").shape[1] == 8
    weights = umt5_dir / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a re-downloaded file
    try:
        encode_prompts(["a red fox"], umt5_dir, text_cfg, cache, dtype="float32")
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert count_loads.n == 4 and len(_entries(cache)) == 4


@pytest.mark.parametrize(
    ("damage", "reason"), [("flip", "checksum mismatch"), ("truncate", "unreadable"), ("garbage", "unreadable")]
)
def test_corrupt_entry_is_recomputed(umt5_dir, text_cfg, tmp_path, count_loads, damage, reason):
    cache = tmp_path / "cache"
    good = encode_prompts(["a red fox"], umt5_dir, text_cfg, cache, dtype="float32")
    (entry,) = _entries(cache)
    data = bytearray(entry.read_bytes())
    if damage == "flip":
        data[-3] ^= 0x40  # inside the tensor bytes: the file still parses, only the checksum can tell
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"not a safetensors file")
    entry.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=f"corrupt \\({reason}.*recomputing"):
        again = encode_prompts(["a red fox"], umt5_dir, text_cfg, cache, dtype="float32")
    assert torch.equal(again, good) and count_loads.n == 2
    count_loads.forbid()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten entry is whole again
        assert torch.equal(encode_prompts(["a red fox"], umt5_dir, text_cfg, cache, dtype="float32"), good)


def test_long_prompt_warns_once_on_miss_and_on_hit(umt5_dir, text_cfg, tmp_path, count_loads):
    cache = tmp_path / "cache"
    for _ in range(2):
        with pytest.warns(UserWarning, match=f"more than text_len {text_cfg.text_len}") as caught:
            out = encode_prompts([LONG], umt5_dir, text_cfg, cache, dtype="float32")
        assert len(caught) == 1 and torch.count_nonzero(out[0, -1]) > 0  # all text_len rows are the prompt's
        count_loads.forbid()


def test_float16_and_wrong_width_refused_before_any_lookup(umt5_dir, text_cfg, tmp_path, count_loads):
    with pytest.raises(Arl2rtError, match="float16"):
        encode_prompts(["a red fox"], umt5_dir, text_cfg, tmp_path, dtype=torch.float16)
    wide = dataclasses.replace(text_cfg, text_dim=4096, name="wan")
    with pytest.raises(Arl2rtError, match="gives 32-dim embeddings; config wan expects 4096"):
        encode_prompts(["a red fox"], umt5_dir, wide, tmp_path)
    assert count_loads.n == 0


def test_default_cache_dir_follows_xdg(umt5_dir, text_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    encode_prompts(["rain"], umt5_dir, text_cfg, dtype="float32")
    assert len(_entries(tmp_path / "xdg" / "arl2rt" / "text")) == 1


def test_one_string_is_one_prompt_and_none_is_an_error(umt5_dir, text_cfg, tmp_path):
    one = encode_prompts("a red fox", umt5_dir, text_cfg, tmp_path, dtype="float32")
    assert one.shape == (1, text_cfg.text_len, text_cfg.text_dim)
    with pytest.raises(Arl2rtError, match="no prompts"):
        encode_prompts([], umt5_dir, text_cfg, tmp_path)


def test_unwritable_cache_warns_and_still_encodes(umt5_dir, text_cfg, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="not written"):
        out = encode_prompts(["rain"], umt5_dir, text_cfg, blocker / "cache", dtype="float32")
    assert out.shape == (1, text_cfg.text_len, text_cfg.text_dim)
