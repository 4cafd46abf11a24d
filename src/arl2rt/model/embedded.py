"""The embedded default model: a small ARL2 video model of bouncing coloured balls, trained here and shipped.

A pixel-space model (no VAE): latents are RGB frames in [-1, 1], channels first ``[B, 3, F, H, W]``. Prompts are a
few words ("two red balls and one blue ball"); a tiny learned word + position embedding stands in for umT5 and feeds
the model's ordinary text path (``CausalDiT.encode_context``). Weights and config are package data in
``arl2rt/assets/``; ``tools/train_embedded/`` holds the recipe that made them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from arl2rt.errors import Arl2rtError
from arl2rt.model.config import ModelConfig
from arl2rt.model.dit import CausalDiT

EMBEDDED_NAME = "bouncing-balls"
CONFIG_FILE = "bouncing_balls.json"
WEIGHTS_FILE = "bouncing_balls.safetensors"
DEFAULT_PROMPT = "one red ball and one blue ball"
# Prefixes of the two modules in the weights file.
MODEL_PREFIX, ENCODER_PREFIX = "model.", "text_encoder."

COLOURS = ("red", "green", "blue", "yellow", "white")
COUNTS = {"one": 1, "two": 2, "three": 3}
MAX_BALLS = 3
_GRAMMAR = "'<count> <colour> ball[s]' joined by 'and' (counts one..three, at most 3 balls in all)"


def prompt_words(prompt: str) -> list[str]:
    """Lower-case words of a prompt; commas count as spaces."""
    return re.sub(r"[,\s]+", " ", prompt.lower()).split()


def parse_prompt(prompt: str) -> tuple[str, ...]:
    """Colours of the balls a prompt asks for, in order: "two red balls and one blue ball" -> (red, red, blue).

    Raises Arl2rtError naming the word that breaks the grammar, what was expected there and the allowed words.
    """
    words = prompt_words(prompt)
    balls: list[str] = []
    i = 0
    while True:
        group = words[i : i + 3]
        if len(group) < 3 or group[0] not in COUNTS or group[1] not in COLOURS:
            raise _grammar_error(prompt, words, i)
        count = COUNTS[group[0]]
        if group[2] != ("ball" if count == 1 else "balls"):
            raise _grammar_error(prompt, words, i + 2, "ball" if count == 1 else "balls")
        balls += [group[1]] * count
        i += 3
        if i == len(words):
            break
        if words[i] != "and":
            raise _grammar_error(prompt, words, i, "and")
        i += 1
    if len(balls) > MAX_BALLS:
        raise Arl2rtError(f"prompt {prompt!r}: asks for {len(balls)} balls; the model knows 1 to {MAX_BALLS}")
    return tuple(balls)


def _grammar_error(prompt: str, words: list[str], at: int, expected: str | None = None) -> Arl2rtError:
    found = repr(words[at]) if at < len(words) else "the end of the prompt"
    want = repr(expected) if expected else "a count (one, two, three) then a colour then 'ball'/'balls'"
    return Arl2rtError(
        f"prompt {prompt!r}: expected {want} at word {at + 1}, found {found}; prompts are {_GRAMMAR}, "
        f"colours {', '.join(COLOURS)}"
    )


class PromptEncoder(nn.Module):
    """Word + position embeddings ``[B, text_len, text_dim]``: the embedded model's stand-in for umT5.

    Row 0 of the word table is padding; word ``vocab[i]`` is row ``i + 1``.
    """

    def __init__(self, vocab: tuple[str, ...], text_len: int, text_dim: int) -> None:
        super().__init__()
        self.vocab, self.text_len = vocab, text_len
        self.index = {w: i + 1 for i, w in enumerate(vocab)}
        self.word = nn.Parameter(torch.randn(len(vocab) + 1, text_dim) * 0.5)
        self.position = nn.Parameter(torch.randn(text_len, text_dim) * 0.5)

    def token_ids(self, prompt: str) -> torch.Tensor:
        """Word ids ``[text_len]`` (padded with 0); unknown words and too-long prompts raise Arl2rtError."""
        words = prompt_words(prompt)
        unknown = [w for w in words if w not in self.index]
        if unknown:
            raise Arl2rtError(f"prompt {prompt!r}: unknown words {unknown}; allowed words: {', '.join(self.vocab)}")
        if not words or len(words) > self.text_len:
            raise Arl2rtError(f"prompt {prompt!r}: expected 1 to {self.text_len} words, found {len(words)}")
        ids = torch.zeros(self.text_len, dtype=torch.int64)
        ids[: len(words)] = torch.tensor([self.index[w] for w in words])
        return ids

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids ``[B, text_len]`` -> text embeddings ``[B, text_len, text_dim]``."""
        return self.word[ids] + self.position


