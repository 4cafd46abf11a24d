"""The StateSpec is the one place tensor names are spelled: its helpers, and no module re-spelling a name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import arl2rt
from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import (
    FRAME_OFFSET,
    PAST_KV,
    PAST_STATE,
    PRESENT_KV,
    PRESENT_STATE,
    StateSpec,
    kind_of,
)
from micro_configs import micro_config

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


# A state tensor's name (or the prefix of one) in a string: "past_state.", f"present_{kv}.", "context_key", ...
_SPELLED = re.compile(r"\b(?:past|present|context)_(?:state|key|value|\{|$)|\bframe_offset\b")
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
    tree = ast.parse('"""past_state.0 in a docstring is fine"""\nx = f"present_key.{i}"\ny = "past_"\n')
    assert [line for line, text in _strings(tree) if _SPELLED.search(text)] == [2, 3]
