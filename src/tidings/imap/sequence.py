"""IMAP sequence sets (RFC 3501 §9 ``sequence-set``) as ranges, never as expanded lists.

``1:4294967295`` is one range here; the session resolves ``*`` against the mailbox's current
largest sequence number or UID and works on merged intervals (or compiles them to SQL
``BETWEEN``), so a hostile set costs what its text costs, not what it spans.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

# RFC 3501 §9: nz-number is a 32-bit unsigned integer other than zero.
MAX_NUMBER = 4294967295

_NUMBER = r"(?:[1-9][0-9]{0,9}|\*)"
_SET = re.compile(rf"{_NUMBER}(?::{_NUMBER})?(?:,{_NUMBER}(?::{_NUMBER})?)*")


class InvalidSequenceSet(ValueError):
    """Text that is not a sequence set; the message is the reason for the client."""


@dataclass(frozen=True, slots=True)
class SeqRange:
    """``start:end`` as written (either order, RFC 3501 §9); ``None`` stands for ``*``."""

    start: int | None
    end: int | None

    def resolve(self, largest: int) -> tuple[int, int]:
        """The closed interval this range names once ``*`` is ``largest`` (low end first)."""
        a = largest if self.start is None else self.start
        b = largest if self.end is None else self.end
        return (a, b) if a <= b else (b, a)

    def __str__(self) -> str:
        a = "*" if self.start is None else str(self.start)
        if self.start == self.end:
            return a
        b = "*" if self.end is None else str(self.end)
        return f"{a}:{b}"


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A parsed ``sequence-set``: the ranges in the order the client wrote them."""

    ranges: tuple[SeqRange, ...]

    @property
    def uses_star(self) -> bool:
        """RFC 3501 §6.4.8: ``*`` in a UID set means the last UID, even past the range start."""
        return any(r.start is None or r.end is None for r in self.ranges)

    def resolve(self, largest: int) -> tuple[tuple[int, int], ...]:
        """Sorted, merged, disjoint closed intervals, with ``*`` taken as ``largest``.

        With an empty mailbox (``largest == 0``) a ``*`` resolves to 0, which names no
        message; whether that is an error (sequence numbers, RFC 3501 §9) is the session's call.
        """
        intervals = sorted(r.resolve(largest) for r in self.ranges)
        merged: list[tuple[int, int]] = []
        for low, high in intervals:
            if merged and low <= merged[-1][1] + 1:
                if high > merged[-1][1]:
                    merged[-1] = (merged[-1][0], high)
            else:
                merged.append((low, high))
        return tuple(merged)

    def contains(self, number: int, largest: int) -> bool:
        return any(low <= number <= high for low, high in (r.resolve(largest) for r in self.ranges))

    def numbers(self, largest: int, limit: int | None = None) -> Iterator[int]:
        """Ascending numbers named by the set, lazily, clamped to ``1..limit`` when given.

        Pass the mailbox size (or the largest UID) as ``limit`` so that a huge range costs
        nothing beyond the messages that exist.
        """
        for low, high in self.resolve(largest):
            top = high if limit is None else min(high, limit)
            yield from range(max(low, 1), top + 1)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.ranges)


def parse_sequence_set(text: str | bytes) -> SequenceSet:
    """Parse ``sequence-set``; ``$`` (RFC 5182 SEARCHRES) is not supported and is rejected."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidSequenceSet("Invalid sequence set") from None
    if "$" in text:
        raise InvalidSequenceSet("SEARCHRES ($) is not supported")
    if not _SET.fullmatch(text):
        raise InvalidSequenceSet(f"Invalid sequence set: {text[:40]}")
    ranges: list[SeqRange] = []
    for part in text.split(","):
        first, _, second = part.partition(":")
        start = _number(first)
        ranges.append(SeqRange(start, _number(second) if second else start))
    return SequenceSet(tuple(ranges))


def _number(text: str) -> int | None:
    if text == "*":
        return None
    value = int(text)
    if value > MAX_NUMBER:
        raise InvalidSequenceSet(f"Number out of range: {text}")
    return value


def compress(numbers: Iterable[int]) -> str:
    """Sorted, de-duplicated numbers as the shortest set text: ``1:5,7,9:12``."""
    return compress_ordered(sorted(set(numbers)))


def compress_ordered(numbers: Sequence[int]) -> str:
    """Numbers in the given order, runs of consecutive ascending ones as ranges.

    RFC 4315 §3 COPYUID pairs the n-th source UID with the n-th destination UID, so the two
    sets must keep the order of the pairs rather than each being sorted on its own.
    """
    parts: list[str] = []
    index = 0
    while index < len(numbers):
        start = end = numbers[index]
        index += 1
        while index < len(numbers) and numbers[index] == end + 1:
            end = numbers[index]
            index += 1
        parts.append(str(start) if start == end else f"{start}:{end}")
    return ",".join(parts)
