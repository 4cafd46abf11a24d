"""The shipped bouncing-balls model: loads, encodes prompts (or names what is wrong), streams, and has learned."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.export.state_spec import StateSpec
from arl2rt.model.embedded import EMBEDDED_NAME, load_embedded, parse_prompt
from arl2rt.model.random import random_model
from arl2rt.model.scheduler import FlowMatchScheduler
from arl2rt.model.sequence import clip_forward
from arl2rt.runtime.streamer import Streamer
from arl2rt.runtime.torch_backend import TorchBackend

TOOLS = Path(__file__).resolve().parents[2] / "tools" / "train_embedded"


@pytest.fixture(scope="module")
def embedded():
    return load_embedded()


@pytest.fixture(scope="module")
def balls():
    """The training data generator and blob detector (tools/train_embedded, not package code)."""
    sys.path.insert(0, str(TOOLS))
    try:
        import blobs
        import data
    finally:
        sys.path.remove(str(TOOLS))
    return data, blobs


def test_loads_a_pixel_space_model_with_both_layer_kinds(embedded):
    cfg = embedded.model.cfg
    assert cfg.name == EMBEDDED_NAME
    assert (cfg.in_channels, cfg.out_channels, cfg.frames_per_block) == (3, 3, 1)
    assert cfg.hybrid_layers and cfg.softmax_layers
    assert embedded.vocab == cfg.vocab and "red" in embedded.vocab
    assert all(torch.isfinite(p).all() for p in embedded.model.parameters())
    parse_prompt(embedded.default_prompt)


def test_prompt_encoding(embedded):
    cfg = embedded.model.cfg
    a = embedded.encode_prompt("two red balls and one blue ball")
    b = embedded.encode_prompt("one blue ball and two red balls")
    assert a.shape == (1, cfg.text_len, cfg.text_dim) and a.dtype == torch.float32
    assert not torch.equal(a, b)  # word order reaches the model (position embeddings)
    assert torch.equal(embedded.encode_prompt("Two red balls, and one blue ball"), a)


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("one purple ball", r"unknown words \['purple'\]; allowed words: one, two, three, red"),
        ("two red ball", r"expected 'balls' at word 3, found 'ball'"),
        ("one red ball one blue ball", r"expected 'and' at word 4, found 'one'"),
        ("one red ball and", r"at word 5, found the end of the prompt"),
        ("three red balls and one blue ball", r"asks for 4 balls; the model knows 1 to 3"),
        ("", r"expected 1 to 12 words, found 0"),
    ],
    ids=["unknown-word", "plural", "conjunction", "dangling-and", "too-many", "empty"],
)
def test_bad_prompts_are_named(embedded, prompt, message):
    with pytest.raises(Arl2rtError, match=message):
        embedded.encode_prompt(prompt)


def test_two_blocks_stream_finite_frames_in_range(embedded):
    context = embedded.encode_prompt(embedded.default_prompt)
    with TorchBackend(embedded.model, StateSpec(embedded.model.cfg)) as be:
        video = Streamer(be, seed=0).generate(context, 2)
    assert video.shape == (1, 3, 2, 32, 32)
    assert torch.isfinite(video).all() and video.abs().max() < 1.5


def test_trained_weights_predict_the_next_frame(embedded, balls):
    """Denoise frame 3 of a real clip from sigma 0.6 in one step, frames 0-2 clean: random weights fail this."""
    data, blobs = balls
    gen = torch.Generator().manual_seed(11)
    prompts, clips, _ = data.make_batch(4, 4, gen)
    sigma = 0.6
    x = clips.clone()
    x[:, :, 3:] = (1 - sigma) * clips[:, :, 3:] + sigma * torch.randn(clips[:, :, 3:].shape, generator=gen)
    t = torch.zeros(4, 4)
    t[:, 3] = 1000 * sigma
    context = torch.cat([embedded.encode_prompt(p) for p in prompts])
    with torch.no_grad():
        velocity = clip_forward(embedded.model, x, t, embedded.model.encode_context(context))
    x0 = x[:, :, 3:] - sigma * velocity[:, :, 3:]
    err = (x0 - clips[:, :, 3:]).square().mean()
    copy_previous = (clips[:, :, 2:3] - clips[:, :, 3:]).square().mean()
    assert err < 0.5 * copy_previous  # measured 0.0037 vs 0.0169; random weights give about 0.7
    for b in range(4):
        found = blobs.colour_counts(blobs.detect(x0[b].transpose(0, 1).numpy())[0])
        want = blobs.colour_counts(blobs.detect(clips[b, :, 3:].transpose(0, 1).numpy())[0])
        assert found == want, prompts[b]


def test_euler_sampler_follows_the_flow_ode_and_draws_no_noise(tiny_cfg, tiny_context):
    import dataclasses

    cfg = dataclasses.replace(tiny_cfg, sampler="euler", warp_timesteps=False, latent_height=4, latent_width=4)
    sched = FlowMatchScheduler.from_config(cfg)
    x, v = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)

    def no_noise():
        raise AssertionError("euler must not draw noise")

    torch.testing.assert_close(sched.next_latents(x, v, 0, no_noise), x - 0.25 * v)
    with TorchBackend(random_model(cfg), StateSpec(cfg)) as be:
        s = Streamer(be, seed=3)
        s.generate(tiny_context, 2)
        # one draw per block (its starting noise) and no more
        expected = torch.Generator().manual_seed(3)
        for _ in range(2):
            torch.randn(1, 4, 3, 4, 4, generator=expected)
        assert torch.equal(s.generator.get_state(), expected.get_state())
    with pytest.raises(Arl2rtError, match="sampler 'heun'"):
        dataclasses.replace(cfg, sampler="heun")


def test_own_reconstruction_is_the_models_x0_of_the_true_frames(embedded, balls):
    """The self-context of training (tools/train_embedded/train.py): x0 = x_t - s v lands near the true frames."""
    data, _ = balls
    sys.path.insert(0, str(TOOLS))
    try:
        import train
    finally:
        sys.path.remove(str(TOOLS))
    prompts, clips, _ = data.make_batch(3, 4, torch.Generator().manual_seed(5), torch.device("cpu"))
    with torch.no_grad():
        ctx = embedded.model.encode_context(
            embedded.encoder(torch.stack([embedded.encoder.token_ids(p) for p in prompts]))
        )
    errors = []
    for t in (300.0, 600.0):
        t_ctx = torch.full((3, 4), t)
        rec = train.own_reconstruction(embedded, clips, ctx, 2, t_ctx, torch.Generator().manual_seed(1))
        noisy, _ = train.noised(clips, t_ctx, torch.Generator().manual_seed(1))
        assert rec.shape == clips.shape and rec.abs().max() <= 1.0
        err = ((rec - clips).norm() / clips.norm()).item()
        assert err < 0.25 * ((noisy - clips).norm() / clips.norm()).item()
        errors.append(err)
    assert 0 < errors[0] < errors[1]  # more noise, a worse reconstruction: the model's own kind of error


def test_corrupted_context_spoils_only_what_it_is_asked_to(balls):
    """The context corruption of training (tools/train_embedded/data.py): each kind does what it says, p=0 nothing."""
    data, blobs = balls
    prompts, clips, centres = data.make_batch(16, 10, torch.Generator().manual_seed(3))
    none = data.Corruption(dim=0, hide=0, resize=0, recolour=0, extra=0)
    assert torch.equal(data.corrupted_context(prompts, centres, 0.0, torch.Generator().manual_seed(1)), clips)
    assert torch.equal(data.corrupted_context(prompts, centres, 1.0, torch.Generator(), spoil=none), clips)

    def blob_counts(video):
        return [[len(f) for f in blobs.detect(clip.transpose(0, 1).numpy())] for clip in video]

    truth = blob_counts(clips)
    hide = data.Corruption(dim=0, hide=1, resize=0, recolour=0, extra=0)
    hidden = data.corrupted_context(prompts, centres, 1.0, torch.Generator().manual_seed(2), spoil=hide)
    for got, want in zip(blob_counts(hidden), truth):
        assert all(g <= w for g, w in zip(got, want)) and sum(got) < sum(want)  # every ball gone for some frames
    extra = data.Corruption(dim=0, hide=0, resize=0, recolour=0, extra=1)
    added = data.corrupted_context(prompts, centres, 1.0, torch.Generator().manual_seed(2), spoil=extra)
    grew = [sum(g) > sum(w) for g, w in zip(blob_counts(added), truth)]
    assert sum(grew) >= 14  # a ball more in some frames (a new ball may overlap one of the clip's)
    dim = data.Corruption(dim=1, min_opacity=0.3, hide=0, resize=0, recolour=0, extra=0)
    dimmed = data.corrupted_context(prompts, centres, 1.0, torch.Generator().manual_seed(2), spoil=dim)
    brightness = (dimmed + 1).sum(dim=(1, 3, 4)) / (clips + 1).sum(dim=(1, 3, 4))  # [B, F]
    assert 0.0 <= brightness.min() and brightness.max() <= 1.0 + 1e-6 and brightness.mean() < 0.85
    small = data.Corruption(dim=0, hide=0, resize=1, radius_range=(2.0, 2.5), recolour=0, extra=0)
    shrunk = data.corrupted_context(prompts, centres, 1.0, torch.Generator().manual_seed(2), spoil=small)
    assert ((shrunk + 1).sum() / (clips + 1).sum()) < 0.8


def test_stream_quality_tells_a_jump_from_a_missing_ball(balls):
    """blobs.stream_quality: a teleporting ball fails speed and motion; a vanished ball fails count, not speed."""
    data, blobs = balls
    prompts, clips, centres = data.make_batch(1, 8, torch.Generator().manual_seed(4))
    rgb, present = data._colour_table(prompts, "cpu")
    want = blobs.colour_counts(blobs.detect(clips[0].transpose(0, 1).numpy())[0])
    limit = 2.16

    def quality(video):
        return blobs.stream_quality(prompts[0], want, video[0].transpose(0, 1).numpy(), limit)

    clean = quality(clips)
    assert (clean.count_ok, clean.motion_ok, clean.speed_ok, clean.blank) == (1.0, 1.0, 1.0, 0)
    jumped = centres.nan_to_num(0.0).clone()
    jumped[0, 4:, 0] = (jumped[0, 4:, 0] + 8.0).clamp(3.0, 28.0)  # ball 0 jumps 8 px (walls allowing) at frame 4
    q = quality(data.render(jumped, rgb, present, data.BallsConfig()))
    assert q.count_ok == 1.0 and q.speed_ok < 1.0 and q.motion_ok < 1.0
    weight = torch.ones(1, 8, 3)
    weight[0, 3, 0] = 0.0  # ball 0 missing from frame 3
    q = quality(data.render(centres.nan_to_num(0.0), rgb, present, data.BallsConfig(), weight=weight))
    assert q.count_ok == 7 / 8 and q.speed_ok == 1.0 and q.motion_ok == 5 / 7
