"""A flow source format added from outside fedaux: a fedaux store saved under the suffix ``.flows``."""

from fedaux.data.flows import FlowCollection
from fedaux.data.formats import FLOW_READERS, FlowReader


def _is_flows_file(path):
    return path.is_file() and path.suffix == ".flows"


def _read(path, data_cfg):
    return FlowCollection.load(path), []


FLOW_READERS.register("flows_file")(FlowReader("a fedaux store named *.flows", detect=_is_flows_file, read=_read,
                                                priority=5))
