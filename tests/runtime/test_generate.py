"""The library side of ``arl2rt generate``: model and text sources, lengths, outputs, sessions, Ctrl-C, backends."""

from __future__ import annotations

import dataclasses
import json

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import StateSpec
from arl2rt.model.config import ModelConfig
from arl2rt.model.random import random_context, random_model
from arl2rt.runtime import backends, sources
from arl2rt.runtime.generate import GenerateOptions, run_generate
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend
from arl2rt.runtime.video import read_latents, to_rgb_frames
from micro_configs import micro_rgb_config

# A pixel-space (RGB) micro model with both layer kinds; the softmax layer has a rolling window.
RGB = micro_rgb_config("micro-rgb")


@pytest.fixture
def rgb_config(tmp_path):
    path = tmp_path / "micro-rgb.json"
    path.write_text(json.dumps(RGB.to_dict()))
    return str(path)


def _reference(cfg: ModelConfig, blocks: int, seed: int, context=None, model=None) -> torch.Tensor:
    """What the Streamer makes for the same model, text and seed."""
    context = random_context(cfg, seed) if context is None else context
    with TorchBackend(model or random_model(cfg), StateSpec(cfg)) as be:
        return Streamer(be, seed=seed).generate(context, blocks)


def test_writes_exactly_the_stream_the_streamer_makes(tmp_path, rgb_config):
    seen = []
    result = run_generate(
        GenerateOptions(config=rgb_config, output=tmp_path / "a.npz", blocks=3, seed=4), progress=seen.append
    )
    assert torch.equal(torch.from_numpy(read_latents(tmp_path / "a.npz")), _reference(RGB, 3, seed=4))
    assert (result.blocks, result.frames, result.total_frames, result.format) == (3, 6, 6, "npz")
    assert [p.block for p in seen] == [1, 2, 3] and all(p.blocks_per_s > 0 and p.state_bytes > 0 for p in seen)
    assert result.state_bytes["gdn_states"] > 0 and result.peak_state_bytes >= sum(result.state_bytes.values())
    assert "random weights" in result.notes[-1]


def test_resume_after_n_blocks_equals_2n_blocks_in_one_go(tmp_path, rgb_config):
    run_generate(GenerateOptions(config=rgb_config, output=tmp_path / "one.npz", blocks=6, seed=2))
    first = run_generate(
        GenerateOptions(
            config=rgb_config, output=tmp_path / "two.npz", blocks=3, seed=2, save_session=tmp_path / "s", save_every=2
        )
    )
    assert first.session_block == 3  # every 2 blocks and at the end
    resumed = run_generate(GenerateOptions(resume=tmp_path / "s", blocks=6))
    assert (resumed.resumed_from_block, resumed.blocks, resumed.total_blocks) == (3, 3, 6)
    assert np.array_equal(read_latents(tmp_path / "two.npz"), read_latents(tmp_path / "one.npz"))


def test_resume_appends_to_an_mp4_with_continuous_timestamps(tmp_path, rgb_config):
    out = tmp_path / "v.mp4"
    run_generate(GenerateOptions(config=rgb_config, output=out, blocks=2, save_session=tmp_path / "s"))
    run_generate(GenerateOptions(resume=tmp_path / "s", blocks=5))
    with av.open(str(out)) as c:
        pts = [f.pts * f.time_base for f in c.decode(video=0)]
    assert pts == [i / 16 for i in range(10)]


def test_resume_into_another_output_writes_the_rest_there_and_says_so(tmp_path, rgb_config):
    run_generate(GenerateOptions(config=rgb_config, output=tmp_path / "a.npz", blocks=2, save_session=tmp_path / "s"))
    result = run_generate(GenerateOptions(resume=tmp_path / "s", blocks=4, output=tmp_path / "rest.npz"))
    assert any("frames from 4 on go to the new output" in n for n in result.notes)
    whole = np.concatenate([read_latents(tmp_path / "a.npz"), read_latents(tmp_path / "rest.npz")], axis=2)
    assert np.array_equal(whole, _reference(RGB, 4, seed=0).numpy())