@dataclass
class EmbeddedModel:
    """The shipped model with its prompt encoder. ``model`` runs like any CausalDiT (Streamer, export, ...)."""

    model: CausalDiT
    vocab: tuple[str, ...]
    encoder: PromptEncoder
    default_prompt: str = DEFAULT_PROMPT

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Text context ``[1, text_len, text_dim]`` (float32) for a prompt of the model's grammar."""
        ids = self.encoder.token_ids(prompt)
        parse_prompt(prompt)
        with torch.no_grad():
            return self.encoder(ids[None]).float()


def build_embedded(cfg: ModelConfig) -> EmbeddedModel:
    """A randomly initialised embedded model of ``cfg`` (the training starting point)."""
    if not cfg.vocab:
        raise Arl2rtError(f"config {cfg.name}: the embedded model needs a word vocabulary ('vocab'), found none")
    return EmbeddedModel(CausalDiT(cfg), cfg.vocab, PromptEncoder(cfg.vocab, cfg.text_len, cfg.text_dim))


def embedded_state_dict(em: EmbeddedModel) -> dict[str, torch.Tensor]:
    """All weights in the file layout: ``model.*`` (CausalDiT) and ``text_encoder.*``."""
    sd = {MODEL_PREFIX + k: v for k, v in em.model.state_dict().items()}
    sd.update({ENCODER_PREFIX + k: v for k, v in em.encoder.state_dict().items()})
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}


def load_embedded_from(cfg: ModelConfig, weights: bytes, source: str = WEIGHTS_FILE) -> EmbeddedModel:
    """Build the embedded model of ``cfg`` and load the safetensors ``weights`` (bytes) into it, strictly."""
    try:
        tensors = load_safetensors(weights)
    except (SafetensorError, ValueError) as exc:
        raise Arl2rtError(f"{source}: not a readable safetensors file ({exc})") from None
    with torch.random.fork_rng():
        em = build_embedded(cfg)
    for prefix, module in ((MODEL_PREFIX, em.model), (ENCODER_PREFIX, em.encoder)):
        want = module.state_dict()
        got = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        if missing or extra:
            raise Arl2rtError(f"{source}: {prefix}* tensors missing {missing[:8]}, unexpected {extra[:8]}")
        bad = [f"{k} {list(got[k].shape)} != {list(v.shape)}" for k, v in want.items() if got[k].shape != v.shape]
        if bad:
            raise Arl2rtError(f"{source}: tensor shapes differ from config {cfg.name}: {bad[:8]}")
        module.load_state_dict(got, strict=True)
    em.model.eval()
    em.encoder.eval()
    return em


def _assets():
    return resources.files("arl2rt") / "assets"


def embedded_config() -> ModelConfig:
    """The shipped model's config (package data ``arl2rt/assets/bouncing_balls.json``)."""
    try:
        data = json.loads((_assets() / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise Arl2rtError(f"embedded model {EMBEDDED_NAME}: cannot read arl2rt/assets/{CONFIG_FILE} ({exc})") from None
    return ModelConfig.from_dict(data, source=f"arl2rt/assets/{CONFIG_FILE}")


def load_embedded() -> EmbeddedModel:
    """The shipped bouncing-balls model, float32 on the CPU, in eval mode."""
    cfg = embedded_config()
    try:
        weights = (_assets() / WEIGHTS_FILE).read_bytes()
    except OSError as exc:
        raise Arl2rtError(f"embedded model {EMBEDDED_NAME}: cannot read arl2rt/assets/{WEIGHTS_FILE} ({exc})") from None
    return load_embedded_from(cfg, weights, source=f"arl2rt/assets/{WEIGHTS_FILE}")
