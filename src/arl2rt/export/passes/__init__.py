"""Graph passes that turn the one export into a target's graph: one concern per module, each an onnx_ir pass.

``export/targets.py`` chains them per target; every pass returns a :class:`~arl2rt.export.passes.base.CountedResult`
whose ``count`` (how often it fired) goes into the package manifest.
"""
