"""Registering the arl2 plugin creators with ``tensorrt.plugin``, by importing the module that declares them.

A build needs it for every plugin node (``aot_impl`` runs then); running an engine needs it only for the JIT plugin
(``arl2::gdn_state_update``), whose kernels run in Python: AOT engines carry their kernels.
"""

from __future__ import annotations

import importlib

REGISTRATION_MODULE = "arl2rt.plugins.gdn.trt_plugin"


def register_trt_plugins() -> None:
    """Register the arl2 plugin creators with TensorRT (imports ``tensorrt``, and Triton on the first kernel launch)."""
    importlib.import_module(REGISTRATION_MODULE)
