"""IMAP sequence sets: parsing, resolving against ``*``, compression, and cheap huge ranges."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.imap.sequence import (
    InvalidSequenceSet,
    SeqRange,
    SequenceSet,
    compress,
    compress_ordered,
    parse_sequence_set,
)

PARSED = [
    ("1", (SeqRange(1, 1),)),
    ("*", (SeqRange(None, None),)),
    ("1:*", (SeqRange(1, None),)),
    ("*:4", (SeqRange(None, 4),)),
    ("5:3", (SeqRange(5, 3),)),
    ("2,4:7,9,12:*", (SeqRange(2, 2), SeqRange(4, 7), SeqRange(9, 9), SeqRange(12, None))),
    ("4294967295", (SeqRange(4294967295, 4294967295),)),
]


@pytest.mark.parametrize(("text", "ranges"), PARSED)
def test_parse(text: str, ranges: tuple[SeqRange, ...]) -> None:
    parsed = parse_sequence_set(text)
    assert parsed.ranges == ranges
    assert str(parsed) == text
    assert parse_sequence_set(text.encode()) == parsed


NOT_SETS = ["", "0", "1:0", "01", "4294967296", "1,", ",1", "1::2", "1:2:3", "a", "1 2", "$",
            "1,$", "-1", "１", "99999999999"]  # fmt: skip


@pytest.mark.parametrize("text", NOT_SETS)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidSequenceSet):
        parse_sequence_set(text)


RESOLVED = [
    ("1:*", 10, ((1, 10),)),
    ("*", 10, ((10, 10),)),
    ("*:8", 10, ((8, 10),)),
    ("12:*", 10, ((10, 12),)),  # RFC 3501 §6.4.8: 559:* includes the last UID
    ("5:3,1,2", 10, ((1, 5),)),
    ("1,3,5", 10, ((1, 1), (3, 3), (5, 5))),
    ("1:4,3:9", 10, ((1, 9),)),
    ("1:*", 0, ((0, 1),)),
]


@pytest.mark.parametrize(("text", "largest", "intervals"), RESOLVED)
def test_resolve(text: str, largest: int, intervals: tuple[tuple[int, int], ...]) -> None:
    assert parse_sequence_set(text).resolve(largest) == intervals


def test_huge_range_is_cheap() -> None:
    whole = parse_sequence_set("1:4294967295")
    assert whole.resolve(5) == ((1, 4294967295),)
    assert whole.contains(4000000000, 5)
    assert list(whole.numbers(5, limit=5)) == [1, 2, 3, 4, 5]
    assert list(itertools.islice(whole.numbers(5), 3)) == [1, 2, 3]
    assert not parse_sequence_set("7:9").contains(6, 100)
    assert parse_sequence_set("2:*").uses_star and not parse_sequence_set("2:3").uses_star


def test_numbers_with_zero_largest_names_nothing() -> None:
    assert list(parse_sequence_set("*").numbers(0, limit=0)) == []


@pytest.mark.parametrize(
    ("numbers", "text"),
    [([], ""), ([1], "1"), ([1, 2, 3, 4, 5, 7, 9, 10, 11, 12], "1:5,7,9:12"),
     ([12, 3, 3, 2, 1], "1:3,12"), ([4294967295, 4294967294], "4294967294:4294967295")],
)  # fmt: skip
def test_compress(numbers: list[int], text: str) -> None:
    assert compress(numbers) == text


def test_compress_ordered_keeps_order() -> None:
    assert compress_ordered([5, 6, 7, 3, 1, 2]) == "5:7,3,1:2"


@settings(max_examples=300, deadline=None)
@given(st.sets(st.integers(min_value=1, max_value=200), max_size=60))
def test_compress_round_trips(numbers: set[int]) -> None:
    text = compress(numbers)
    if not numbers:
        assert text == ""
        return
    parsed = parse_sequence_set(text)
    assert set(parsed.numbers(200)) == numbers


ENDPOINT = st.integers(1, 50) | st.none()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(ENDPOINT, ENDPOINT), min_size=1), st.integers(0, 60))
def test_resolve_matches_contains(pairs: list[tuple[int | None, int | None]], largest: int) -> None:
    sset = SequenceSet(tuple(SeqRange(a, b) for a, b in pairs))
    assert parse_sequence_set(str(sset)) == sset
    named = set(sset.numbers(largest))
    for n in range(1, 61):
        assert (n in named) == sset.contains(n, largest)
