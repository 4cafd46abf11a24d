"""Torch checkpoint files are read with weights_only: a pickle that would run code is refused in our words, unrun."""

from __future__ import annotations

import os

import pytest
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.model.torch_files import load_torch_file
from arl2rt.model.vae.checkpoint import read_tensors


class _System:
    """Unpickling this calls os.system: the module is blocked by torch, whose refusal reads differently."""

    def __reduce__(self):
        return (os.system, ("touch pwned-by-checkpoint",))


@pytest.mark.parametrize("reader", ["checkpoint", "vae"])
def test_a_pickle_calling_os_system_is_refused_without_running(tmp_path, monkeypatch, reader):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"decoder.conv1.weight": torch.randn(2), "x": _System()}, path)
    with pytest.raises(Arl2rtError) as err:
        if reader == "vae":
            read_tensors(path)
        else:
            load_torch_file(path, "checkpoint", "a torch checkpoint of tensors")
    message = str(err.value)
    assert "evil.pth: refused: it pickles a Python object of type" in message and "system" in message
    assert "Weights only load failed" not in message  # torch's own text is not passed on
    assert not (tmp_path / "pwned-by-checkpoint").exists()


def test_a_plain_tensor_file_loads(tmp_path):
    path = tmp_path / "ok.pt"
    tensor = torch.randn(3, 4)
    torch.save({"w": tensor}, path)
    assert torch.equal(load_torch_file(path, "checkpoint", "tensors")["w"], tensor)
