"""The StateSpec is the one place tensor names are spelled: its helpers, and no module re-spelling a name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import arl2rt
from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import (
    DECODE_GRAPHS,
    FRAME_OFFSET,
    GRAPHS,
    PAST_KV,
    PAST_STATE,
    PAST_VAE,
    PRESENT_KV,
    PRESENT_STATE,
    PRESENT_VAE,
    StateSpec,
    kind_of,
)
from arl2rt.model.vae.caches import cache_bytes, cache_specs
from micro_configs import micro_config
from micro_vae_packages import VAE

MICRO = micro_config("state-spec-micro")  # layer 0 hybrid, layer 1 softmax


def test_names_and_their_inverses():
    spec = StateSpec(MICRO)
    assert spec.name(PAST_STATE, 0) == "past_state.0" and spec.name(FRAME_OFFSET) == "frame_offset"
    assert spec.names(PAST_KV, 1) == ("past_key.1", "past_value.1")
    for present, past in (("present_state.0", "past_state.0"), ("present_key.1", "past_key.1")):
        assert spec.past_of(present) == past and spec.present_of(past) == present
    assert [s.name for s in spec.of_kind(PRESENT_STATE, *PRESENT_KV)] == [s.name for s in spec.commit_outputs()]
    assert kind_of("present_state.0") == PRESENT_STATE and kind_of("velocity") == "velocity"
    assert spec.tensor("past_value.1").layer == 1


def test_helpers_name_what_is_wrong():
    spec = StateSpec(MICRO)
    with pytest.raises(Arl2rtError, match="tensor 'past_state.1': not in the state contract"):
        spec.tensor("past_state.1")  # layer 1 is a softmax layer
    with pytest.raises(Arl2rtError, match="tensor past_state.0: expected a commit output"):
        spec.past_of("past_state.0")
    with pytest.raises(Arl2rtError, match="tensor velocity: expected a past state or past K/V"):
        spec.present_of("velocity")


# A state tensor's name (or the prefix of one) in a string: "past_state.", f"present_{kv}.", "context_key",
# "past_vae.", "vae_latents", "first_frames", ...
_SPELLED = re.compile(
    r"\b(?:past|present|context)_(?:state|key|value|vae|\{|$)|\bframe_offset\b|\bvae_latents\b|\bfirst_frames\b"
)
_SRC = Path(arl2rt.__file__).parent
# the GDN plugin's own port names (past_state/present_state of one op), a layer below the state contract
_ALLOWED = ("export/state_spec.py", "plugins/")


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant of a module that is not a docstring (f-strings included, by their literal parts)."""
    skip = {  # docstrings, and the literal parts of f-strings (read below as a whole)
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    skip |= {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):  # f"past_{kv}.{i}": join the literal parts around the fields
            found.append((node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{" for v in node.values)))
    return found


def test_no_module_but_the_state_spec_spells_a_state_tensor_name():
    spelled = []
    for path in sorted(_SRC.rglob("*.py")):
        rel = path.relative_to(_SRC).as_posix()
        if rel.startswith(_ALLOWED):
            continue
        for line, text in _strings(ast.parse(path.read_text(), rel)):
            if _SPELLED.search(text):
                spelled.append(f"{rel}:{line}: {text!r}")
    assert not spelled, "ask the StateSpec for these names instead:\n" + "\n".join(spelled)


def test_the_check_sees_a_respelled_name():
    tree = ast.parse(
        '"""past_state.0 in a docstring is fine"""\nx = f"present_key.{i}"\ny = "past_"\nz = "past_vae."\n'
    )
    assert [line for line, text in _strings(tree) if _SPELLED.search(text)] == [2, 3, 4]


def test_the_vae_caches_are_a_kind_of_the_contract():
    """past_vae.i / present_vae.i, one per causal conv, shaped from the DiT's latent size; decode graphs with a VAE."""
    cfg = micro_config("vae-micro", latent_width=6, frames_per_block=2)  # 4x6 latents, z_dim 4 = out_channels
    plain, spec = StateSpec(cfg, "bfloat16"), StateSpec(cfg, "bfloat16", VAE)
    assert plain.graphs == GRAPHS and spec.graphs == GRAPHS + DECODE_GRAPHS
    assert plain.to_dict()["graphs"].keys() == set(GRAPHS) and spec.to_dict()["graphs"].keys() == set(spec.graphs)
    past, present = spec.vae_caches(PAST_VAE), spec.vae_caches(PRESENT_VAE)
    caches = cache_specs(VAE)
    assert [s.name for s in past] == [f"past_vae.{i}" for i in range(32)] == [f"past_vae.{c.index}" for c in caches]
    assert [s.shape for s in present] == [("batch", *c.shape(1, 4, 6)[1:]) for c in caches]
    assert {s.dtype for s in past + present} == {"bfloat16"}  # the package dtype; frames leave in fp32
    assert spec.past_of("present_vae.31") == "past_vae.31" and spec.present_of("past_vae.0") == "present_vae.0"
    assert kind_of("past_vae.3") == PAST_VAE and spec.tensor("past_vae.3").layer == 3
    assert spec.vae_cache_bytes(batch=2) == cache_bytes(VAE, 2, 4, 6, "bfloat16") and plain.vae_cache_bytes() == 0

    assert [s.name for s in spec.inputs("decode_first")] == ["vae_latents"]
    assert [s.name for s in spec.inputs("decode_step")] == ["vae_latents", *(s.name for s in past)]
    assert spec.outputs("decode_first")[1:] == spec.outputs("decode_step")[1:] == present
    first, steady = spec.outputs("decode_first")[0], spec.outputs("decode_step")[0]
    assert (first.name, first.shape, first.dtype) == ("first_frames", ("batch", 3, 5, 32, 48), "float32")
    assert (steady.name, steady.shape, steady.dtype) == ("frames", ("batch", 3, 8, 32, 48), "float32")
    assert spec.vae_latents().shape == ("batch", 4, 2, 4, 6) and spec.vae_latents().dtype == "float32"
    assert spec.decode_graph(first=True) == "decode_first" and spec.decode_graph(first=False) == "decode_step"


def test_vae_contract_errors_name_what_is_wrong():
    with pytest.raises(Arl2rtError, match="VAE config 'vae-tiny': expected z_dim = 16 .* found 4"):
        StateSpec(micro_config("wide", in_channels=16, out_channels=16), vae=VAE)
    with pytest.raises(Arl2rtError, match="step graph 'decode_step': config 'state-spec-micro' has no VAE decoder"):
        StateSpec(MICRO).inputs("decode_step")
    with pytest.raises(Arl2rtError, match="this state contract has no VAE decoder"):
        StateSpec(MICRO).vae_caches(PAST_VAE)
