"""One weights file for all three graphs of a package: each distinct large tensor is stored once.

``denoise_step`` and ``commit_step`` hold the same weights (the whole DiT); saving each graph with its own external
data would double a 1.3B model's package. Large initializers are written here, keyed by their bytes' SHA-256, and
replaced by references into the file (ONNX external data: location, offset, length), which ``onnx``, onnxruntime and
TensorRT's parser all read relative to the .onnx file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx_ir as ir

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
