"""The streams one served model instance holds: each equals a Streamer's stream, START resets, END frees, an idle
stream is freed (by the clock, and by the reaper thread without any request), and bad requests are clear errors."""

from __future__ import annotations

import time

import pytest
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.model.random import random_context
from arl2rt.runtime.backends import make_backend
from arl2rt.runtime.streamer import Streamer
from arl2rt.serve.served import Request, ServedModel, plan_settings
from arl2rt.serve.streams import Reaper, StreamTable
from micro_packages import MICRO


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def backend(micro_model):
    with make_backend("torch", model=micro_model) as b:
        yield b


def reference(backend, context: torch.Tensor, seed: int, blocks: int) -> list[torch.Tensor]:
    streamer = Streamer(backend, seed=seed)
    streamer.start(context)
    return [streamer.next_block().clone() for _ in range(blocks)]


def test_interleaved_streams_equal_their_single_streams_and_start_resets(backend):
    table = StreamTable(backend, idle_timeout=10)
    contexts = {7: random_context(MICRO, seed=1), 9: random_context(MICRO, seed=2)}
    seeds = {7: 3, 9: 4}
    for corrid in contexts:
        table.start(corrid, contexts[corrid], seeds[corrid])
    made = {7: [], 9: []}
    for block in range(3):
        for corrid in (7, 9):  # interleaved: one stream's blocks must not touch the other's state
            made[corrid].append(table.next_block(corrid, block).latents.clone())
    for corrid in contexts:
        expected = reference(backend, contexts[corrid], seeds[corrid], 3)
        assert all(torch.equal(a, b) for a, b in zip(made[corrid], expected))
    assert not torch.equal(made[7][0], made[9][0])
    table.start(7, contexts[7], seeds[7])  # START again: a fresh stream, not a continuation
    assert torch.equal(table.next_block(7, 0).latents, made[7][0])
    assert len(table) == 2


def test_end_frees_and_a_missing_or_out_of_order_block_is_an_error(backend):
    table = StreamTable(backend, idle_timeout=10)
    table.start(5, random_context(MICRO, seed=1), 0)
    first = table.next_block(5, 0)
    assert first.streams == 1 and first.state_bytes > 0
    with pytest.raises(Arl2rtError, match="sequence 5: asked for block 3, expected block 1"):
        table.next_block(5, 3)
    assert table.end(5) and 5 not in table
    with pytest.raises(Arl2rtError, match="sequence 5: no stream .*expected a request that starts it"):
        table.next_block(5, 1)
    with pytest.raises(Arl2rtError, match="sequence 6: no stream"):
        table.next_block(6, 0)


def test_expire_frees_only_streams_idle_past_the_timeout(backend):
    clock = Clock()
    table = StreamTable(backend, idle_timeout=5, clock=clock)
    for corrid in (1, 2, 3):
        table.start(corrid, random_context(MICRO, seed=corrid), corrid)
    clock.now = 4.0
    table.next_block(2, 0)  # used at 4
    table.touch(3)  # its response left at 4
    clock.now = 6.0
    assert table.expire() == [1]
    assert sorted([c for c in (1, 2, 3) if c in table]) == [2, 3]
    clock.now = 9.5
    assert sorted(table.expire()) == [2, 3] and len(table) == 0


def test_the_reaper_frees_an_abandoned_stream_without_any_request(backend):
    table = StreamTable(backend, idle_timeout=0.05)
    table.start(1, random_context(MICRO, seed=1), 0)
    freed: list[int] = []
    reaper = Reaper(table, on_expired=freed.extend)
    reaper.start()
    try:
        for _ in range(200):  # bounded wait, no timing asserted
            if freed:
                break
            time.sleep(0.01)
    finally:
        reaper.stop()
    assert freed == [1] and len(table) == 0


def test_served_model_checks_the_text_of_a_request():
    settings, loaded = plan_settings(config="tiny")
    served = ServedModel(settings, loaded)
    try:
        cfg = loaded.cfg
        good = random_context(cfg, seed=0)
        with pytest.raises(Arl2rtError, match=r"tensor context: expected shape"):
            served.answer(Request(corrid=1, block=0, start=True, context=good[:, :3]))
        bad = good.clone()
        bad[0, 0, 0] = float("nan")
        with pytest.raises(Arl2rtError, match="sequence 1: CONTEXT: expected finite values"):
            served.answer(Request(corrid=1, block=0, start=True, context=bad))
        with pytest.raises(Arl2rtError, match="sequence 1: the request that starts a stream asks for block 0, not 2"):
            served.answer(Request(corrid=1, block=2, start=True))
        # random weights take random text seeded by the stream's seed, as generate does: the given context is that
        seeded = served.answer(Request(corrid=1, block=0, start=True, seed=4, end=True)).latents
        given = served.answer(Request(corrid=2, block=0, start=True, seed=4, context=random_context(cfg, 4), end=True))
        assert torch.equal(seeded, given.latents) and len(served.table) == 0
        served.answer(Request(corrid=3, block=0, start=True))
        with pytest.raises(Arl2rtError, match="sequence 3: SEED, PROMPT and CONTEXT go with the request that starts"):
            served.answer(Request(corrid=3, block=1, seed=1))
    finally:
        served.close()
