"""``data.capture.filter``: which flows of a capture to keep, in the words capture tools use.

A subset of tcpdump's filter language, applied to whole flows (a flow's "src" is the side that
sent its first packet)::

    udp port 443                      QUIC
    tcp and dst port 443              TLS flows opened towards port 443
    host 10.0.0.1 or net 2001:db8::/32
    not (udp and portrange 5000-6000)

Primitives: ``tcp``, ``udp``, ``ip`` (IPv4), ``ip6``, ``[src|dst] host ADDR``, ``[src|dst] net
CIDR``, ``[src|dst] port N``, ``[src|dst] portrange N-M``; combined with ``and``/``&&``,
``or``/``||``, ``not``/``!`` and parentheses.

Example:
    >>> keep = compile_filter("udp and dst port 443")
    >>> keep(FlowKey("udp", "10.0.0.2", 50000, "142.250.1.1", 443))
    True
    >>> keep(FlowKey("tcp", "10.0.0.2", 50000, "142.250.1.1", 443))
    False
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from fedaux.errors import ConfigError


@dataclass(frozen=True)
class FlowKey:
    """A flow's protocol and endpoints, ``src`` being the side that sent the first packet."""

    proto: str  # "tcp" | "udp"
    src: str
    sport: int
    dst: str
    dport: int


Predicate = Callable[[FlowKey], bool]
_TOKEN = re.compile(r"\s*(\(|\)|&&|\|\||!|[^\s()!]+)")


def compile_filter(text: str, key: str = "data.capture.filter") -> Predicate:
    """A predicate on :class:`FlowKey` for a filter expression; empty text keeps every flow.

    Raises:
        ConfigError: naming ``key``, the expression and where it stops making sense.
    """
    tokens = _TOKEN.findall(text or "")
    if not tokens:
        return lambda flow: True
    parser = _Parser(tokens, text, key)
    predicate = parser.expression()
    if parser.peek() is not None:
        parser.fail(f"unexpected {parser.peek()!r}")
    return predicate


class _Parser:
    def __init__(self, tokens: list[str], text: str, key: str) -> None:
        self.tokens, self.i, self.text, self.key = tokens, 0, text, key

    def fail(self, why: str) -> None:
        raise ConfigError(
            f"{self.key}={self.text!r}: {why} (at word {self.i + 1}); write e.g. 'udp port 443', "
            "'tcp and dst port 443', 'host 10.0.0.1 or net 10.1.0.0/16', 'not portrange 5000-6000'"
        )

    def peek(self) -> str | None:
        return self.tokens[self.i].lower() if self.i < len(self.tokens) else None

    def take(self) -> str:
        word = self.peek()
        if word is None:
            self.fail("the expression ends too early")
        self.i += 1
        return self.tokens[self.i - 1]

    def expression(self) -> Predicate:
        left = self.conjunction()
        while self.peek() in ("or", "||"):
            self.take()
            right = self.conjunction()
            left = (lambda a, b: lambda f: a(f) or b(f))(left, right)
        return left

    def conjunction(self) -> Predicate:
        left = self.negation()
        while self.peek() is not None and self.peek() not in ("or", "||", ")"):
            if self.peek() in ("and", "&&"):
                self.take()
            right = self.negation()  # tcpdump also reads juxtaposition ("udp port 443") as "and"
            left = (lambda a, b: lambda f: a(f) and b(f))(left, right)
        return left

    def negation(self) -> Predicate:
        if self.peek() in ("not", "!"):
            self.take()
            inner = self.negation()
            return lambda f: not inner(f)
        if self.peek() == "(":
            self.take()
            inner = self.expression()
            if self.take() != ")":
                self.fail("missing ')'")
            return inner
        return self.primitive()

    def primitive(self) -> Predicate:
        word = self.take().lower()
        if word in ("tcp", "udp"):
            return lambda f: f.proto == word
        if word in ("ip", "ip6"):
            version = 4 if word == "ip" else 6
            return lambda f: ipaddress.ip_address(f.src).version == version
        side = None
        if word in ("src", "dst"):
            side, word = word, self.take().lower()
        if word == "port":
            port = self._number(self.take())
            return self._sided(side, lambda a, p: p == port)
        if word == "portrange":
            bounds = self.take()
            lo, sep, hi = bounds.partition("-")
            if not sep:
                self.fail(f"portrange {bounds!r} is not of the form N-M")
            low, high = self._number(lo), self._number(hi)
            return self._sided(side, lambda a, p: low <= p <= high)
        if word == "host":
            value = self.take()
            try:
                host = ipaddress.ip_address(value)
            except ValueError:
                self.fail(f"host {value!r} is not an IP address (names are not resolved)")
            return self._sided(side, lambda a, p: ipaddress.ip_address(a) == host)
        if word == "net":
            value = self.take()
            try:
                net = ipaddress.ip_network(value, strict=False)
            except ValueError:
                self.fail(f"net {value!r} is not a network such as 10.0.0.0/8")
            return self._sided(side, lambda a, p: ipaddress.ip_address(a) in net)
        self.fail(f"unknown word {word!r}")
        raise AssertionError  # fail() raised

    def _number(self, word: str) -> int:
        if not word.isdigit() or not 0 <= int(word) <= 65535:
            self.fail(f"{word!r} is not a port number (0-65535)")
        return int(word)

    @staticmethod
    def _sided(side: str | None, test: Callable[[str, int], bool]) -> Predicate:
        if side == "src":
            return lambda f: test(f.src, f.sport)
        if side == "dst":
            return lambda f: test(f.dst, f.dport)
        return lambda f: test(f.src, f.sport) or test(f.dst, f.dport)
