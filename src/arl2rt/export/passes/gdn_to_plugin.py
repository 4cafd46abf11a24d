"""``tensorrt`` target: the GDN write becomes our TensorRT plugin's node.

Cases: every ``arl2::gdn_state_update`` node. The exporter already emits the node in the plugin's namespace (domain)
under the plugin's name; this pass gives it exactly the attributes the plugin declares (:data:`GDN_PLUGIN`): the
parser's ``plugin_namespace`` and ``plugin_version`` plus each plugin field, replacing whatever it had.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from arl2rt.export.passes.base import CountedResult, gdn_nodes
from arl2rt.plugins.gdn.plugin_spec import GDN_PLUGIN, PluginSpec

logger = logging.getLogger(__name__)


class GdnToPluginPass(ir.passes.InPlacePass):
    def __init__(self, plugin: PluginSpec = GDN_PLUGIN, **fields: int | float | str) -> None:
        super().__init__()
        self.plugin = plugin
        self.attributes = plugin.node_attributes(**fields)

    def call(self, model: ir.Model) -> CountedResult:
        nodes = gdn_nodes(model.graph)
        for node in nodes:
            node.attributes.clear()
            for attr in ir.convenience.convert_attributes(self.attributes):
                node.attributes[attr.name] = attr
        model.graph.opset_imports[self.plugin.namespace] = int(self.plugin.version)
        if nodes:
            logger.info("GDN -> plugin %s v%s: %d nodes", self.plugin.qualified_name, self.plugin.version, len(nodes))
        return CountedResult(model, bool(nodes), len(nodes))
