"""UMT5TextEncoder against Wan's recipe computed straight on transformers; its refusals and folder errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")
pytest.importorskip("ftfy")

from wan_reference import wan_clean, wan_context  # noqa: E402

from arl2rt.errors import Arl2rtError  # noqa: E402
from arl2rt.model.text import UMT5TextEncoder, clean_prompt, find_encoder_files  # noqa: E402

PROMPTS = ["a red fox", "  the camera   pans over\n a quiet city &amp; night  ", "rain"]
LONG = " ".join(["waves crash on the rocky shore"] * 8)  # well over 32 tokens


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_context_is_wan_cut_and_pad(umt5_dir, text_cfg, dtype):
    enc = UMT5TextEncoder.from_dir(umt5_dir, text_cfg, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no prompt here is long: nothing may warn
        ours = enc.encode(PROMPTS)
    want, lens, raw = wan_context(umt5_dir, PROMPTS, text_cfg.text_len, getattr(torch, dtype))
    assert ours.shape == (3, text_cfg.text_len, text_cfg.text_dim) and ours.dtype == torch.float32
    assert len(set(lens)) == 3 and max(lens) < text_cfg.text_len  # distinct true lengths, all padded
    for b, n in enumerate(lens):
        assert torch.equal(ours[b, :n], want[b, :n])
        assert torch.count_nonzero(ours[b, n:]) == 0
        assert torch.count_nonzero(raw[b, n:]) > 0  # the encoder's pad rows are not zeros: the cut matters
    assert torch.equal(enc.encode(PROMPTS, dtype=torch.bfloat16), want.to(torch.bfloat16))


def test_long_prompt_warns_once_and_truncates(umt5_dir, text_cfg):
    enc = UMT5TextEncoder.from_dir(umt5_dir, text_cfg, dtype="float32")
    (count,) = enc.token_counts([wan_clean(LONG)])
    assert count > text_cfg.text_len
    with pytest.warns(UserWarning) as caught:
        ours = enc.encode([LONG, "a red fox"])
    assert len(caught) == 1
    assert f"has {count} tokens, more than text_len {text_cfg.text_len}" in str(caught[0].message)
    want, lens, _ = wan_context(umt5_dir, [LONG, "a red fox"], text_cfg.text_len)
    assert lens[0] == text_cfg.text_len and torch.equal(ours, want)


@pytest.mark.parametrize("dtype", ["float16", torch.float16])
def test_float16_refused(umt5_dir, text_cfg, dtype):
    with pytest.raises(Arl2rtError, match="float16.*use bfloat16 or float32"):
        UMT5TextEncoder.from_dir(umt5_dir, text_cfg, dtype=dtype)


def test_text_dim_must_match_config(umt5_dir, text_cfg):
    cfg = dataclasses.replace(text_cfg, text_dim=64, name="wide")
    with pytest.raises(Arl2rtError, match=r"gives 32-dim embeddings; config wide expects 64"):
        UMT5TextEncoder.from_dir(umt5_dir, cfg)


def test_diffusers_layout_loads_the_same(umt5_dir, text_cfg, tmp_path):
    root = tmp_path / "Wan2.1-Diffusers"
    (root / "text_encoder").mkdir(parents=True)
    (root / "tokenizer").mkdir()
    for f in umt5_dir.iterdir():
        shutil.copy(f, root / ("tokenizer" if f.name.startswith("tokenizer") else "text_encoder") / f.name)
    (root / "model_index.json").write_text("{}")
    files = find_encoder_files(root)
    assert (files.model_dir.name, files.tokenizer_dir.name) == ("text_encoder", "tokenizer")
    a = UMT5TextEncoder.from_dir(root, text_cfg, dtype="float32").encode(PROMPTS)
    b = UMT5TextEncoder.from_dir(umt5_dir, text_cfg, dtype="float32").encode(PROMPTS)
    assert torch.equal(a, b)


def _copy_without(src, dst, drop):
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in drop:
            shutil.copy(f, dst / f.name)
    return dst


def test_folder_errors_name_the_folder_and_the_missing_piece(umt5_dir, text_cfg, tmp_path):
    no_tok = _copy_without(umt5_dir, tmp_path / "no-tok", {"tokenizer.json", "tokenizer_config.json"})
    with pytest.raises(Arl2rtError, match=rf"{no_tok}: no tokenizer \(expected tokenizer.json or spiece.model"):
        UMT5TextEncoder.from_dir(no_tok, text_cfg)
    no_weights = _copy_without(umt5_dir, tmp_path / "no-weights", {"model.safetensors"})
    with pytest.raises(Arl2rtError, match=rf"{no_weights}: no model weights \(expected model.safetensors"):
        UMT5TextEncoder.from_dir(no_weights, text_cfg)
    t5 = _copy_without(umt5_dir, tmp_path / "t5", set())
    config = json.loads((t5 / "config.json").read_text())
    (t5 / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(Arl2rtError, match=rf"{t5}/config.json: model_type 't5', expected 'umt5'"):
        UMT5TextEncoder.from_dir(t5, text_cfg)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Arl2rtError, match=rf"{empty}: no config.json"):
        UMT5TextEncoder.from_dir(empty, text_cfg)
    with pytest.raises(Arl2rtError, match="no such folder"):
        UMT5TextEncoder.from_dir(tmp_path / "absent", text_cfg)


def test_weights_without_encoder_parameters_are_refused(umt5_dir, text_cfg, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = _copy_without(umt5_dir, tmp_path / "broken", {"model.safetensors"})
    weights = load_file(str(umt5_dir / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if ".block.1." not in k}, str(broken / "model.safetensors"))
    with pytest.raises(Arl2rtError, match=r"broken: the weights lack encoder parameters: encoder\.block\.1\."):
        UMT5TextEncoder.from_dir(broken, text_cfg)


@pytest.mark.parametrize(
    "text",
    [
        "  a   red\tfox \n\n runs  ",
        "Tom &amp;amp; Jerry &lt;3",
        "“curly” quotes ‘here’ and ﬁne ligatures",
        "色调艳丽，过曝，静态，细节模糊不清，字幕",  # Wan's negative prompt: full-width commas
        "mojibake: cafÃ©",
        "",
    ],
)
def test_clean_is_wans(text):
    assert clean_prompt(text) == wan_clean(text)


def test_clean_fixes_text_as_ftfy_does():
    assert clean_prompt("  “a  cafÃ©” &amp;amp;\n night ") == '"a café" & night'
