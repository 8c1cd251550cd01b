"""The label convention shared by data and model: which value means "no label here"."""

IGNORE_INDEX = -100  # the default ignore_index of torch.nn.CrossEntropyLoss: a sample without a main label
