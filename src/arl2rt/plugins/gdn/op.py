"""``torch.ops.arl2.gdn_state_update``: the GDN write as one custom op.

One op, three uses: the model calls it in the clean pass, the ONNX exporter turns it into a single node (then a pass
rewrites that node per target: standard ``LinearAttention``, the TensorRT plugin node, or a decomposition), and the
torch backend dispatches it to the Triton kernel on CUDA. The CPU implementation is the pure-torch reference.
"""

from __future__ import annotations

import torch

from arl2rt.plugins.common import kernels_support
from arl2rt.plugins.gdn import chunk
from arl2rt.plugins.gdn.naive import naive_chunk_gated_delta_rule_state

OP_NAMESPACE = "arl2"
OP_NAME = "gdn_state_update"


@torch.library.custom_op(f"{OP_NAMESPACE}::{OP_NAME}", mutates_args=())
def gdn_state_update(
    k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor
) -> torch.Tensor:
    """New state after the gated delta rule over all T tokens.

    k ``[B,T,H,K]``, v ``[B,T,H,V]``, g (log decay) and beta ``[B,T,H]``, state ``[B,H,K,V]`` -> ``[B,H,K,V]``
    in the state's dtype.
    """
    return naive_chunk_gated_delta_rule_state(k, v, g, beta, state).to(state.dtype)


@gdn_state_update.register_fake
def _(k, v, g, beta, state):
    return torch.empty_like(state)


@gdn_state_update.register_kernel("cuda")
def _(k, v, g, beta, state):
    # Triton is imported on the first launch only; shapes or dtypes the kernel lacks fall back to the reference.
    if kernels_support(k.shape[-1], v.shape[-1], k.dtype):
        return chunk.chunk_gated_delta_rule_state(k, v.to(k.dtype), g, beta, state).to(state.dtype)
    return naive_chunk_gated_delta_rule_state(k, v, g, beta, state).to(state.dtype)
