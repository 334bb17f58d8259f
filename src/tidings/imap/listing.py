"""LIST and LSUB: which names a pattern matches and with which attributes. Pure.

Names are hierarchical with ``/`` (RFC 3501 §5.1.1). A name that only exists as the parent of
others (``a`` when only ``a/b`` was created, or after ``a`` was deleted) is listed with
``\\Noselect`` (``\\NonExistent`` in RFC 5258 extended LIST), so clients can draw the tree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DELIMITER = "/"


@dataclass(frozen=True, slots=True)
class Folder:
    name: str
    special_use: str | None
    subscribed: bool


@dataclass(frozen=True, slots=True)
class Listed:
    name: str
    attributes: tuple[str, ...]
    exists: bool
    child_info: bool = False  # RFC 5258 CHILDINFO ("SUBSCRIBED")


def pattern_regex(reference: str, pattern: str) -> re.Pattern[str]:
    """RFC 3501 §6.3.8: reference and pattern joined; ``*`` matches anything, ``%`` anything
    but the delimiter. INBOX matches case-insensitively (§5.1)."""
    full = reference + pattern
    out = []
    for char in full:
        if char == "*":
            out.append(".*")
        elif char == "%":
            out.append("[^/]*")
        else:
            out.append(re.escape(char))
    text = "".join(out)
    if full[:5].upper() == "INBOX" and (len(full) == 5 or full[5] in "/*%"):
        text = "(?:INBOX|inbox|[Ii][Nn][Bb][Oo][Xx])" + "".join(out[5:])
    return re.compile(text, re.DOTALL)


def _parents(name: str) -> Iterable[str]:
    parts = name.split(DELIMITER)
    for i in range(1, len(parts)):
        yield DELIMITER.join(parts[:i])


def list_folders(
    folders: Sequence[Folder],
    reference: str,
    patterns: Sequence[str],
    *,
    subscribed_only: bool = False,
    special_use_only: bool = False,
    recursive_match: bool = False,
    return_subscribed: bool = False,
    return_special_use: bool = True,
    extended: bool = False,
) -> list[Listed]:
    """The LIST answer (RFC 3501 §6.3.8, RFC 5258, RFC 6154), in name order, INBOX first."""
    regexes = [pattern_regex(reference, p) for p in patterns]
    by_name = {f.name: f for f in folders}
    implied = {p for f in folders for p in _parents(f.name)} - by_name.keys()
    has_children = {p for f in folders for p in _parents(f.name)}
    subscribed_below = {p for f in folders if f.subscribed for p in _parents(f.name)}
    out: list[Listed] = []
    for name in sorted(by_name.keys() | implied, key=lambda n: (n != "INBOX", n)):
        matched = any(rx.fullmatch(name) for rx in regexes)
        if not matched:
            continue
        folder = by_name.get(name)
        child_info = False
        if subscribed_only and (folder is None or not folder.subscribed):
            if not (recursive_match and name in subscribed_below):
                continue
            child_info = True
        if special_use_only and (folder is None or folder.special_use is None):
            continue
        attributes: list[str] = []
        if folder is None:
            attributes.append("\\NonExistent" if extended else "\\Noselect")
        attributes.append("\\HasChildren" if name in has_children else "\\HasNoChildren")
        if folder is not None and folder.subscribed and return_subscribed:
            attributes.append("\\Subscribed")
        if folder is not None and folder.special_use and return_special_use:
            attributes.append(folder.special_use)
        out.append(Listed(name, tuple(attributes), folder is not None, child_info))
    return out


def lsub_folders(folders: Sequence[Folder], reference: str, pattern: str) -> list[Listed]:
    """RFC 3501 §6.3.9: subscribed names; a parent matched by ``%`` whose children are
    subscribed but which is not is listed ``\\Noselect``."""
    rx = pattern_regex(reference, pattern)
    subscribed = {f.name for f in folders if f.subscribed}
    parents = {p for n in subscribed for p in _parents(n)} - subscribed
    out: list[Listed] = []
    for name in sorted(subscribed | parents, key=lambda n: (n != "INBOX", n)):
        if not rx.fullmatch(name):
            continue
        if name in subscribed:
            out.append(Listed(name, (), True))
        elif "%" in pattern:
            out.append(Listed(name, ("\\Noselect",), False))
    return out
