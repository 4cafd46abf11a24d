"""Our TensorRT plugin definitions through NVIDIA's own ``tensorrt.plugin`` validation, without TensorRT.

NVIDIA's ``tensorrt-cu13-bindings`` wheel (PyPI, 1.3 MB, in the dev extra) ships the pure-Python ``tensorrt.plugin``
package beside the compiled core (``tensorrt.so``, which needs the TensorRT libraries and so cannot load here). This
test stands in for that core only: a module named ``tensorrt`` that answers every attribute with a distinct
placeholder class, and whose package path is the wheel's, so ``import tensorrt.plugin`` is NVIDIA's code, unmodified.
Importing :mod:`arl2rt.plugins.gdn.trt_plugin` then runs every ``register`` / ``autotune`` / ``impl`` /
``aot_impl`` decorator, whose checks of signatures, annotations and return types are the ones TensorRT runs; the test
compares what they parsed with our declarations (:mod:`arl2rt.plugins.gdn.plugin_spec`).

No ``from __future__ import annotations`` here: ``tensorrt.plugin`` reads the annotations as objects.
"""

import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator

import pytest

from arl2rt.plugins.gdn.plugin_spec import AOT_STAGE_PLUGINS, GDN_PLUGIN

_WHEEL_PACKAGE = "tensorrt_bindings"  # what tensorrt-cu13-bindings installs: tensorrt.so and plugin/
_OURS = "arl2rt.plugins.gdn.trt_plugin"
_TYPES = {"FP32": "float32", "FP16": "float16", "BF16": "bfloat16"}


class _CoreMeta(type):
    def __getattr__(cls, name: str):  # enum members and nested classes: trt.DataType.FLOAT, trt.Logger.WARNING
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{cls.__name__}.{name}")


class _Core(metaclass=_CoreMeta):
    """Any object of the compiled core: constructible with anything, every method a no-op."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: _Core()


_PLACEHOLDERS: dict[str, type] = {}


def _placeholder(name: str) -> type:
    # one class per name: tensorrt.plugin's plugin classes derive from several core interfaces at once
    return _PLACEHOLDERS.setdefault(name, _CoreMeta(name, (_Core,), {}))


class _CoreModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(name)


def _drop(prefixes: tuple[str, ...]) -> dict[str, types.ModuleType]:
    gone = {n: m for n, m in sys.modules.items() if n in prefixes or n.startswith(tuple(p + "." for p in prefixes))}
    for name in gone:
        del sys.modules[name]
    return gone


@pytest.fixture
def nvidia_plugin_api() -> Iterator[types.ModuleType]:
    """``tensorrt.plugin`` from the wheel over a stand-in core; every module it and our plugin module load is
    removed afterwards (and whatever was there before put back)."""
    spec = importlib.util.find_spec(_WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tensorrt-cu13-bindings is not installed (pip install tensorrt-cu13-bindings --no-deps)")
    saved = _drop(("tensorrt", _OURS))
    core = _CoreModule("tensorrt")
    core.__path__ = list(spec.submodule_search_locations)  # tensorrt.plugin is the wheel's plugin/ package
    core.__version__ = "stand-in core"
    sys.modules["tensorrt"] = core
    try:
        yield importlib.import_module("tensorrt.plugin")
    finally:
        _drop(("tensorrt", _OURS))
        gdn = sys.modules["arl2rt.plugins.gdn"]
        if hasattr(gdn, "trt_plugin"):
            delattr(gdn, "trt_plugin")
        sys.modules.update(saved)


def test_our_plugins_pass_nvidias_decorator_validation(nvidia_plugin_api):
    importlib.import_module(_OURS)  # every decorator validates as it registers; a rejection raises ValueError here
    registry = importlib.import_module("tensorrt.plugin._lib").QDP_REGISTRY
    specs = {p.qualified_name: p for p in (GDN_PLUGIN, *AOT_STAGE_PLUGINS)}
    assert set(registry) == set(specs)
    for plugin_id, spec in specs.items():
        found = registry[plugin_id]
        assert found.input_tensor_names == [t.name for t in spec.inputs], plugin_id
        assert found.input_attrs == {f.name: f.type for f in spec.fields}, plugin_id
        assert found.num_outputs == len(spec.outputs), plugin_id
        assert found.impl_func is not None, plugin_id
        assert (found.aot_impl_func is not None) is (spec in AOT_STAGE_PLUGINS), plugin_id
        assert spec.version == "1"  # tensorrt.plugin registers every creator at version "1"
    assert registry[GDN_PLUGIN.qualified_name].expects_tactic  # the JIT impl is tuned over JIT_TACTICS


def test_autotune_combinations_cover_each_position_with_its_declared_dtypes(nvidia_plugin_api):
    importlib.import_module(_OURS)
    registry = importlib.import_module("tensorrt.plugin._lib").QDP_REGISTRY
    for plugin_id, found in registry.items():
        if found.autotune_func is None:
            continue
        spec = next(p for p in (GDN_PLUGIN, *AOT_STAGE_PLUGINS) if p.qualified_name == plugin_id)
        tensors = (*spec.inputs, *spec.outputs)
        args = [None] * (len(found.input_tensor_names) + len(found.autotune_attr_names) + 1)
        for combination in found.autotune_func(*args):
            combination._generate_combinations()  # NVIDIA's expansion: rejects inconsistent dependent lengths
            assert len(combination.io_types) == len(tensors), plugin_id
            for tensor, io_types in zip(tensors, combination.io_types):
                declared = {_TYPES[t] for t in io_types.replace("*", "|").split("|")}
                assert declared == set(tensor.dtypes), (plugin_id, tensor.name)


def test_the_validation_is_live(nvidia_plugin_api):
    """A plugin whose aot_impl lacks ``tactic`` is rejected by NVIDIA's check, so passing above means something."""
    trtp = nvidia_plugin_api

    @trtp.register("arl2test::copy")
    def _desc(x: trtp.TensorDesc) -> trtp.TensorDesc:
        return x.like()

    with pytest.raises(ValueError, match="does not match the expected input arg schema"):

        @trtp.aot_impl("arl2test::copy")
        def _aot(x: trtp.TensorDesc, outputs):  # no tactic
            raise AssertionError("never called")
