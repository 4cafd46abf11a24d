"""arl2rt: deploy ARL2 hybrid-attention video diffusion models through ONNX and TensorRT, checked against PyTorch."""

from arl2rt.errors import Arl2rtError

__version__ = "0.1.0"

__all__ = ["Arl2rtError", "__version__"]
