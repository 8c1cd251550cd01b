"""The flow-source reader family: how one source format is recognised and read (``data.format``).

The registry lives here, below every reader: readers register themselves in their own modules
(:mod:`fedaux.data.capture`, :mod:`fedaux.data.certta`, :mod:`fedaux.data.sources`) and none of
them imports another to do it. Detection asks readers by :attr:`FlowReader.priority`, so the
order never depends on which module was imported first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedaux.data.flows import FlowCollection
from fedaux.registry import Registry


@dataclass(frozen=True)
class FlowReader:
    """How to recognise and read one source format.

    Attributes:
        description: the format in words, for messages and ``fedaux-data info``.
        detect: ``path -> bool``, from the content; must be cheap and never raise.
        read: ``(path, data_cfg) -> (flows, messages of bad flows skipped)``; ``data_cfg`` is the
            ``data`` config section (``on_bad_flow``, ``capture.*``, ...).
        priority: detection order (lower first).
    """

    description: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, Any], tuple[FlowCollection, list[str]]]
    priority: int = 50  # detection asks lower numbers first: binary formats first, loose layouts last


FLOW_READERS: Registry[FlowReader] = Registry("flow source format", "data.format")




def readers_by_priority() -> list[tuple[str, FlowReader]]:
    """The registered readers in detection order."""
    return sorted(FLOW_READERS.items(), key=lambda item: item[1].priority)
