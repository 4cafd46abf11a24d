"""Checkpoint loading on synthetic checkpoints with the real upstream key names (docs/arl2.md §7), at tiny sizes.

The synthetic ARL2 checkpoint is built from a reference CausalDiT in upstream form: keys under ``model.`` with FSDP
wrapper names, random (trained-like) memory-path LoRA factors, and the FFN as ``LoRALinear``. Loaded models are
checked against upstream's UN-merged forward (``linear(x) + (x @ A) @ B * scale``), not against our merge formula.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from arl2rt.errors import Arl2rtError
from arl2rt.model import checkpoint as ckpt_mod
from arl2rt.model.checkpoint import ARL2_PARAMS, convert_checkpoint, load_checkpoint, save_checkpoint
from arl2rt.model.checkpoint_files import canonical_key
from arl2rt.model.config import PRESETS
from arl2rt.model.random import random_context, random_model

CFG = PRESETS["tiny"]  # dim 64, 4 heads, rank 4, alpha 8 -> scale 2; layers 0-2 hybrid, 3 softmax
FFN_LORA_LAYERS = (0, 1, 2, 3)  # upstream --ffn_lora_all_layers: the softmax layer's FFN has LoRA too


def _wrapped(key: str, i: int) -> str:
    """Upstream-style key: ``model.`` plus the wrapper names FSDP / checkpointing / compile insert (varied per key)."""
    if key.startswith("blocks."):
        _, layer, rest = key.split(".", 2)
        wrappers = ("_fsdp_wrapped_module.", "_fsdp_wrapped_module._checkpoint_wrapped_module.", "")[i % 3]
        return f"model._fsdp_wrapped_module.blocks.{layer}.{wrappers}{rest}"
    return ("_orig_mod.model.", "model.", "module.model.")[i % 3] + key


def _upstream(model, seed: int):
    """``model``'s weights in upstream ARL2 form with random LoRA factors; returns (state dict, factors)."""
    gen = torch.Generator().manual_seed(seed)
    r = CFG.lora_rank
    factors = {}
    sd = {key: value.clone() for key, value in model.state_dict().items()}
    for i in CFG.hybrid_layers:
        for n in "qkv":
            p = f"blocks.{i}.self_attn.lora_{n}"
            factors[f"{p}_A"] = torch.randn(CFG.dim, r, generator=gen) * 0.3
            factors[f"{p}_B"] = torch.randn(r, CFG.dim, generator=gen) * 0.3
    for i in FFN_LORA_LAYERS:
        for j, (fin, fout) in (("0", (CFG.dim, CFG.ffn_dim)), ("2", (CFG.ffn_dim, CFG.dim))):
            p = f"blocks.{i}.ffn.{j}"
            sd[f"{p}.linear.weight"], sd[f"{p}.linear.bias"] = sd.pop(f"{p}.weight"), sd.pop(f"{p}.bias")
            factors[f"{p}.lora_A"] = torch.randn(fin, r, generator=gen) * 0.3
            factors[f"{p}.lora_B"] = torch.randn(r, fout, generator=gen) * 0.3
    sd.update(factors)
    return {_wrapped(k, i): v for i, (k, v) in enumerate(sd.items())}, factors


@pytest.fixture(scope="module")
def reference():
    return random_model(CFG, seed=11)


@pytest.fixture(scope="module")
def upstream(reference):
    return _upstream(reference, seed=5)


@pytest.fixture
def arl2_pt(tmp_path, upstream):
    path = tmp_path / "model.pt"
    torch.save({"generator": upstream[0], "critic": {"x": torch.ones(2)}}, path)
    return path


def _step(model, seed: int = 1):
    """One clean (writing) step on fresh random inputs and states; returns velocity, new states, new K/V."""
    g = torch.Generator().manual_seed(seed)
    h, d = CFG.num_heads, CFG.head_dim
    x = torch.randn(1, CFG.in_channels, CFG.frames_per_block, CFG.latent_height, CFG.latent_width, generator=g)
    t = torch.full((1, CFG.frames_per_block), 625.0)
    states = {i: torch.randn(1, h, d, d, generator=g) * 0.1 for i in CFG.hybrid_layers}
    past = CFG.tokens_per_block
    past_kv = {i: (torch.randn(1, past, h, d, generator=g), torch.randn(1, past, h, d, generator=g)) for i in (3,)}
    with torch.no_grad():
        out = model.step(x, t, 3, model.encode_context(random_context(CFG, seed=2)), states, past_kv, write=True)
    return torch.cat([out.velocity.flatten(), *(s.flatten() for s in out.states.values()), out.keys[3].flatten()])


# --------------------------------------------------------------------------------------------- LoRA merge


def _linear64(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.weight.double(), layer.bias.double())


