"""Where a model comes from: an exported package, a config with a checkpoint, a config alone (seeded random weights),
or the embedded model; and the record a session keeps to load the very same one again.

* ``--model PACKAGE``: an exported package (:class:`arl2rt.export.package.ModelPackage`), run by a package backend;
* ``--config NAME|FILE.json`` with ``--checkpoint PATH``: a PyTorch model
  (:func:`arl2rt.model.checkpoint.load_checkpoint`); ``--checkpoint`` alone: the config the file stores (arl2rt
  safetensors); ``--config`` alone gives seeded random weights (smoke tests, benchmarks: the frames are not
  meaningful);
* neither: the embedded model (:mod:`arl2rt.model.embedded`), a pixel-space model with a word vocabulary.

A PyTorch model of a latent-space config takes ``--vae FILE``, a Wan2.1 VAE checkpoint (either key layout) or a
TAEHV one (``taew2_1.pth``), told apart by their keys (:func:`arl2rt.model.vae.kinds.load_vae`): the stream's blocks
are then decoded to video as they are made. A package carries its decoder when it was exported with one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arl2rt.errors import Arl2rtError
from arl2rt.files import sha256_file
from arl2rt.model.config import ModelConfig, load_config
from arl2rt.model.dit import CausalDiT
from arl2rt.model.random import random_model
from arl2rt.runtime.session import module_identity


@dataclass
class LoadedModel:
    cfg: ModelConfig
    source: dict[str, Any]  # what a session records to load it again
    model: CausalDiT | None = None
    package: Any | None = None  # ModelPackage
    embedded: Any | None = None  # EmbeddedModel
    vae: Any | None = None  # the VAE decoder of a PyTorch model (a package's is in its graphs)
    _identity: str | None = None

    @property
    def description(self) -> str:
        s = self.source
        if s["kind"] == "package":
            return f"package {s['path']}"
        if s["kind"] == "checkpoint":
            return f"checkpoint {s['path']} (config {s['config'] or self.cfg.name})"
        if s["kind"] == "random":
            return f"random weights of config {s['config']}"
        return f"embedded model {s['name']}"

    @property
    def identity(self) -> str:
        """sha256 of the package manifest, or of a PyTorch model's config and weights (computed once, on demand)."""
        if self._identity is None:
            if self.package is not None:
                from arl2rt.export.package import MANIFEST_NAME

                self._identity = sha256_file(Path(self.package.root) / MANIFEST_NAME)
            else:
                self._identity = module_identity(self.model, self.vae)
        return self._identity


def embedded_model():
    """The embedded default model (imported lazily: its weights are package data)."""
    try:
        from arl2rt.model.embedded import load_embedded
    except ImportError as exc:
        raise Arl2rtError(
            f"the embedded default model is not part of this build ({exc}); pass --model PACKAGE or --config"
        ) from None
    return load_embedded()


def load_model(
    *,
    package: Path | None = None,
    config: str | None = None,
    checkpoint: Path | None = None,
    vae: Path | None = None,
    recorded: dict[str, Any] | None = None,
) -> LoadedModel:
    """The model named by a ``package`` directory or a ``config`` (with an optional ``checkpoint`` and ``vae``); with
    none named, the ``recorded`` source of a resumed session, else the embedded model."""
    if vae is not None and (package is not None or (config is None and checkpoint is None)):
        raise Arl2rtError(
            "--vae: a Wan2.1 VAE decoder goes with a PyTorch model (--config/--checkpoint); an exported package "
            "carries its own (arl2rt export --vae FILE)"
        )
    if package is not None and (config is not None or checkpoint is not None):
        raise Arl2rtError("--model (an exported package) and --config/--checkpoint (PyTorch) exclude each other")
    if config is not None and Path(config).is_file():
        config = str(Path(config).resolve())
    if package is not None:
        source = {"kind": "package", "path": str(Path(package).resolve())}
    elif checkpoint is not None:  # config None: the one the checkpoint stores
        source = {"kind": "checkpoint", "path": str(Path(checkpoint).resolve()), "config": config}
    elif config is not None:
        source = {"kind": "random", "config": config}
    elif recorded is not None:
        source = recorded
    else:
        source = {"kind": "embedded"}
    if vae is not None:
        source = {**source, "vae": str(Path(vae).resolve())}
    return _load_source(source)


def _load_source(source: dict[str, Any]) -> LoadedModel:
    kind = source.get("kind")
    if kind == "package":
        from arl2rt.export.package import ModelPackage

        package = ModelPackage.load(Path(source["path"]))
        return LoadedModel(package.config, source, package=package)
    if kind == "checkpoint":
        cfg = load_config(source["config"]) if source.get("config") is not None else None
        try:
            from arl2rt.model.checkpoint import load_checkpoint
        except ImportError as exc:
            raise Arl2rtError(f"--checkpoint: checkpoint loading is not part of this build ({exc})") from None
        model = load_checkpoint(Path(source["path"]), cfg)
        return LoadedModel(model.cfg, source, model=model, vae=_decoder(source, model.cfg))
    if kind == "random":
        cfg = load_config(source["config"])
        return LoadedModel(cfg, source, model=random_model(cfg), vae=_decoder(source, cfg))
    if kind == "embedded":
        em = embedded_model()
        source = {"kind": "embedded", "name": em.model.cfg.name}
        return LoadedModel(em.model.cfg, source, model=em.model, embedded=em)
    raise Arl2rtError(f"session: unknown model source {source!r}; expected a package, checkpoint, config or embedded")


def _decoder(source: dict[str, Any], cfg: ModelConfig):
    """The VAE decoder a source names (``vae``: Wan2.1's or TAEHV's), checked against the DiT's latent channels;
    else None."""
    if source.get("vae") is None:
        return None
    from arl2rt.model.vae.kinds import load_vae

    decoder = load_vae(Path(source["vae"]))
    if cfg.out_channels != decoder.config.z_dim:
        raise Arl2rtError(
            f"--vae {source['vae']}: the VAE decoder {decoder.config.name!r} decodes {decoder.config.z_dim}-channel "
            f"latents; config {cfg.name} makes {cfg.out_channels}-channel ones"
        )
    return decoder
