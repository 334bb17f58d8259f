"""A session's view of its selected mailbox: sequence numbers, flags, \\Recent. Pure.

RFC 3501 §2.3.1.2 numbers messages 1..n per session, and the numbering may only change when
the session is told (EXPUNGE, or VANISHED under QRESYNC, RFC 7162 §3.2.10), so each session
keeps its own list of UIDs. ``apply`` takes what the store says changed since the view's
modseq and returns the untagged responses that bring the client up to date; responses are
never sent for the session's own changes twice, because the view compares with what it
already holds.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from tidings.imap import responses as r
from tidings.imap.sequence import SequenceSet
from tidings.store.mailbox import MessageRow

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


@dataclass(frozen=True, slots=True)
class ViewMessage:
    """One message as a session knows it. Immutable: sessions that selected a mailbox at the
    same modseq share one list of these (see :class:`Snapshot`), so a change is a new object
    in the changing session's own copy of the list."""

    id: int
    uid: int
    flags: tuple[str, ...]
    modseq: int
    size: int
    internaldate: datetime
    blob_id: int

    @classmethod
    def of(cls, row: MessageRow) -> ViewMessage:
        return cls(row.id, row.uid, tuple(row.flags.split()), row.modseq, row.size,
                   row.internaldate, row.blob_id)  # fmt: skip

    def has(self, flag: str) -> bool:
        folded = flag.casefold()
        return any(f.casefold() == folded for f in self.flags)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A mailbox's messages as read at one modseq, shared by the sessions that select it.

    Its lists are never changed in place: a view copies them before its first change
    (``MailboxView.shared``), so 2,000 IDLE sessions on one mailbox cost one list, not 2,000.
    """

    modseq: int
    messages: list[ViewMessage]
    uids: list[int]
    keywords: frozenset[str]

    @classmethod
    def of(cls, modseq: int, messages: list[ViewMessage]) -> Snapshot:
        keywords = {f for m in messages for f in m.flags if not f.startswith("\\")}
        return cls(modseq, messages, [m.uid for m in messages], frozenset(keywords))


class InvalidNumbers(ValueError):
    """A message sequence number past the end of the mailbox (answered with BAD)."""


@dataclass
class MailboxView:
    mailbox_id: int
    name: str
    uidvalidity: int
    read_only: bool
    modseq: int
    uidnext: int
    messages: list[ViewMessage] = field(default_factory=list)
    uids: list[int] = field(default_factory=list)
    recent: set[int] = field(default_factory=set)
    keywords: set[str] = field(default_factory=set)
    shared: bool = False
    """``messages``, ``uids`` and ``keywords`` belong to a Snapshot: copy before changing."""

    def __post_init__(self) -> None:
        if not self.shared:
            self.uids = [m.uid for m in self.messages]
            for m in self.messages:
                self._note_keywords(m.flags)

    @classmethod
    def on(
        cls, mailbox_id: int, name: str, uidvalidity: int, *, read_only: bool, uidnext: int,
        snapshot: Snapshot,
    ) -> MailboxView:  # fmt: skip
        """A view sharing ``snapshot``'s lists until its first change."""
        return cls(
            mailbox_id, name, uidvalidity, read_only, snapshot.modseq, uidnext,
            snapshot.messages, snapshot.uids, set(), set(snapshot.keywords), shared=True,
        )  # fmt: skip

    def publish(self) -> Snapshot:
        """This view's lists as a snapshot other views may share; this view copies them
        before its next change."""
        self.shared = True
        return Snapshot(self.modseq, self.messages, self.uids, frozenset())

    def adopt(self, snapshot: Snapshot) -> None:
        """Take another view's lists for the same state (built from the same list by the same
        change), dropping this view's copies."""
        self.messages = snapshot.messages
        self.uids = snapshot.uids
        self.shared = True

    def _own(self) -> None:
        if self.shared:
            self.messages = list(self.messages)
            self.uids = list(self.uids)
            self.shared = False

    # --- numbering ----------------------------------------------------------------------------

    @property
    def exists(self) -> int:
        return len(self.messages)

    @property
    def largest_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def select(self, numbers: SequenceSet, *, uid: bool) -> list[tuple[int, ViewMessage]]:
        """(sequence number, message) for a sequence set, in mailbox order.

        UID sets name only messages that exist (RFC 3501 §6.4.8: no error for absent UIDs);
        a sequence number past the end is an error (§9 seq-number), except through ``*`` in an
        empty mailbox, which names nothing.
        """
        found: list[tuple[int, ViewMessage]] = []
        if uid:
            for low, high in numbers.resolve(self.largest_uid):
                start = bisect.bisect_left(self.uids, low)
                end = bisect.bisect_right(self.uids, high)
                found.extend((i + 1, self.messages[i]) for i in range(start, end))
        else:
            count = self.exists
            for low, high in numbers.resolve(count):
                if high > count or low < 1:
                    if count == 0 and numbers.uses_star and low == 0:
                        continue
                    raise InvalidNumbers("Invalid message sequence number")
                found.extend((i, self.messages[i - 1]) for i in range(low, high + 1))
        found.sort(key=lambda pair: pair[0])
        unique: list[tuple[int, ViewMessage]] = []
        for pair in found:
            if not unique or unique[-1][0] != pair[0]:
                unique.append(pair)
        return unique

    def first_unseen(self) -> int | None:
        for seq, m in enumerate(self.messages, 1):
            if not m.has("\\Seen"):
                return seq
        return None

    def flags_of(self, m: ViewMessage) -> tuple[str, ...]:
        return (*m.flags, "\\Recent") if m.uid in self.recent else m.flags

    # --- flags offered ------------------------------------------------------------------------

    def _note_keywords(self, flags: Iterable[str]) -> bool:
        added = False
        for f in flags:
            if not f.startswith("\\") and f not in self.keywords:
                self.keywords.add(f)
                added = True
        return added

    def flag_responses(self) -> list[bytes]:
        """FLAGS and PERMANENTFLAGS (RFC 3501 §7.2.6, §7.1); keywords may be created (\\*)."""
        known = (*SYSTEM_FLAGS, *sorted(self.keywords))
        out = [r.flags(known)]
        if self.read_only:
            out.append(r.untagged_status("OK", "No permanent flags permitted",
                                         r.permanentflags_code(())))  # fmt: skip
        else:
            out.append(r.untagged_status("OK", "Flags permitted",
                                         r.permanentflags_code((*known, "\\*"))))  # fmt: skip
        return out

    # --- changes ------------------------------------------------------------------------------

    def apply(
        self,
        changed: Sequence[MessageRow],
        expunged: Iterable[int],
        modseq: int,
        *,
        recent_from: int | None,
        vanished: bool,
        with_modseq: bool,
    ) -> list[bytes]:
        """Bring the view up to date; the untagged responses that tell the client.

        ``changed``: rows with a modseq above the view's (flag changes and new messages);
        ``expunged``: UIDs of tombstones above it; ``recent_from``: the first UID that is
        \\Recent for this session among new messages (None: none are). Expunges are told
        first, highest sequence number first, so every number sent is right when read.
        """
        out: list[bytes] = []
        gone = sorted({u for u in expunged if self.seq_of(u) is not None})
        if gone:
            if vanished:
                out.append(r.vanished(gone))
            dropped = set(gone)
            for seq in range(self.exists, 0, -1):
                if self.messages[seq - 1].uid in dropped and not vanished:
                    out.append(r.expunge(seq))
            keep = [m for m in self.messages if m.uid not in dropped]
            self.messages = keep
            self.uids = [m.uid for m in keep]
            self.shared = False  # new lists of its own
            self.recent -= dropped
        new: list[ViewMessage] = []
        fetches: list[tuple[int, ViewMessage]] = []
        largest = self.largest_uid
        new_keywords = False
        for row in changed:
            found = self.seq_of(row.uid)
            if found is not None:
                m = self.messages[found - 1]
                flags = tuple(row.flags.split())
                if flags != m.flags or row.modseq != m.modseq:
                    visible = flags != m.flags
                    m = replace(m, flags=flags, modseq=row.modseq)
                    self._own()
                    self.messages[found - 1] = m
                    new_keywords |= self._note_keywords(flags)
                    if visible or with_modseq:
                        fetches.append((found, m))
            elif row.uid > largest:
                m = ViewMessage.of(row)
                new.append(m)
                new_keywords |= self._note_keywords(m.flags)
            # else: a row below the view's largest UID that the view lacks was expunged here
        if new_keywords:
            out.extend(self.flag_responses())
        for seq, m in fetches:
            out.append(self.flag_fetch(seq, m, with_modseq=with_modseq))
        if new:
            new.sort(key=lambda m: m.uid)
            self._own()
            self.messages.extend(new)
            self.uids.extend(m.uid for m in new)
            if recent_from is not None:
                self.recent.update(m.uid for m in new if m.uid >= recent_from)
            out.append(r.exists(self.exists))
            out.append(r.recent(len(self.recent)))
        self.modseq = max(self.modseq, modseq)
        if new:
            self.uidnext = max(self.uidnext, self.largest_uid + 1)
        return out

    def flag_fetch(self, seq: int, m: ViewMessage, *, with_modseq: bool) -> bytes:
        """``* n FETCH (UID u FLAGS (...) [MODSEQ (m)])``: UID always, as RFC 7162 §3.2.4
        requires under QRESYNC and every client can use."""
        items: list[tuple[str, r.Value]] = [
            ("UID", m.uid),
            ("FLAGS", r.Raw(r.flag_list(self.flags_of(m)))),
        ]
        if with_modseq:
            items.append(("MODSEQ", r.Raw(b"(%d)" % m.modseq)))
        return r.fetch(seq, items)

    def update_flags(self, uid: int, flags: str, modseq: int) -> tuple[int, ViewMessage] | None:
        """Record a change this session made itself; its sequence number and message."""
        seq = self.seq_of(uid)
        if seq is None:
            return None
        self._own()
        m = replace(self.messages[seq - 1], flags=tuple(flags.split()), modseq=modseq)
        self.messages[seq - 1] = m
        self._note_keywords(m.flags)
        return seq, m

    def numbered(self) -> Iterator[tuple[int, ViewMessage]]:
        return enumerate(self.messages, 1)
