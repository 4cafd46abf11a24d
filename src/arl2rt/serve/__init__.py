"""Serving many streams at once on Triton Inference Server (docs/serving.md).

* :mod:`.protocol`: the tensors one request and its response carry, shared by the repository, the model and the client;
* :mod:`.streams`: one Streamer per correlation ID, with idle expiry (the logic the Python-backend model hosts);
* :mod:`.python_model`: the thin Triton Python-backend adapter around it;
* :mod:`.model_config`, :mod:`.implicit_state`, :mod:`.repository`: a model repository for a model or package;
* :mod:`.server`: the ``tritonserver`` that nvidia-pytriton ships, started on loopback;
* :mod:`.client`: one stream from a server, written as it arrives.
"""
