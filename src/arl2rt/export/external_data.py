"""One weights file for all three graphs of a package: each distinct large tensor is stored once.

``denoise_step`` and ``commit_step`` hold the same weights (the whole DiT); saving each graph with its own external
data would double a 1.3B model's package. Large initializers are written here, keyed by their bytes' SHA-256, and
replaced by references into the file (ONNX external data: location, offset, length), which ``onnx``, onnxruntime and
TensorRT's parser all read relative to the .onnx file. :func:`check_external_data` checks those references when a
package is verified: a runtime reading past the end of a truncated file fails late or reads garbage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir

from arl2rt.errors import Arl2rtError

_ALIGN = 4096  # page-aligned offsets let runtimes memory-map large tensors


class SharedWeights:
    """Append-only writer of ``path``; use as a context manager, then save the graphs next to it."""

    def __init__(self, path: Path, threshold_bytes: int = 1024) -> None:
        self.path, self.threshold = Path(path), threshold_bytes
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close() / __exit__
        self._offsets: dict[bytes, tuple[int, int]] = {}
        self.tensors = 0
        self.shared = 0

    def __enter__(self) -> SharedWeights:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def nbytes(self) -> int:
        return self._file.tell() if not self._file.closed else self.path.stat().st_size

    def externalize(self, model: ir.Model) -> None:
        """Move every initializer of at least ``threshold_bytes`` into the file (in place)."""
        for value in model.graph.initializers.values():
            tensor = value.const_value
            if tensor is None or tensor.nbytes < self.threshold:
                continue
            data = tensor.tobytes()
            key = hashlib.sha256(data).digest()
            if key in self._offsets:
                self.shared += 1
            else:
                self._offsets[key] = (self._write(data), len(data))
            offset, length = self._offsets[key]
            value.const_value = ir.ExternalTensor(
                self.path.name,
                offset,
                length,
                tensor.dtype,
                shape=tensor.shape,
                name=value.name,
                base_dir=self.path.parent,
            )
            self.tensors += 1
        self._file.flush()

    def _write(self, data: bytes) -> int:
        offset = self._file.tell()
        if len(data) >= _ALIGN and offset % _ALIGN:
            self._file.write(b"\0" * (_ALIGN - offset % _ALIGN))
            offset = self._file.tell()
        self._file.write(data)
        return offset


# packed types whose byte count is not elements x itemsize; their length is checked against the file only
_SUB_BYTE = {"INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2"}


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph stores: initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _tensors(sub)


def _nbytes(tensor: onnx.TensorProto) -> int | None:
    if onnx.TensorProto.DataType.Name(tensor.data_type) in _SUB_BYTE:
        return None
    count = 1
    for d in tensor.dims:
        count *= d
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def check_external_data(path: Path, model: onnx.ModelProto, files: dict[str, int]) -> None:
    """Raise unless every tensor of ``model`` stored outside it lies inside one of ``files`` (name -> size in bytes,
    beside ``path``): a listed file, ``offset + length`` within its size, ``length`` the tensor's own size."""
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        where = f"{path}: tensor {tensor.name or '?'}"
        location = info.get("location")
        if location not in files:
            raise Arl2rtError(f"{where}: external data in {location!r}; expected one of the package's {sorted(files)}")
        size = files[location]
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else size - offset
        except ValueError:
            raise Arl2rtError(
                f"{where}: external data offset {info.get('offset')!r} / length {info.get('length')!r}; expected "
                "integers"
            ) from None
        want = _nbytes(tensor)
        if want is not None and length != want:
            raise Arl2rtError(
                f"{where}: external data length expected {want} bytes (its shape and dtype), found {length}"
            )
        if offset < 0 or offset + length > size:
            raise Arl2rtError(
                f"{where}: external data at bytes {offset}..{offset + length} of {location}, which has {size} bytes "
                "(truncated?)"
            )
