"""The GDN chunk size, one value for the references, the Triton kernels, the plugin nodes and the ONNX passes.

Imports nothing, so the export and AOT paths can use it where Triton is absent.
"""

CHUNK_SIZE = 64  # tokens per chunk of the chunked (WY/UT) update; the kernels' tiles are CHUNK_SIZE rows
