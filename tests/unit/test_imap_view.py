"""The selected-mailbox view (sequence numbers, changes told once) and LIST matching."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tidings.imap.listing import Folder, list_folders, lsub_folders, pattern_regex
from tidings.imap.sequence import parse_sequence_set
from tidings.imap.view import InvalidNumbers, MailboxView, ViewMessage
from tidings.store.mailbox import MessageRow

WHEN = datetime(2026, 11, 23, tzinfo=UTC)


def row(uid: int, flags: str = "", modseq: int | None = None) -> MessageRow:
    return MessageRow(uid * 10, uid, modseq or uid, flags, 100, WHEN, uid * 10)


def view(*uids: int, read_only: bool = False) -> MailboxView:
    return MailboxView(1, "INBOX", 7, read_only, max(uids, default=1), max(uids, default=0) + 1,
                       [ViewMessage.of(row(u)) for u in uids])  # fmt: skip


def test_sequence_sets_and_uid_sets() -> None:
    v = view(3, 5, 9)
    assert [s for s, _ in v.select(parse_sequence_set("2:*"), uid=False)] == [2, 3]
    assert [m.uid for _, m in v.select(parse_sequence_set("4:100"), uid=True)] == [5, 9]
    # RFC 3501 §6.4.8: "n:*" names the largest UID even when it is below n.
    assert [m.uid for _, m in v.select(parse_sequence_set("20:*"), uid=True)] == [9]
    assert v.select(parse_sequence_set("1,1,1"), uid=False) == v.select(
        parse_sequence_set("1"), uid=False
    )
    with pytest.raises(InvalidNumbers):
        v.select(parse_sequence_set("4"), uid=False)
    assert view().select(parse_sequence_set("1:*"), uid=False) == []


def test_expunges_are_told_highest_first_and_new_mail_after() -> None:
    v = view(1, 2, 3, 4)
    out = v.apply([row(5, modseq=9)], [2, 3, 77], 9, recent_from=5, vanished=False,
                  with_modseq=False)  # fmt: skip
    assert out == [b"* 3 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n", b"* 3 EXISTS\r\n", b"* 1 RECENT\r\n"]
    assert v.uids == [1, 4, 5] and v.modseq == 9 and v.uidnext == 6


def test_vanished_under_qresync() -> None:
    v = view(1, 2, 3)
    out = v.apply([], [1, 3], 5, recent_from=None, vanished=True, with_modseq=True)
    assert out == [b"* VANISHED 1,3\r\n"]
    assert v.uids == [2]


def test_own_changes_are_not_told_twice() -> None:
    v = view(1, 2)
    v.update_flags(2, "\\Seen", 5)
    assert v.apply([row(2, "\\Seen", 5)], [], 5, recent_from=None, vanished=False,
                   with_modseq=False) == []  # fmt: skip
    out = v.apply([row(1, "\\Flagged $Work", 6)], [], 6, recent_from=None, vanished=False,
                  with_modseq=True)  # fmt: skip
    assert out[0].startswith(b"* FLAGS (")  # a new keyword is announced first
    assert b"$Work" in out[0]
    assert out[-1] == b"* 1 FETCH (UID 1 FLAGS (\\Flagged $Work) MODSEQ (6))\r\n"


def test_recent_flag_is_shown() -> None:
    v = view(1)
    v.recent.add(1)
    assert v.flags_of(v.messages[0]) == ("\\Recent",)


FOLDERS = [
    Folder("INBOX", None, True),
    Folder("Sent", "\\Sent", True),
    Folder("Projects/2026/Q4", None, False),
    Folder("Projects/Old", None, True),
]


def names(listed: list) -> list[str]:  # type: ignore[type-arg]
    return [x.name for x in listed]


def test_list_wildcards_and_implied_parents() -> None:
    assert names(list_folders(FOLDERS, "", ["*"])) == [
        "INBOX", "Projects", "Projects/2026", "Projects/2026/Q4", "Projects/Old", "Sent",
    ]  # fmt: skip
    top = list_folders(FOLDERS, "", ["%"])
    assert names(top) == ["INBOX", "Projects", "Sent"]
    projects = next(x for x in top if x.name == "Projects")
    assert projects.attributes == ("\\Noselect", "\\HasChildren")
    assert list_folders(FOLDERS, "", ["%"], extended=True)[1].attributes[0] == "\\NonExistent"
    assert names(list_folders(FOLDERS, "Projects/", ["%"])) == ["Projects/2026", "Projects/Old"]
    assert names(list_folders(FOLDERS, "", ["inbox"])) == ["INBOX"]
    sent = list_folders(FOLDERS, "", ["Sent"])[0]
    assert sent.attributes == ("\\HasNoChildren", "\\Sent")


def test_list_selection_options() -> None:
    subscribed = list_folders(FOLDERS, "", ["*"], subscribed_only=True, return_subscribed=True)
    assert names(subscribed) == ["INBOX", "Projects/Old", "Sent"]
    recursive = list_folders(FOLDERS, "", ["%"], subscribed_only=True, recursive_match=True,
                             return_subscribed=True)  # fmt: skip
    assert [(x.name, x.child_info) for x in recursive] == [
        ("INBOX", False), ("Projects", True), ("Sent", False),
    ]  # fmt: skip
    assert names(list_folders(FOLDERS, "", ["*"], special_use_only=True)) == ["Sent"]


def test_lsub() -> None:
    assert names(lsub_folders(FOLDERS, "", "*")) == ["INBOX", "Projects/Old", "Sent"]
    top = lsub_folders(FOLDERS, "", "%")
    assert [(x.name, x.attributes) for x in top] == [
        ("INBOX", ()), ("Projects", ("\\Noselect",)), ("Sent", ()),
    ]  # fmt: skip


def test_pattern_special_characters_are_literal() -> None:
    assert pattern_regex("", "a.b").fullmatch("a.b")
    assert not pattern_regex("", "a.b").fullmatch("axb")
    assert pattern_regex("", "%").fullmatch("") is not None


def test_views_share_a_snapshot_until_they_change() -> None:
    from tidings.imap.view import Snapshot

    snapshot = Snapshot.of(3, [ViewMessage.of(row(1)), ViewMessage.of(row(2, "$Work"))])
    one = MailboxView.on(1, "INBOX", 7, read_only=False, uidnext=3, snapshot=snapshot)
    two = MailboxView.on(1, "INBOX", 7, read_only=False, uidnext=3, snapshot=snapshot)
    assert one.messages is two.messages and one.keywords == {"$Work"}
    # Nothing new: nothing copied.
    assert one.apply([row(2, "$Work", 2)], [], 3, recent_from=None, vanished=False,
                     with_modseq=False) == []  # fmt: skip
    assert one.messages is snapshot.messages
    # A change is the changing view's own; the snapshot and the other view keep theirs.
    one.update_flags(1, "\\Seen", 4)
    assert one.messages is not snapshot.messages
    assert snapshot.messages[0].flags == () and two.messages[0].flags == ()
    out = two.apply([row(1, "\\Seen", 4)], [], 4, recent_from=None, vanished=False,
                    with_modseq=False)  # fmt: skip
    assert out == [b"* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n"]
    assert snapshot.messages[0].flags == ()


def test_sessions_making_the_same_move_share_the_result() -> None:
    from tidings.imap.session import ImapService, ImapSettings
    from tidings.imap.view import Snapshot

    service = ImapService(None, ImapSettings("mx.test"), None, None, None)  # type: ignore[arg-type]
    snapshot = Snapshot.of(2, [ViewMessage.of(row(1)), ViewMessage.of(row(2))])
    views = [
        MailboxView.on(1, "INBOX", 7, read_only=False, uidnext=3, snapshot=snapshot)
        for _ in range(3)
    ]
    for v in views:
        base = v.messages
        out = v.apply([row(3, modseq=4)], [1], 4, recent_from=3, vanished=False,
                      with_modseq=False)  # fmt: skip
        assert out == [b"* 1 EXPUNGE\r\n", b"* 2 EXISTS\r\n", b"* 1 RECENT\r\n"]
        service.share(v, base)
    assert views[1].messages is views[0].messages is views[2].messages
    assert views[2].uids == [2, 3]
    # One view's own change stays its own.
    views[0].update_flags(2, "\\Seen", 5)
    assert views[1].messages[0].flags == () and views[0].messages[0].flags == ("\\Seen",)


def test_sessions_reaching_one_state_by_different_steps_share_it_again() -> None:
    """IDLE sessions that wake at different moments take different steps to the same modseq;
    without sharing again each would keep its own copy of the list for good (bench/load.py
    saw memory grow with every delivery)."""
    from tidings.imap.session import ImapService, ImapSettings
    from tidings.imap.view import Snapshot

    service = ImapService(None, ImapSettings("mx.test"), None, None, None)  # type: ignore[arg-type]
    snapshot = Snapshot.of(2, [ViewMessage.of(row(1)), ViewMessage.of(row(2))])
    early, late = (
        MailboxView.on(1, "INBOX", 7, read_only=False, uidnext=3, snapshot=snapshot)
        for _ in range(2)
    )
    steps = [([row(3, modseq=3)], 3), ([row(4, modseq=4), row(1, "\\Seen", 4)], 4)]
    for changed, modseq in steps:  # woken by each delivery
        base = early.messages
        early.apply(changed, [], modseq, recent_from=None, vanished=False, with_modseq=False)
        service.share(early, base)
    base = late.messages  # woken once, after both
    late.apply([row(3, modseq=3), row(4, modseq=4), row(1, "\\Seen", 4)], [], 4,
               recent_from=None, vanished=False, with_modseq=False)  # fmt: skip
    assert late.messages is not early.messages and late.messages == early.messages
    service.share(late, base)
    assert late.messages is early.messages and late.uids is early.uids
    # Still each one's own to change.
    late.update_flags(2, "\\Flagged", 5)
    assert early.messages[1].flags == ()


def test_a_select_snapshot_is_dropped_once_the_mailbox_moves_past_it() -> None:
    """A SELECT snapshot older than a view's state can serve no later SELECT; kept, it pinned
    every message it listed after the views had expunged them (bench/load.py: memory grew
    until each mailbox's turned-over messages were held twice)."""
    from tidings.imap.session import ImapService, ImapSettings
    from tidings.imap.view import Snapshot

    service = ImapService(None, ImapSettings("mx.test"), None, None, None)  # type: ignore[arg-type]
    snapshot = Snapshot.of(2, [ViewMessage.of(row(1)), ViewMessage.of(row(2))])
    service.remember(1, snapshot)
    service.remember(2, Snapshot.of(5, [ViewMessage.of(row(5))]))
    v = MailboxView.on(1, "INBOX", 7, read_only=False, uidnext=3, snapshot=snapshot)
    service.share(v, v.messages)  # nothing changed yet: still the one a SELECT may reuse
    assert service.snapshot(1, 2) is snapshot
    base = v.messages
    v.apply([row(3, modseq=3)], [1], 3, recent_from=None, vanished=False, with_modseq=False)
    service.share(v, base)
    assert 1 not in service.snapshots and service.snapshot(1, 2) is None
    assert service.snapshot(2, 5) is not None  # other mailboxes' stay
    assert v.uids == [2, 3]