def test_ctrl_c_keeps_every_finished_block_and_reports_it(tmp_path, rgb_config):
    def interrupt_after_two(p):
        if p.block == 2:
            raise KeyboardInterrupt

    result = run_generate(
        GenerateOptions(config=rgb_config, output=tmp_path / "a.npz", blocks=10, save_session=tmp_path / "s"),
        progress=interrupt_after_two,
    )
    assert result.interrupted and result.blocks == 2 and result.session_block is None
    assert read_latents(tmp_path / "a.npz").shape[2] == 2 * RGB.frames_per_block


def test_frames_round_up_to_whole_blocks_with_a_note(tmp_path, rgb_config):
    result = run_generate(GenerateOptions(config=rgb_config, output=tmp_path / "a.npz", frames=5))
    assert result.total_frames == 6 and "5 frames rounded up to 3 blocks = 6 frames" in result.notes[0]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"frames": 4, "blocks": 2}, "--frames and --blocks exclude each other"),
        ({"prompt": "hi", "context": "c.safetensors"}, "--prompt and --context exclude each other"),
        ({"model": "pkg"}, r"--model \(an exported package\) and --config/--checkpoint"),
        ({"config": None, "checkpoint": "w.pt"}, "checkpoint .*w.pt: no such file"),  # its config: from the file
        ({"backend": "tensorflow"}, r"--backend 'tensorflow': expected one of \['onnxruntime', 'tensorrt', 'torch'\]"),
        ({"prompt": "two red balls"}, "has no word vocabulary .* pass --text-encoder DIR .* or --context"),
        ({"output": None}, "expected an output: -o out.mp4"),
        ({"blocks": 0}, "--blocks must be >= 1"),
        ({"save_every": 0}, "--save-every must be >= 1"),
    ],
    ids=[
        "frames+blocks",
        "prompt+context",
        "model+config",
        "checkpoint-alone",
        "backend",
        "prompt",
        "output",
        "len",
        "k",
    ],
)
def test_contradictory_options_are_named(tmp_path, rgb_config, change, message):
    opts = GenerateOptions(config=rgb_config, output=tmp_path / "a.npz", blocks=1)
    with pytest.raises(Arl2rtError, match=message):
        run_generate(dataclasses.replace(opts, **change))


def test_resume_refuses_new_text_another_seed_or_nothing_to_do(tmp_path, rgb_config):
    run_generate(GenerateOptions(config=rgb_config, output=tmp_path / "a.npz", blocks=2, save_session=tmp_path / "s"))
    resume = GenerateOptions(resume=tmp_path / "s", blocks=3)
    with pytest.raises(Arl2rtError, match="the session holds its text"):
        run_generate(dataclasses.replace(resume, prompt="one red ball"))
    with pytest.raises(Arl2rtError, match="continues seed 0, --seed 5"):
        run_generate(dataclasses.replace(resume, seed=5))
    with pytest.raises(Arl2rtError, match="already 2 blocks long, target 2"):
        run_generate(dataclasses.replace(resume, blocks=None))
    other = tmp_path / "other.json"
    other.write_text(json.dumps(dataclasses.replace(RGB, sink_frames=2).to_dict()))
    with pytest.raises(Arl2rtError, match="made with model .* resume with the same model"):
        run_generate(dataclasses.replace(resume, config=str(other)))


def test_a_latent_model_asked_for_video_without_a_vae_fails_before_writing_anything(tmp_path):
    with pytest.raises(Arl2rtError, match="4-channel latents.*decode them with --vae"):
        run_generate(GenerateOptions(config="tiny", output=tmp_path / "a.mp4", blocks=1))
    assert not (tmp_path / "a.mp4").exists()


def test_an_existing_output_is_kept_unless_overwrite(tmp_path, rgb_config):
    out = tmp_path / "a.npz"
    out.write_bytes(b"precious")
    with pytest.raises(Arl2rtError, match="already exists; pass --overwrite"):
        run_generate(GenerateOptions(config=rgb_config, output=out, blocks=1))
    assert out.read_bytes() == b"precious"
    run_generate(GenerateOptions(config=rgb_config, output=out, blocks=1, overwrite=True))
    assert read_latents(out).shape[2] == 2