def _pair(factors: dict, a_key: str, b_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    return factors[a_key].double(), factors[b_key].double()


def _memory_projection(attn, n: str, x: torch.Tensor) -> torch.Tensor:
    """A loaded hybrid layer's memory-path projection (before the norm) in float64, as the model computes it."""
    a, b = getattr(attn, f"lora_{n}_A").double(), getattr(attn, f"lora_{n}_B").double()
    return _linear64(getattr(attn, n), x) + attn.lora_scale * ((x @ a) @ b)


def test_memory_projections_equal_upstream_unmerged_forward(arl2_pt, upstream, reference):
    model = load_checkpoint(arl2_pt, CFG)
    _, factors = upstream
    x = torch.randn(5, CFG.dim, dtype=torch.float64)
    s = CFG.lora_alpha / CFG.lora_rank
    for i in CFG.hybrid_layers:
        ref, got = reference.blocks[i].self_attn, model.blocks[i].self_attn
        for n in "qkv":
            p = f"blocks.{i}.self_attn.lora_{n}"
            a, b = _pair(factors, f"{p}_A", f"{p}_B")
            shared = getattr(ref, n)
            # upstream: q_raw + _lora_delta(x, A, B) = linear(x) + ((x @ A) @ B) * scale
            want = _linear64(shared, x) + (x @ a) @ b * s
            assert torch.allclose(_memory_projection(got, n, x), want, rtol=1e-5, atol=1e-5), f"layer {i} {n}"
            assert ((want - _linear64(shared, x)).abs().max()) > 0.1  # the LoRA delta is not negligible
            assert torch.equal(getattr(got, f"lora_{n}_A"), factors[f"{p}_A"])  # kept as factors, bit for bit
            assert torch.equal(getattr(got, f"lora_{n}_B"), factors[f"{p}_B"])
            assert torch.equal(getattr(got, n).weight, shared.weight)  # the shared projection is untouched
        for name in ("a_proj.weight", "A_log", "dt_bias", "phi_k.weight"):
            assert torch.equal(got.get_parameter(name), ref.get_parameter(name))


def test_merged_ffn_equals_upstream_lora_linear(arl2_pt, upstream, reference):
    model = load_checkpoint(arl2_pt, CFG)
    _, factors = upstream
    for i in FFN_LORA_LAYERS:
        for j in (0, 2):
            base, got = reference.blocks[i].ffn[j], model.blocks[i].ffn[j]
            a, b = _pair(factors, f"blocks.{i}.ffn.{j}.lora_A", f"blocks.{i}.ffn.{j}.lora_B")
            x = torch.randn(3, base.in_features, dtype=torch.float64)
            want = _linear64(base, x) + (x @ a) @ b * CFG.lora_scale
            assert torch.allclose(_linear64(got, x), want, rtol=1e-5, atol=1e-5), f"layer {i} ffn.{j}"
            merged = base.weight.double() + CFG.lora_scale * (a @ b).T
            assert torch.allclose(got.weight.double(), merged, rtol=1e-6, atol=1e-6)
            assert torch.equal(got.bias, base.bias)


def test_lora_changes_the_step_output(tmp_path, arl2_pt, upstream):
    with_lora = _step(load_checkpoint(arl2_pt, CFG))
    sd, factors = upstream
    # the same checkpoint with every LoRA B = 0 is the model without LoRA (upstream's init)
    no_lora = {k: (torch.zeros_like(v) if k.endswith(("_B", "lora_B")) else v) for k, v in sd.items()}
    torch.save({"generator": no_lora}, tmp_path / "no_lora.pt")
    plain = _step(load_checkpoint(tmp_path / "no_lora.pt", CFG))
    assert torch.isfinite(with_lora).all() and torch.isfinite(plain).all()
    assert (with_lora - plain).abs().max() > 1e-2


def test_hybrid_layer_without_gdn_lora_uses_the_shared_projections(tmp_path, upstream, reference):
    sd = {k: v for k, v in upstream[0].items() if not canonical_key(k).startswith("blocks.1.self_attn.lora_")}
    torch.save({"generator": sd}, tmp_path / "stage1.pt")  # upstream lora_rank = 0 for layer 1
    attn, x = load_checkpoint(tmp_path / "stage1.pt", CFG).blocks[1].self_attn, torch.randn(3, CFG.dim).double()
    for n in "qkv":
        assert torch.equal(_memory_projection(attn, n, x), _linear64(getattr(reference.blocks[1].self_attn, n), x))


def test_use_ema_picks_generator_ema(tmp_path, upstream):
    ema_model = random_model(CFG, seed=12)
    ema_sd, _ = _upstream(ema_model, seed=6)
    path = tmp_path / "both.pt"
    torch.save({"generator": upstream[0], "generator_ema": ema_sd}, path)
    plain, ema = load_checkpoint(path, CFG), load_checkpoint(path, CFG, use_ema=True)
    assert torch.equal(ema.blocks[3].self_attn.q.weight, ema_model.blocks[3].self_attn.q.weight)
    assert not torch.equal(plain.blocks[3].self_attn.q.weight, ema.blocks[3].self_attn.q.weight)
    torch.save({"generator": upstream[0]}, tmp_path / "plain.pt")
    with pytest.raises(Arl2rtError, match=r"plain\.pt: no 'generator_ema' entry .*'generator'"):
        load_checkpoint(tmp_path / "plain.pt", CFG, use_ema=True)


@pytest.mark.parametrize(
    "raw, key",
    [
        ("model._fsdp_wrapped_module.blocks.3._fsdp_wrapped_module.self_attn.q.weight", "blocks.3.self_attn.q.weight"),
        ("_orig_mod.model.blocks.0._checkpoint_wrapped_module.ffn.0.weight", "blocks.0.ffn.0.weight"),
        ("module.model.head.modulation", "head.modulation"),
        ("head.head.bias", "head.head.bias"),
    ],
)
def test_canonical_key_strips_wrappers_and_model_prefix(raw, key):
    assert canonical_key(raw) == key


# --------------------------------------------------------------------------------------------- our format


def test_round_trip_is_bit_exact_and_carries_the_config(tmp_path, arl2_pt):
    model = load_checkpoint(arl2_pt, CFG)
    path = save_checkpoint(model, tmp_path / "out" / "tiny.safetensors")
    again = load_checkpoint(path)  # no config given: it comes from the file
    assert again.cfg == CFG
    assert torch.equal(_step(model), _step(again))
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.safetensors"]  # no partial file left


def test_failed_save_keeps_the_existing_file(tmp_path, monkeypatch, reference):
    path = save_checkpoint(reference, tmp_path / "keep.safetensors")
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(reference, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.safetensors"]


def test_plain_safetensors_needs_a_config(tmp_path, reference):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    with pytest.raises(Arl2rtError, match=r"w\.safetensors: holds no arl2rt config; name one"):
        load_checkpoint(path)
    assert torch.equal(_step(load_checkpoint(path, CFG)), _step(reference))


# --------------------------------------------------------------------------------------------- Wan base weights


def _wan_base(model) -> dict[str, torch.Tensor]:
    """What a Wan / Causal Forcing base has: every parameter except ARL2's, no prefix."""
    arl2 = tuple(f"self_attn.{p}" for p in ARL2_PARAMS)
    return {k: v.clone().contiguous() for k, v in model.state_dict().items() if not k.endswith(arl2)}


def _write_sharded(folder, tensors: dict) -> None:
    keys = sorted(tensors)
    names = [f"diffusion_pytorch_model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    weight_map = {}
    for i, name in enumerate(names):
        part = keys[i::2]
        save_file({k: tensors[k] for k in part}, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))


def test_sharded_wan_base_plus_arl2_delta(tmp_path, reference, upstream, arl2_pt):
    _write_sharded(tmp_path, _wan_base(reference))
    # the delta holds only what ARL2 trained: gates, decay, phi maps, LoRA factors (FFN base weights come from Wan)
    sd, _ = upstream
    trained = ("a_proj", "b_proj", "gate_proj", "A_log", "dt_bias", "phi_", "lora_")
    delta = {k: v for k, v in sd.items() if any(t in k for t in trained)}
    torch.save({"generator": delta}, tmp_path / "arl2_delta.pt")
    model = load_checkpoint(tmp_path, CFG, delta=tmp_path / "arl2_delta.pt")  # the directory finds the index
    assert torch.equal(_step(model), _step(load_checkpoint(arl2_pt, CFG)))


def test_sharded_wan_base_into_a_softmax_only_config(tmp_path, reference):
    cfg = dataclasses.replace(CFG, hybrid_layers=())
    softmax_model = random_model(cfg, seed=4)
    _write_sharded(tmp_path, _wan_base(softmax_model))
    model = load_checkpoint(tmp_path / "diffusion_pytorch_model.safetensors.index.json", cfg)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), softmax_model.state_dict().values()))


