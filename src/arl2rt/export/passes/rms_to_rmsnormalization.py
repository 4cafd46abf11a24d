"""onnxruntime targets: each RMSNorm as the standard ``RMSNormalization`` op (opset 23) instead of its decomposition.

The exporter writes an RMSNorm out as Cast, Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul, Cast, Mul: nine kernels on
onnxruntime's CUDA EP, which fuses none of them (its own RMSNorm fusion looks for a Div, not a Reciprocal). Together
with the other unfused pointwise work they were most of an onnxruntime block on the H100
(benchmarks/results/ort_cuda.md run 2: Add 25 %, Cast 13 %, Mul 9 %). ``RMSNormalization`` is one kernel on the CUDA
EP (fp32, fp16, bf16, with input and scale of one type) and on the CPU EP, normalising in fp32 (``stash_type``).

Cases: onnxscript's RMSNorm pattern (normalise in a wider type, optional casts around it, then scale) matches each
norm; a match becomes ``RMSNormalization(x, scale, axis=-1, epsilon, stash_type)`` when x and the scale share a
type (what the CUDA kernel takes), else it stays decomposed. Below opset 23 the pass does nothing. In 16-bit graphs the
fused op scales in fp32 before its one rounding where the decomposition rounded before scaling: results differ by
bf16/fp16 rounding, not more.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions.rms_normalization import RmsNormFusion

from arl2rt.export.passes.base import CountedResult, default_opset

logger = logging.getLogger(__name__)

RMS_NORMALIZATION_OPSET = 23


class _StandardRmsNorm(RmsNormFusion):
    """onnxscript's RMSNorm pattern, rewritten to the standard op (its own rewrite emits onnxruntime's
    ``SimplifiedLayerNormalization``, which the onnx checker does not know)."""

    def check(self, op, x, scale, epsilon, compute_dtype, target_dtype, **rest) -> pattern.MatchResult:
        result = super().check(op, x, scale, epsilon, compute_dtype, target_dtype, **rest)
        if result and x.dtype != scale.dtype:
            return pattern.MatchResult().fail("RMSNormalization's CUDA kernel takes x and scale of one type", scale)
        return result

    def rewrite(self, op, x, scale, epsilon, **_):
        eps = float(epsilon.const_value.numpy().reshape(()))  # the check proved it a scalar constant
        return op.RMSNormalization(x, scale, axis=-1, epsilon=eps, stash_type=self._stash_dtype)


_RULES = pattern.RewriteRuleSet(
    [_StandardRmsNorm.rule(f"RmsNormToStandard{i}", _mul_order=order) for i, order in enumerate((False, True))]
)


class RmsToRmsNormalizationPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> CountedResult:
        if default_opset(model) < RMS_NORMALIZATION_OPSET:
            return CountedResult(model, False, 0)
        count = _RULES.apply_to_model(model)
        if count:
            logger.info("RMSNorm -> RMSNormalization: %d nodes", count)
        return CountedResult(model, bool(count), count)
