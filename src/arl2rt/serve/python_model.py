"""The Triton Python-backend model: ``TritonPythonModel``, which the repository's ``model.py`` re-exports.

A thin adapter: it reads the settings from the model config, builds a :class:`~arl2rt.serve.served.ServedModel`,
turns each Triton request into a :class:`~arl2rt.serve.served.Request` and each answer into output tensors; a user
error becomes that request's error response (the other requests of the batch are answered). Everything else lives in
:mod:`arl2rt.serve.served` and :mod:`arl2rt.serve.streams`, tested without a server.

``triton_python_backend_utils`` exists only inside the backend's stub process: it is imported when Triton calls in.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from arl2rt.errors import Arl2rtError
from arl2rt.serve import protocol as p
from arl2rt.serve.served import Request, ServedModel, ServeSettings
from arl2rt.serve.streams import Block, Reaper


def _pb() -> Any:
    import triton_python_backend_utils as pb_utils

    return pb_utils


def _input(request: Any, name: str) -> np.ndarray | None:
    tensor = _pb().get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _scalar(request: Any, name: str) -> int | None:
    value = _input(request, name)
    return None if value is None else int(value.reshape(-1)[0])


def parse_request(request: Any) -> Request:
    """The :class:`Request` a Triton request makes (inputs have the batch dimension of one stream in front)."""
    prompt, context = _input(request, p.PROMPT), _input(request, p.CONTEXT)
    corrid = _scalar(request, p.CORRID)
    return Request(
        corrid=corrid if corrid is not None else int(request.correlation_id()),
        block=_scalar(request, p.BLOCK),
        start=bool(_scalar(request, p.START)),
        end=bool(_scalar(request, p.END)),
        seed=_scalar(request, p.SEED),
        prompt=None if prompt is None else bytes(prompt.reshape(-1)[0]).decode("utf-8"),
        context=None if context is None else torch.from_numpy(np.ascontiguousarray(context)),
    )


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        settings = ServeSettings.from_json(config["parameters"][p.SETTINGS_PARAMETER]["string_value"])
        if settings.device.startswith("cuda") and args.get("model_instance_kind") == "GPU":
            settings.device = f"cuda:{args['model_instance_device_id']}"
        if int(np.__version__.split(".")[0]) >= 2:  # arl2rt serve start refuses this; a hand-started server may not
            _pb().Logger.log_warn(
                f"arl2rt: numpy {np.__version__} in the Python backend stub: a stub built for numpy 1 (nvidia-pytriton "
                "0.7.0's) passes wrong tensors under numpy 2 (docs/serving.md §5)"
            )
        torch.set_num_threads(settings.threads)  # the stub process runs this instance alone
        self.outputs = {o["name"] for o in config["output"]}
        self.model = ServedModel(settings)
        self.reaper = Reaper(self.model.table, on_expired=self._expired)
        self.reaper.start()

    def _expired(self, corrids: list[int]) -> None:
        _pb().Logger.log_info(f"arl2rt: freed idle streams {corrids} (idle > {self.model.table.idle_timeout:g} s)")

    def _tensors(self, request: Any, block: Block) -> list[Any]:
        pb = _pb()
        wanted = set(request.requested_output_names() or self.outputs) & self.outputs
        values = {
            p.LATENTS: lambda: block.latents,
            p.FRAMES: lambda: block.frames,
            p.STATE_BYTES: lambda: torch.tensor([[block.state_bytes]]),
            p.STREAMS: lambda: torch.tensor([[block.streams]]),
        }
        return [pb.Tensor(name, values[name]().detach().cpu().numpy()) for name in sorted(wanted)]

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = _pb()
        responses, answered = [], []
        with self.model.table.lock:
            for request in requests:
                try:
                    parsed = parse_request(request)
                    block = self.model.answer(parsed)
                    responses.append(pb.InferenceResponse(output_tensors=self._tensors(request, block)))
                    answered.append(parsed.corrid)
                except (Arl2rtError, UnicodeDecodeError) as exc:
                    responses.append(pb.InferenceResponse(error=pb.TritonError(str(exc))))
            for corrid in answered:  # every response leaves now: the idle clock starts here
                self.model.table.touch(corrid)
        return responses

    def finalize(self) -> None:
        self.reaper.stop()
        self.model.close()