def test_missing_shard_is_named(tmp_path, reference):
    _write_sharded(tmp_path, _wan_base(reference))
    (tmp_path / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(Arl2rtError, match=r"1 shard not found \(diffusion_pytorch_model-00002-of-00002"):
        load_checkpoint(tmp_path, CFG)


def test_base_checkpoint_refused_unless_random_arl2_opted_in(tmp_path, reference):
    torch.save({"generator": {f"model.{k}": v for k, v in _wan_base(reference).items()}}, tmp_path / "cf.pt")
    with pytest.raises(Arl2rtError) as err:
        load_checkpoint(tmp_path / "cf.pt", CFG)
    msg = str(err.value)
    assert "cf.pt: hybrid layers [0-2] have no ARL2 parameters" in msg and "base Wan / Causal Forcing" in msg
    assert "--delta" in msg and "--allow-random-arl2" in msg and "missing" not in msg
    first, second = (load_checkpoint(tmp_path / "cf.pt", CFG, allow_random_arl2=True) for _ in range(2))
    attn, x = first.blocks[1].self_attn, torch.randn(3, CFG.dim, dtype=torch.float64)
    for n in "qkv":  # LoRA B = 0 at upstream's init: the memory path uses the shared projection
        assert torch.equal(_memory_projection(attn, n, x), _linear64(getattr(reference.blocks[1].self_attn, n), x))
    assert torch.equal(attn.phi_q.weight.view(-1, CFG.head_dim)[: CFG.head_dim], torch.eye(CFG.head_dim))
    assert torch.equal(_step(first), _step(second))  # seeded: two loads agree


# --------------------------------------------------------------------------------------------- bad input


def test_every_problem_listed_in_one_error(tmp_path, upstream):
    sd = dict(upstream[0])
    raw = {canonical_key(k): k for k in sd}
    del sd[raw["blocks.2.self_attn.a_proj.weight"]]
    sd[raw["blocks.0.self_attn.q.weight"]] = torch.randn(CFG.dim, 32)
    sd[raw["blocks.1.self_attn.lora_k_A"]] = torch.randn(CFG.dim, 3)  # rank 3 where the config says 4
    sd["model.blocks.0.self_attn.extra.weight"] = torch.randn(2)
    torch.save({"generator": sd}, tmp_path / "x.pt")
    with pytest.raises(Arl2rtError) as err:
        load_checkpoint(tmp_path / "x.pt", CFG)
    msg = str(err.value)
    assert "x.pt: 1 missing key (blocks.2.self_attn.a_proj.weight)" in msg
    assert "1 unexpected key (blocks.0.self_attn.extra.weight)" in msg
    assert "2 shape mismatches (" in msg
    assert "blocks.0.self_attn.q.weight: expected [64, 64], found [64, 32]" in msg
    assert "blocks.1.self_attn.lora_k_A: expected [64, 4], found [64, 3]" in msg


def test_partial_lora_pair_is_a_missing_key(tmp_path, upstream):
    drop = ("blocks.0.self_attn.lora_v_B", "blocks.0.ffn.2.lora_A")
    sd = {k: v for k, v in upstream[0].items() if canonical_key(k) not in drop}
    torch.save({"generator": sd}, tmp_path / "p.pt")
    with pytest.raises(
        Arl2rtError, match=r": 2 missing keys \(blocks\.0\.ffn\.2\.lora_A, blocks\.0\.self_attn\.lora_v_B\)$"
    ):
        load_checkpoint(tmp_path / "p.pt", CFG)


_RAN = []


def _side_effect():
    _RAN.append(True)
    return {}


class _Payload:
    def __reduce__(self):
        return (_side_effect, ())


def test_pickled_objects_are_refused_without_running_them(tmp_path, upstream):
    path = tmp_path / "evil.pt"
    torch.save({"generator": upstream[0], "args": _Payload()}, path)
    with pytest.raises(
        Arl2rtError, match=r"evil\.pt: refused: it pickles a Python object .*_side_effect.*weights_only"
    ):
        load_checkpoint(path, CFG)
    assert _RAN == []


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(Arl2rtError, match=r"junk\.pt: cannot be read by torch\.load\(weights_only=True\)"):
        load_checkpoint(tmp_path / "junk.pt", CFG)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(Arl2rtError, match=r"junk\.safetensors: not a readable safetensors file"):
        load_checkpoint(tmp_path / "junk.safetensors", CFG)
    with pytest.raises(Arl2rtError, match=r"w\.ckpt: unknown file type; expected \.pt, \.pth"):
        (tmp_path / "w.ckpt").write_bytes(b"")
        load_checkpoint(tmp_path / "w.ckpt", CFG)
    with pytest.raises(Arl2rtError, match=r"nope\.pt: no such file"):
        load_checkpoint(tmp_path / "nope.pt", CFG)


def test_diffusers_layout_is_named(tmp_path):
    save_file({"blocks.0.attn1.to_q.weight": torch.randn(4, 4)}, str(tmp_path / "d.safetensors"))
    with pytest.raises(Arl2rtError, match=r"diffusers-format Wan keys .*expected the original Wan2\.1 layout"):
        load_checkpoint(tmp_path / "d.safetensors", CFG)


def test_conversion_reports_what_it_merged(arl2_pt):
    converted = convert_checkpoint(arl2_pt, CFG)
    assert converted.merged == [f"blocks.{i}.ffn.{j}.weight" for i in FFN_LORA_LAYERS for j in (0, 2)]
    assert converted.random_arl2_layers == ()
