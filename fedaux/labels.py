"""Batch conventions shared by data and model: which label means "none", which key names the flow."""

IGNORE_INDEX = -100  # the default ignore_index of torch.nn.CrossEntropyLoss: a sample without a main label
FLOW_KEY = "flow_index"  # the batch key of each window's flow (flow-level metrics average over it)
