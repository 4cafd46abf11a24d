"""Prompt text to DiT context for Wan-class models: a local umT5 encoder, run as Wan runs it, and a cache of its output.

* :mod:`.folder` finds and checks the encoder's files (config, weights, tokenizer) before anything loads;
* :mod:`.clean` is Wan's prompt clean;
* :mod:`.umt5` tokenizes, runs the encoder and applies Wan's cut-and-pad rule;
* :mod:`.cache` keeps one embedding per prompt on disk, so that a second run never loads the encoder.

``transformers``, ``sentencepiece`` and ``ftfy`` are imported only when the encoder actually runs (a cache miss).
"""

from arl2rt.model.text.cache import default_text_cache_dir, encode_prompts
from arl2rt.model.text.clean import clean_prompt
from arl2rt.model.text.folder import EncoderFiles, find_encoder_files
from arl2rt.model.text.umt5 import UMT5TextEncoder

__all__ = [
    "EncoderFiles",
    "UMT5TextEncoder",
    "clean_prompt",
    "default_text_cache_dir",
    "encode_prompts",
    "find_encoder_files",
]