def test_context_file_is_the_text(tmp_path, rgb_config):
    context = torch.randn(1, RGB.text_len, RGB.text_dim)
    save_file({"context": context}, tmp_path / "c.safetensors")
    run_generate(
        GenerateOptions(config=rgb_config, output=tmp_path / "a.npz", blocks=2, context=tmp_path / "c.safetensors")
    )
    assert torch.equal(torch.from_numpy(read_latents(tmp_path / "a.npz")), _reference(RGB, 2, 0, context=context))
    save_file({"text": context}, tmp_path / "bad_key.safetensors")
    save_file({"context": context[:, :, :3].contiguous()}, tmp_path / "bad_shape.safetensors")
    opts = GenerateOptions(config=rgb_config, output=tmp_path / "b.npz", blocks=1)
    with pytest.raises(Arl2rtError, match=r"expected a tensor named 'context', found \['text'\]"):
        run_generate(dataclasses.replace(opts, context=tmp_path / "bad_key.safetensors"))
    with pytest.raises(
        Arl2rtError, match=r"expected float \['B', 4, 16\] \(model micro-rgb\), found float32 \[1, 4, 3\]"
    ):
        run_generate(dataclasses.replace(opts, context=tmp_path / "bad_shape.safetensors"))


def test_checkpoint_option_runs_the_checkpoint_and_needs_text(tmp_path, rgb_config):
    from arl2rt.model.checkpoint import save_checkpoint

    model, context = random_model(RGB, seed=7), torch.randn(1, RGB.text_len, RGB.text_dim)
    save_checkpoint(model, tmp_path / "w.safetensors")
    save_file({"context": context}, tmp_path / "c.safetensors")
    opts = GenerateOptions(
        config=rgb_config, checkpoint=tmp_path / "w.safetensors", output=tmp_path / "a.npz", blocks=2
    )
    with pytest.raises(Arl2rtError, match=r"needs text: pass --context FILE\.safetensors"):
        run_generate(opts)
    result = run_generate(dataclasses.replace(opts, context=tmp_path / "c.safetensors"))
    assert result.model.startswith("checkpoint ") and "random weights" not in " ".join(result.notes)
    expected = _reference(RGB, 2, 0, context=context, model=model)
    assert torch.equal(torch.from_numpy(read_latents(tmp_path / "a.npz")), expected)


# -- the embedded default model ------------------------------------------------------------------------------------
@dataclasses.dataclass
class StandIn:
    """Built like the embedded model (build_embedded, same vocabulary and text path), small and with random weights."""

    model: object
    vocab: tuple
    encoder: object
    default_prompt: str = "one red ball and one blue ball"

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        ids = self.encoder.token_ids(prompt)
        with torch.no_grad():
            return self.encoder(ids[None]).float()


