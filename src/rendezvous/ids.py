"""Typed identifiers: request ids (ULIDs) and model references (``name@version``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ulid import ULID

from rendezvous.errors import ConfigError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def new_request_id() -> str:
    """A new sortable request id (ULID, 26 characters, Crockford base32)."""
    return str(ULID())


def check_name(name: str, kind: str = "name") -> str:
    """Validate a model, deployment or alias name; safe to use in a path or a NATS subject."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"invalid {kind} {name!r}: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True, order=True)
class ModelRef:
    """A model version reference: ``name@3``; ``name@alias`` before resolution."""

    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse ``name@version`` or ``name@alias``.

        >>> ModelRef.parse("fraud@3")
        ModelRef(name='fraud', version=3, alias=None)
        """
        if not isinstance(text, str) or text.count("@") != 1:
            raise ConfigError(
                f"invalid model reference {text!r}: write NAME@VERSION (e.g. fraud@3) "
                "or NAME@ALIAS (e.g. fraud@champion)"
            )
        name, _, tail = text.partition("@")
        check_name(name, "model name")
        if tail.isascii() and tail.isdigit():
            if len(tail) > 9 or int(tail) < 1:
                raise ConfigError(f"invalid model version in {text[:80]!r}: versions start at "
                                  f"1 and have at most 9 digits")
            version = int(tail)
            return cls(name, version)
        check_name(tail, "alias")
        return cls(name, alias=tail)

    @property
    def resolved(self) -> bool:
        return self.version is not None

    def __str__(self) -> str:
        return f"{self.name}@{self.version if self.version is not None else self.alias}"


_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}


def ulid_ms(text: str) -> int | None:
    """The millisecond timestamp a ULID request id carries; None for any other id (ids a
    client supplied). Pure and cheap: only the 10 time characters are decoded.

    >>> ulid_ms("01ARZ3NDEKTSV4RRFFQ69G5FAV")
    1469922850259
    """
    if len(text) != 26 or text[0] > "7":  # 48 bits: the first character is at most 7
        return None
    ms = 0
    for c in text[:10]:
        v = _CROCKFORD.get(c.upper())
        if v is None:
            return None
        ms = ms * 32 + v
    if any(c.upper() not in _CROCKFORD for c in text[10:]):
        return None
    return ms
