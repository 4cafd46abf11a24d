"""Triton model configs as Triton's own protobuf (``tritonclient.grpc.model_config_pb2``): built as messages, written
as text (``config.pbtxt``) and parsed back with the same schema, so a config that Triton would refuse to parse (a
misspelt field, a wrong enum) is an error here, where it is written.

The sequence batcher (:func:`sequence_batching`) is the same for every model arl2rt writes: the ``oldest`` strategy,
so one model instance holds up to ``max_streams`` sequences at once and gets their ready requests as one batch, the
four control inputs (START, END, READY as int32 0/1, CORRID as uint64) and the idle timeout after which Triton forgets
a sequence that no request continued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arl2rt.errors import Arl2rtError
from arl2rt.serve import protocol as p

CONFIG_NAME = "config.pbtxt"
# arl2rt dtype -> Triton data type
DATA_TYPES = {
    "float64": "TYPE_FP64",
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "bytes": "TYPE_STRING",
    "uint64": "TYPE_UINT64",
    "bool": "TYPE_BOOL",
}


def pb2() -> Any:
    """Triton's model-config protobuf module (from tritonclient)."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise Arl2rtError(
            f"Triton model configs need tritonclient with gRPC ({exc}); pip install 'arl2rt[serve]'"
        ) from None
    return model_config_pb2


def data_type(dtype: str) -> int:
    if dtype not in DATA_TYPES:
        raise Arl2rtError(f"dtype {dtype!r}: Triton serving takes {sorted(DATA_TYPES)}")
    return pb2().DataType.Value(DATA_TYPES[dtype])


def tensor(kind: str, name: str, dtype: str, dims: list[int], *, optional: bool = False) -> Any:
    """A ``ModelInput`` (``kind="input"``) or ``ModelOutput`` without the batch dimension."""
    m = pb2()
    if kind == "input":
        return m.ModelInput(name=name, data_type=data_type(dtype), dims=dims, optional=optional)
    return m.ModelOutput(name=name, data_type=data_type(dtype), dims=dims)


def sequence_batching(*, idle_timeout: float, max_streams: int, controls: bool = True) -> Any:
    """The sequence batcher every arl2rt model uses (see the module docstring); ``controls=False`` for a model whose
    graph takes no control inputs (Triton then starts and ends sequences by itself)."""
    m = pb2()
    batching = m.ModelSequenceBatching(max_sequence_idle_microseconds=int(round(idle_timeout * 1e6)))
    control = m.ModelSequenceBatching.Control
    for name, kind in p.CONTROLS.items() if controls else ():
        if name == p.CORRID:
            entry = control(kind=control.Kind.Value(kind), data_type=data_type("uint64"))
        else:
            entry = control(kind=control.Kind.Value(kind), int32_false_true=[0, 1])
        batching.control_input.append(m.ModelSequenceBatching.ControlInput(name=name, control=[entry]))
    batching.oldest.max_candidate_sequences = max_streams
    batching.oldest.max_queue_delay_microseconds = 0
    return batching


def instance_group(device: str, count: int) -> Any:
    m = pb2()
    kind = "KIND_GPU" if device.startswith("cuda") else "KIND_CPU"
    return m.ModelInstanceGroup(kind=m.ModelInstanceGroup.Kind.Value(kind), count=count)


def to_text(config: Any) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse_config(text: str, source: str) -> Any:
    """``text`` parsed as Triton's ``ModelConfig``; an Arl2rtError naming ``source`` if it does not parse."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, pb2().ModelConfig())
    except text_format.ParseError as exc:
        raise Arl2rtError(f"{source}: not a Triton model config ({exc})") from None


def write_config(config: Any, model_dir: Path) -> Path:
    """Write ``config`` as ``model_dir/config.pbtxt`` and check that it parses back to the same message."""
    path = model_dir / CONFIG_NAME
    path.write_text(to_text(config), encoding="utf-8")
    if parse_config(path.read_text(encoding="utf-8"), str(path)) != config:
        raise Arl2rtError(f"{path}: the written config does not parse back to the config that was built")
    return path
