"""TensorRT engines for a model package: flavours (tensorrt, tensorrt_rtx), loaders, profiles and the engine cache.

Nothing here imports TensorRT at import time; :func:`load_flavour` does, and says how to install what is missing.
"""

from arl2rt.runtime.trt.build import BuildResult, build_engines, default_cache_dir, engine_key
from arl2rt.runtime.trt.cache import CacheEntry, EngineCache, read_entry
from arl2rt.runtime.trt.flavour import Flavour, load_flavour
from arl2rt.runtime.trt.profiles import DEFAULT_MAX_FRAMES, dim_ranges, profile_shapes

__all__ = [
    "DEFAULT_MAX_FRAMES",
    "BuildResult",
    "CacheEntry",
    "EngineCache",
    "Flavour",
    "build_engines",
    "default_cache_dir",
    "dim_ranges",
    "engine_key",
    "load_flavour",
    "profile_shapes",
    "read_entry",
]
