"""A package with the TAEHV decoder: the state contract names its nine memories, the manifest records its config, and
on onnxruntime the exported graphs equal our torch decode, per block and over a stream."""

from __future__ import annotations

import json

import pytest
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import DECODE_GRAPHS, GRAPHS, PAST_VAE, PRESENT_VAE, StateSpec
from arl2rt.export.steps import decode_modules
from arl2rt.model.vae.stream import VaeStream, decode_step
from arl2rt.model.vae.taehv.config import TAEW2_1
from arl2rt.model.vae.taehv.memory import memory_bytes
from arl2rt.runtime.onnxruntime_backend import OnnxRuntimeBackend
from micro_configs import micro_config
from micro_vae_packages import VAE
from model.vae.taehv_reference import TINY_TAEHV
from model.vae.vae_helpers import peak_relative


@pytest.fixture(scope="module")
def package(micro_taehv_exports):
    return micro_taehv_exports.package("onnxruntime")


def _latents(block: int, frames: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(200 + block)
    return 1.5 * torch.randn(1, TINY_TAEHV.z_dim, frames, 4, 6, generator=g)


def test_the_contract_names_the_memories():
    """past_vae.i / present_vae.i, one per memory block, one frame each; 64 MiB per stream for taew2_1 at 480x832."""
    spec = StateSpec(micro_config("taehv-micro", latent_width=6, frames_per_block=3), "bfloat16", TINY_TAEHV)
    assert spec.graphs == (*GRAPHS, *DECODE_GRAPHS)
    past = spec.vae_caches(PAST_VAE)
    assert [s.name for s in past] == [f"past_vae.{i}" for i in range(9)]
    assert [s.shape for s in past[::3]] == [("batch", 16, 1, 4, 6), ("batch", 12, 1, 8, 12), ("batch", 8, 1, 16, 24)]
    assert {s.dtype for s in past + spec.vae_caches(PRESENT_VAE)} == {"bfloat16"}
    assert spec.frames(True).shape == ("batch", 3, 9, 32, 48) and spec.frames(False).shape == ("batch", 3, 12, 32, 48)
    assert spec.vae_cache_bytes(batch=2) == memory_bytes(TINY_TAEHV, 2, 4, 6, "bfloat16")
    wan = micro_config("w", in_channels=16, out_channels=16, latent_height=60, latent_width=104)
    assert StateSpec(wan, "float16", TAEW2_1).vae_cache_bytes() == 67_092_480  # 64 MiB


def test_decode_modules_refuse_the_other_decoder(micro_taehv_exports, micro_vae_exports):
    taehv, wan = micro_taehv_exports.decoder, micro_vae_exports.decoder
    with pytest.raises(Arl2rtError, match=r"config 'vae-tiny', which differs in \['dim', 'dim_mult', .*'widths'\]"):
        decode_modules(wan, micro_taehv_exports.spec())
    with pytest.raises(Arl2rtError, match="expected the state contract's config 'vae-tiny', found config 'taehv-tiny'"):
        decode_modules(taehv, StateSpec(micro_taehv_exports.model.cfg, "float32", VAE))


def test_the_package_records_and_verifies_the_taehv_decoder(package):
    m = package.manifest
    assert list(m["graphs"]) == [*GRAPHS, *DECODE_GRAPHS]
    assert m["vae"] == json.loads(json.dumps(TINY_TAEHV.to_dict())) and m["vae"]["kind"] == "taehv"
    assert package.spec.vae == TINY_TAEHV  # ModelPackage.load read the config back and checked the graphs' I/O
    step = package.load_graph("decode_step").graph
    assert [v.name for v in step.input] == ["vae_latents", *(f"past_vae.{i}" for i in range(9))]
    assert [v.name for v in step.output] == ["frames", *(f"present_vae.{i}" for i in range(9))]
    assert package.describe()["stream_bytes"]["vae_caches"] == memory_bytes(TINY_TAEHV, 1, 4, 6, "float32")


def test_onnxruntime_decodes_as_torch_does_per_block_and_over_a_stream(package, micro_taehv_exports):
    decoder, spec = micro_taehv_exports.decoder, package.spec
    with OnnxRuntimeBackend(package) as ort:
        frames, present = decode_step(decoder, _latents(0))
        out = ort.run("decode_first", {"vae_latents": _latents(0)})
        assert out["first_frames"].shape == (1, 3, 5, 32, 48) and peak_relative(out["first_frames"], frames) <= 1e-5
        assert all(peak_relative(out[s.name], t) <= 1e-5 for s, t in zip(spec.vae_caches(PRESENT_VAE), present))
        past = {s.name: t for s, t in zip(spec.vae_caches(PAST_VAE), present)}
        frames, present = decode_step(decoder, _latents(1), list(past.values()))
        out = ort.run("decode_step", {"vae_latents": _latents(1), **past})
        assert out["frames"].shape == (1, 3, 8, 32, 48) and peak_relative(out["frames"], frames) <= 1e-5
        assert all(peak_relative(out[s.name], t) <= 1e-5 for s, t in zip(spec.vae_caches(PRESENT_VAE), present))

        stream, caches, worst = VaeStream(decoder), {}, 0.0  # 4 blocks, each side feeding itself its own memories
        for block in range(4):
            want = stream.decode(_latents(block))
            graph = spec.decode_graph(first=not caches)
            out = ort.run(graph, {"vae_latents": _latents(block), **caches})
            caches = {spec.past_of(s.name): out[s.name] for s in spec.vae_caches(PRESENT_VAE)}
            worst = max(worst, peak_relative(out[spec.outputs(graph)[0].name], want))
    assert worst <= 1e-5
