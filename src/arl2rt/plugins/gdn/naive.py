"""The pure-torch references that the Triton kernels in this package are checked against.

They live in :mod:`arl2rt.model.gated_delta` (the model uses them too); this module gives them the ``naive_`` names
that sit beside the fast kernels, as flash-linear-attention does.
"""

from arl2rt.model.gated_delta import block_read as naive_block_read
from arl2rt.model.gated_delta import chunk_gated_delta_rule as naive_chunk_gated_delta_rule
from arl2rt.model.gated_delta import chunk_gated_delta_rule_state as naive_chunk_gated_delta_rule_state
from arl2rt.model.gated_delta import recurrent_gated_delta_rule as naive_recurrent_gated_delta_rule

__all__ = [
    "naive_block_read",
    "naive_chunk_gated_delta_rule",
    "naive_chunk_gated_delta_rule_state",
    "naive_recurrent_gated_delta_rule",
]