@pytest.fixture
def stand_in(monkeypatch):
    from arl2rt.model.embedded import build_embedded, embedded_config

    cfg = dataclasses.replace(
        embedded_config(), dim=32, ffn_dim=64, num_heads=2, num_layers=2, hybrid_layers=(0,), latent_height=8,
        latent_width=8, timesteps=(1000.0, 500.0), attn_window_frames=4,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        em = build_embedded(cfg)
    standin = StandIn(em.model.eval(), em.vocab, em.encoder)
    monkeypatch.setattr(sources, "embedded_model", lambda: standin)
    return standin


def test_no_model_option_means_the_embedded_model_and_its_default_prompt(tmp_path, stand_in):
    result = run_generate(GenerateOptions(output=tmp_path / "frames", frames=4))
    assert result.model == "embedded model bouncing-balls" and result.format == "png"
    context = stand_in.encode_prompt(stand_in.default_prompt)
    expected = to_rgb_frames(_reference(stand_in.model.cfg, 4, 0, context=context, model=stand_in.model))
    got = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "frames").glob("frame_*.png"))])
    assert np.array_equal(got, expected)
    run_generate(GenerateOptions(output=tmp_path / "a.mp4", frames=4))
    with av.open(str(tmp_path / "a.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 4


def test_prompt_words_come_from_the_vocabulary(tmp_path, stand_in):
    run_generate(GenerateOptions(output=tmp_path / "a.npz", blocks=1, prompt="two green balls"))
    with pytest.raises(Arl2rtError, match=r"unknown words \['purple'\]; allowed words: one, two"):
        run_generate(GenerateOptions(output=tmp_path / "b.npz", blocks=1, prompt="one purple ball"))


def test_the_shipped_embedded_model_when_present(tmp_path):
    try:
        from arl2rt.model.embedded import load_embedded

        load_embedded()
    except (ImportError, Arl2rtError) as exc:
        pytest.skip(f"embedded model weights not in this build: {exc}")
    result = run_generate(GenerateOptions(output=tmp_path / "a.gif", blocks=2))
    assert result.total_blocks == 2 and (tmp_path / "a.gif").stat().st_size > 0


# -- backends ------------------------------------------------------------------------------------------------------
def test_make_backend_names_what_is_missing(monkeypatch):
    model = random_model(RGB)
    assert backends.make_backend("torch", model=model, dtype="float64").spec.dtype == "float64"
    with pytest.raises(Arl2rtError, match=r"backend 'jax': expected one of"):
        backends.make_backend("jax", model=model)
    with pytest.raises(Arl2rtError, match="backend torch: expected a PyTorch model"):
        backends.make_backend("torch")
    with pytest.raises(Arl2rtError, match="backend onnxruntime: expected an exported model package .* found a PyTorch"):
        backends.make_backend("onnxruntime", model=model)
    missing = dataclasses.replace(backends.BACKENDS["tensorrt"], module="arl2rt.runtime.no_such_module")
    monkeypatch.setitem(backends.BACKENDS, "tensorrt", missing)
    with pytest.raises(Arl2rtError, match=r"backend tensorrt: cannot import arl2rt\.runtime\.no_such_module"):
        backends.make_backend("tensorrt", package=object())


def test_a_package_runs_and_resumes_on_onnxruntime_and_its_manifest_is_its_identity(tmp_path, tiny_cfg, monkeypatch):
    """Wiring of --model, with the toy package of the onnxruntime backend tests standing in for an export."""
    from ort_toy_graphs import ToyTorchBackend, write_toy_package

    from arl2rt.export import package as packages

    toy = write_toy_package(tmp_path / "toy", tiny_cfg)
    manifest = toy.root / packages.MANIFEST_NAME
    manifest.write_text('{"toy": 1}')
    monkeypatch.setattr(packages.ModelPackage, "load", classmethod(lambda cls, path, verify=True: toy))
    context = random_context(tiny_cfg, seed=3)
    save_file({"context": context}, tmp_path / "c.safetensors")
    opts = GenerateOptions(model=toy.root, output=tmp_path / "a.npz", blocks=3, context=tmp_path / "c.safetensors")
    result = run_generate(dataclasses.replace(opts, save_session=tmp_path / "s"))
    assert result.backend.startswith("onnxruntime") and result.model == f"package {toy.root}"
    with ToyTorchBackend(toy.spec) as ref:
        expected = Streamer(ref, seed=0).generate(context, 3)
    torch.testing.assert_close(torch.from_numpy(read_latents(tmp_path / "a.npz")), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(Arl2rtError, match="--dtype float16: package .* was exported at float32"):
        run_generate(dataclasses.replace(opts, dtype="float16", output=tmp_path / "b.npz"))
    with pytest.raises(Arl2rtError, match="backend torch: expected a PyTorch model .* found an exported package"):
        run_generate(dataclasses.replace(opts, backend="torch", output=tmp_path / "b.npz"))
    run_generate(GenerateOptions(resume=tmp_path / "s", blocks=5))  # bit-identical on onnxruntime's CPU EP too
    run_generate(dataclasses.replace(opts, blocks=5, output=tmp_path / "one_go.npz"))
    assert np.array_equal(read_latents(tmp_path / "a.npz"), read_latents(tmp_path / "one_go.npz"))
    manifest.write_text('{"toy": 2}')  # another package at the same path
    with pytest.raises(Arl2rtError, match="made with model .* resume with the same model"):
        run_generate(GenerateOptions(resume=tmp_path / "s", blocks=4))
