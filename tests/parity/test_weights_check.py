"""The weights digest a package's manifest records and parity's check of its reference against it."""

from __future__ import annotations

import copy

import pytest
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.provenance import check_same_weights, weights_digest, weights_record
from arl2rt.model.random import random_model
from micro_packages import MICRO


@pytest.fixture(scope="module")
def model():
    return random_model(MICRO, seed=0)


def test_the_digest_is_of_the_values_whatever_the_dtype_they_are_held_in(model):
    digest = weights_digest(model)
    assert weights_digest(copy.deepcopy(model).double()) == digest  # the float64 reference of the same weights
    assert weights_digest(random_model(MICRO, seed=0)) == digest
    assert weights_digest(random_model(MICRO, seed=1)) != digest
    nudged = copy.deepcopy(model)
    with torch.no_grad():
        next(nudged.parameters()).view(-1)[0] += 1e-3
    assert weights_digest(nudged) != digest


def test_a_package_of_the_same_weights_or_without_a_record_passes(model, tmp_path):
    check_same_weights({"weights": weights_record(model, "checkpoint a.pt")}, tmp_path, model)
    check_same_weights({}, tmp_path, model)  # exported before packages recorded their weights


def test_other_weights_are_refused_naming_both_sources(model, tmp_path):
    manifest = {"weights": weights_record(random_model(MICRO, seed=1), "checkpoint /data/a.pt (config micro)")}
    with pytest.raises(Arl2rtError) as info:
        check_same_weights(manifest, tmp_path / "pkg", model, "random weights of seed 0 (config micro)")
    message = str(info.value)
    assert f"package {tmp_path / 'pkg'} was exported from checkpoint /data/a.pt (config micro)" in message
    assert "the reference model (random weights of seed 0 (config micro)) has other weights" in message
    manifest["weights"]["source"] = None
    with pytest.raises(Arl2rtError, match="exported from weights it does not name"):
        check_same_weights(manifest, tmp_path / "pkg", model)


@pytest.mark.parametrize("record", ["abc", {"sha256": 3}, {"source": "x"}], ids=["string", "number", "no-digest"])
def test_a_malformed_record_is_named(model, tmp_path, record):
    with pytest.raises(Arl2rtError, match=r"manifest field 'weights' expected \{'sha256': str"):
        check_same_weights({"weights": record}, tmp_path, model)
