"""The IMAP command parser: a table per command and extension, the refusals, mailbox names."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from tidings.imap import parser as p
from tidings.imap.sequence import SeqRange, SequenceSet, parse_sequence_set


def seqs(text: str) -> SequenceSet:
    return parse_sequence_set(text)


def body(
    spec: str = "",
    *,
    part: tuple[int, ...] = (),
    fields: tuple[str, ...] = (),
    peek: bool = False,
    partial: tuple[int, int] | None = None,
) -> p.BodySection:
    return p.BodySection(p.Section(part, spec or None, fields), peek, partial)


F = p.FetchItem
FLAGS, UID, ENVELOPE = F("FLAGS"), F("UID"), F("ENVELOPE")
UNSEEN = p.FlagKey("\\Seen", False)
TZ_M8 = timezone(timedelta(hours=-8))

GOOD: list[tuple[bytes, p.Command]] = [
    # RFC 3501 §6.1 any state
    (b"a CAPABILITY", p.Capability()),
    (b"a capability\r\n", p.Capability()),
    (b"a NOOP\n", p.Noop()),
    (b"a LOGOUT", p.Logout()),
    # §6.2 not authenticated
    (b"a STARTTLS", p.StartTLS()),
    (b"a AUTHENTICATE PLAIN", p.Authenticate("PLAIN")),
    (b"a authenticate plain AGFsaWNlAHNlY3JldA==", p.Authenticate("PLAIN", "AGFsaWNlAHNlY3JldA==")),
    (b"a AUTHENTICATE PLAIN =", p.Authenticate("PLAIN", "=")),  # RFC 4959: empty response
    (b"a AUTHENTICATE SCRAM-SHA-256", p.Authenticate("SCRAM-SHA-256")),
    (b"a LOGIN alice secret", p.Login("alice", "secret")),
    (b'a LOGIN "alice@example.org" "p a\\"s\\\\s"', p.Login("alice@example.org", 'p a"s\\s')),
    (b"a LOGIN {5}\r\nalice {6}\r\nsecret", p.Login("alice", "secret")),
    (b"a LOGIN {5+}\r\nalice {3+}\r\n\xc3\xa4x\r\n", p.Login("alice", "äx")),  # LITERAL+
    (b'a LOGIN alice "p\xc3\xa4ss"', p.Login("alice", "päss")),  # 8-bit quoted, leniently
    (b"a LOGIN alice {0}\r\n", p.Login("alice", "")),
    # §6.3 authenticated
    (b"a SELECT INBOX", p.Select("INBOX")),
    (b"a select inbox", p.Select("INBOX")),
    (b'a SELECT "InBoX"', p.Select("INBOX")),
    (b"a SELECT INBOX.Sent", p.Select("INBOX.Sent")),
    (b"a EXAMINE Archive", p.Select("Archive", read_only=True)),
    (b"a SELECT INBOX (CONDSTORE)", p.Select("INBOX", condstore=True)),
    (b"a SELECT INBOX (QRESYNC (67890007 90060115194045000))",
     p.Select("INBOX", qresync=p.QResync(67890007, 90060115194045000))),
    (b"a SELECT INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541))",
     p.Select("INBOX", qresync=p.QResync(67890007, 90060115194045000, seqs("41:211,214:541")))),
    (b"a SELECT INBOX (QRESYNC (67890007 90060115194045000 1:29997 (5000,7500,9000 "
     b"15000,22500,27000)))",
     p.Select("INBOX", qresync=p.QResync(67890007, 90060115194045000, seqs("1:29997"),
                                          seqs("5000,7500,9000"), seqs("15000,22500,27000")))),
    (b"a SELECT INBOX (QRESYNC (1 2 (1 3)))",
     p.Select("INBOX", qresync=p.QResync(1, 2, None, seqs("1"), seqs("3")))),
    (b"a SELECT INBOX (CONDSTORE QRESYNC (1 2))",
     p.Select("INBOX", condstore=True, qresync=p.QResync(1, 2))),
    (b"a CREATE Projects/2024", p.Create("Projects/2024")),
    (b"a CREATE Sent (USE (\\sent))", p.Create("Sent", ("\\Sent",))),  # RFC 6154
    (b"a CREATE X (USE (\\Junk \\Archive))", p.Create("X", ("\\Junk", "\\Archive"))),
    (b"a DELETE Trash/old", p.Delete("Trash/old")),
    (b"a RENAME Old New", p.Rename("Old", "New")),
    (b'a RENAME "a b" {3}\r\nc d', p.Rename("a b", "c d")),
    (b"a SUBSCRIBE News", p.Subscribe("News")),
    (b"a UNSUBSCRIBE News", p.Unsubscribe("News")),
    (b'a LIST "" *', p.List("", ("*",))),
    (b'a LIST "" ""', p.List("", ("",))),
    (b"a LIST ~/Mail/ %", p.List("~/Mail/", ("%",))),
    (b'a LIST "" INBOX/%/x*', p.List("", ("INBOX/%/x*",))),
    (b'a LIST "" "&ZeVnLIqe-/*"', p.List("", ("日本語/*",))),
    # RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154 SPECIAL-USE
    (b'a LIST () "" %', p.List("", ("%",), extended=True)),
    (b'a LIST (SUBSCRIBED) "" "*"',
     p.List("", ("*",), frozenset({"SUBSCRIBED"}), frozenset({"SUBSCRIBED"}), extended=True)),
    (b'a LIST (subscribed RECURSIVEMATCH remote) "" %',
     p.List("", ("%",), frozenset({"SUBSCRIBED", "RECURSIVEMATCH", "REMOTE"}),
            frozenset({"SUBSCRIBED"}), extended=True)),
    (b'a LIST "" ("INBOX" "Drafts" Sent/%)',
     p.List("", ("INBOX", "Drafts", "Sent/%"), extended=True)),
    (b'a LIST "" % RETURN (CHILDREN)', p.List("", ("%",), returns=frozenset({"CHILDREN"}),
                                              extended=True)),
    (b'a LIST (SPECIAL-USE) "" * RETURN (SPECIAL-USE SUBSCRIBED)',
     p.List("", ("*",), frozenset({"SPECIAL-USE"}), frozenset({"SPECIAL-USE", "SUBSCRIBED"}),
            extended=True)),
    (b'a LIST "" % RETURN (STATUS (MESSAGES UNSEEN HIGHESTMODSEQ))',
     p.List("", ("%",), returns=frozenset({"STATUS"}),
            status_items=("MESSAGES", "UNSEEN", "HIGHESTMODSEQ"), extended=True)),
    (b'a LIST "" % RETURN ()', p.List("", ("%",), extended=True)),
    (b'a LSUB "" *', p.Lsub("", "*")),
    (b"a LSUB #news. comp.mail.*", p.Lsub("#news.", "comp.mail.*")),
    (b"a STATUS INBOX (MESSAGES UIDNEXT)", p.Status("INBOX", ("MESSAGES", "UIDNEXT"))),
    (b"a STATUS Sent (messages recent uidnext uidvalidity unseen highestmodseq appendlimit size)",
     p.Status("Sent", ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN",
                       "HIGHESTMODSEQ", "APPENDLIMIT", "SIZE"))),
    (b"a APPEND INBOX {5}\r\nhello", p.Append("INBOX", b"hello")),
    (b"a APPEND INBOX {5+}\r\nhe\r\nl\r\n", p.Append("INBOX", b"he\r\nl")),
    (b"a APPEND Drafts (\\Draft \\SEEN $Label1) {2}\r\nhi",
     p.Append("Drafts", b"hi", ("\\Draft", "\\Seen", "$Label1"))),
    (b"a APPEND Drafts () {2}\r\nhi", p.Append("Drafts", b"hi")),
    (b'a APPEND saved-messages (\\Seen) " 7-Feb-1994 21:52:25 -0800" {2}\r\nhi',
     p.Append("saved-messages", b"hi", ("\\Seen",), datetime(1994, 2, 7, 21, 52, 25,
                                                             tzinfo=TZ_M8))),
    (b'a APPEND x "17-Jul-1996 02:44:25 +0000" {0}\r\n',
     p.Append("x", b"", (), datetime(1996, 7, 17, 2, 44, 25, tzinfo=UTC))),
    (b'a APPEND "my box" {1}\r\n\x00', p.Append("my box", b"\x00")),
    # §6.4 selected
    (b"a CHECK", p.Check()),
    (b"a CLOSE", p.Close()),
    (b"a UNSELECT", p.Unselect()),  # RFC 3691
    (b"a EXPUNGE", p.Expunge()),
    (b"a UID EXPUNGE 3000:3002", p.Expunge(seqs("3000:3002"))),  # RFC 4315
    (b"a COPY 2:4 MEETING", p.Copy(seqs("2:4"), "MEETING")),
    (b"a UID COPY 1:* Archive", p.Copy(seqs("1:*"), "Archive", uid=True)),
    (b"a MOVE 1,3 Trash", p.Move(seqs("1,3"), "Trash")),  # RFC 6851
    (b"a uid move 42:69 foo", p.Move(seqs("42:69"), "foo", uid=True)),
    (b"a IDLE", p.Idle()),  # RFC 2177
    (b"a NAMESPACE", p.Namespace()),
    (b'a ID ("name" "sodr" "version" "19.34" "vendor" NIL)',
     p.Id((("name", "sodr"), ("version", "19.34"), ("vendor", None)))),
    (b"a ID NIL", p.Id(None)),
    (b"a ID ()", p.Id(())),
    (b"a ENABLE CONDSTORE qresync", p.Enable(("CONDSTORE", "QRESYNC"))),  # RFC 5161
    (b'a GETQUOTA ""', p.GetQuota("")),
    (b"a GETQUOTAROOT INBOX", p.GetQuotaRoot("INBOX")),
    (b'a SETQUOTA "" (STORAGE 512)', p.SetQuota("", (("STORAGE", 512),))),
    (b'a SETQUOTA "" ()', p.SetQuota("", ())),
    # STORE (§6.4.6, RFC 7162 §3.1.3)
    (b"a STORE 2:4 +FLAGS (\\Deleted)", p.Store(seqs("2:4"), "add", ("\\Deleted",))),
    (b"a STORE 1 FLAGS (\\Seen $Junk)", p.Store(seqs("1"), "replace", ("\\Seen", "$Junk"))),
    (b"a STORE 1 FLAGS ()", p.Store(seqs("1"), "replace", ())),
    (b"a STORE 1 -FLAGS.SILENT \\Seen \\flagged",
     p.Store(seqs("1"), "remove", ("\\Seen", "\\Flagged"), silent=True)),
    (b"a UID STORE 5:* +flags.silent (foo)",
     p.Store(seqs("5:*"), "add", ("foo",), silent=True, uid=True)),
    (b"a STORE 7,5,9 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)",
     p.Store(seqs("7,5,9"), "add", ("\\Deleted",), silent=True, unchanged_since=320162338)),
    (b"a UID STORE 1 (UNCHANGEDSINCE 0) FLAGS (\\Seen)",
     p.Store(seqs("1"), "replace", ("\\Seen",), uid=True, unchanged_since=0)),
]  # fmt: skip

FETCH: list[tuple[bytes, p.Command]] = [
    (b"a FETCH 1 ALL", p.Fetch(seqs("1"), (FLAGS, F("INTERNALDATE"), F("RFC822.SIZE"), ENVELOPE))),
    (b"a FETCH 1 fast", p.Fetch(seqs("1"), (FLAGS, F("INTERNALDATE"), F("RFC822.SIZE")))),
    (b"a FETCH 1 FULL",
     p.Fetch(seqs("1"), (FLAGS, F("INTERNALDATE"), F("RFC822.SIZE"), ENVELOPE, F("BODY")))),
    (b"a FETCH 2:4 FLAGS", p.Fetch(seqs("2:4"), (FLAGS,))),
    (b"a FETCH * (UID FLAGS)", p.Fetch(seqs("*"), (UID, FLAGS))),
    (b"a FETCH 1 (FLAGS FLAGS)", p.Fetch(seqs("1"), (FLAGS,))),
    (b"a FETCH 1 (INTERNALDATE RFC822 RFC822.HEADER RFC822.SIZE RFC822.TEXT ENVELOPE BODY "
     b"BODYSTRUCTURE UID MODSEQ)",
     p.Fetch(seqs("1"), tuple(F(n) for n in ("INTERNALDATE", "RFC822", "RFC822.HEADER",
             "RFC822.SIZE", "RFC822.TEXT", "ENVELOPE", "BODY", "BODYSTRUCTURE", "UID",
             "MODSEQ")))),
    (b"a FETCH 1 BODY[]", p.Fetch(seqs("1"), (body(),))),
    (b"a FETCH 1 body.peek[]", p.Fetch(seqs("1"), (body(peek=True),))),
    (b"a FETCH 1 BODY[TEXT]", p.Fetch(seqs("1"), (body("TEXT"),))),
    (b"a FETCH 1 BODY[HEADER]", p.Fetch(seqs("1"), (body("HEADER"),))),
    (b"a FETCH 1 BODY[1]", p.Fetch(seqs("1"), (body(part=(1,)),))),
    (b"a FETCH 1 BODY[4.2.2.1]", p.Fetch(seqs("1"), (body(part=(4, 2, 2, 1)),))),
    (b"a FETCH 1 BODY[3.MIME]", p.Fetch(seqs("1"), (body("MIME", part=(3,)),))),
    (b"a FETCH 1 BODY[2.header]", p.Fetch(seqs("1"), (body("HEADER", part=(2,)),))),
    (b"a FETCH 1 BODY[4.2.TEXT]", p.Fetch(seqs("1"), (body("TEXT", part=(4, 2)),))),
    (b"a FETCH 1 (BODY.PEEK[HEADER.FIELDS (DATE FROM Subject)])",
     p.Fetch(seqs("1"), (body("HEADER.FIELDS", fields=("DATE", "FROM", "Subject"), peek=True),))),
    (b'a FETCH 1 BODY[HEADER.FIELDS.NOT ("Received" {4}\r\nX-Me)]',
     p.Fetch(seqs("1"), (body("HEADER.FIELDS.NOT", fields=("Received", "X-Me")),))),
    (b"a FETCH 1 BODY[1.HEADER.FIELDS (To)]",
     p.Fetch(seqs("1"), (body("HEADER.FIELDS", part=(1,), fields=("To",)),))),
    (b"a FETCH 1 BODY[]<0.2048>", p.Fetch(seqs("1"), (body(partial=(0, 2048)),))),
    (b"a FETCH 1 BODY.PEEK[TEXT]<100.4294967295>",
     p.Fetch(seqs("1"), (body("TEXT", peek=True, partial=(100, 4294967295)),))),
    (b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)",
     p.Fetch(seqs("1:*"), (FLAGS,), uid=True, changed_since=12345)),
    (b"a UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)",
     p.Fetch(seqs("300:500"), (FLAGS,), uid=True, changed_since=12345, vanished=True)),
    (b"a FETCH 1 (FLAGS) (CHANGEDSINCE 1)", p.Fetch(seqs("1"), (FLAGS,), changed_since=1)),
    (b"a UID FETCH 4294967295 UID", p.Fetch(seqs("4294967295"), (UID,), uid=True)),
]  # fmt: skip


def _search(criteria: bytes, key: p.SearchKey, **kw: object) -> tuple[bytes, p.Command]:
    return b"a SEARCH " + criteria, p.Search(key, **kw)  # type: ignore[arg-type]


SEARCH: list[tuple[bytes, p.Command]] = [
    _search(b"ALL", p.AllKey()),
    _search(b"answered deleted draft flagged seen recent",
            p.AndKey(tuple(p.FlagKey(f) for f in ("\\Answered", "\\Deleted", "\\Draft",
                                                  "\\Flagged", "\\Seen", "\\Recent")))),
    _search(b"UNANSWERED UNDELETED UNDRAFT UNFLAGGED UNSEEN OLD",
            p.AndKey(tuple(p.FlagKey(f, False) for f in ("\\Answered", "\\Deleted", "\\Draft",
                                                         "\\Flagged", "\\Seen", "\\Recent")))),
    _search(b"NEW", p.AndKey((p.FlagKey("\\Recent"), UNSEEN))),
    _search(b"KEYWORD $Junk", p.FlagKey("$Junk")),
    _search(b"UNKEYWORD work", p.FlagKey("work", False)),
    _search(b'FROM "Smith" TO bob CC x BCC y SUBJECT {5}\r\nhello',
            p.AndKey((p.HeaderKey("From", "Smith"), p.HeaderKey("To", "bob"),
                      p.HeaderKey("Cc", "x"), p.HeaderKey("Bcc", "y"),
                      p.HeaderKey("Subject", "hello")))),
    _search(b'HEADER Message-ID "<a@b>"', p.HeaderKey("Message-ID", "<a@b>")),
    _search(b'HEADER X-Spam ""', p.HeaderKey("X-Spam", "")),
    _search(b'BODY "hello world" TEXT x',
            p.AndKey((p.BodyKey("hello world"), p.TextKey("x")))),
    _search(b"BEFORE 1-Feb-1994", p.DateKey("internal", "before", date(1994, 2, 1))),
    _search(b'ON "29-feb-2024"', p.DateKey("internal", "on", date(2024, 2, 29))),
    _search(b"SINCE 01-Jan-2000", p.DateKey("internal", "since", date(2000, 1, 1))),
    _search(b"SENTBEFORE 1-Feb-1994 SENTON 2-Mar-1995 SENTSINCE 3-Apr-1996",
            p.AndKey((p.DateKey("sent", "before", date(1994, 2, 1)),
                      p.DateKey("sent", "on", date(1995, 3, 2)),
                      p.DateKey("sent", "since", date(1996, 4, 3))))),
    _search(b"LARGER 1024 SMALLER 4294967295",
            p.AndKey((p.SizeKey("larger", 1024), p.SizeKey("smaller", 4294967295)))),
    _search(b"1:5,*", p.SequenceKey(seqs("1:5,*"))),
    _search(b"UID 2:4,7", p.UidKey(seqs("2:4,7"))),
    _search(b"NOT SEEN", p.NotKey(p.FlagKey("\\Seen"))),
    _search(b"OR SEEN FLAGGED", p.OrKey(p.FlagKey("\\Seen"), p.FlagKey("\\Flagged"))),
    _search(b"(SEEN)", p.FlagKey("\\Seen")),
    _search(b"OR (FROM a NOT TO b) OR 1:3 NOT (UNSEEN LARGER 5) DELETED",
            p.AndKey((
                p.OrKey(p.AndKey((p.HeaderKey("From", "a"), p.NotKey(p.HeaderKey("To", "b")))),
                        p.OrKey(p.SequenceKey(seqs("1:3")),
                                p.NotKey(p.AndKey((UNSEEN, p.SizeKey("larger", 5)))))),
                p.FlagKey("\\Deleted")))),
    _search(b"NOT NOT NOT ((ALL))", p.NotKey(p.NotKey(p.NotKey(p.AllKey())))),
    _search(b"CHARSET UTF-8 SUBJECT {6}\r\n\xc3\xa4pfel",
            p.HeaderKey("Subject", "äpfel"), charset="UTF-8"),
    _search(b'charset us-ascii TEXT "x"', p.TextKey("x"), charset="US-ASCII"),
    _search(b"MODSEQ 620162338", p.ModSeqKey(620162338)),
    _search(b'MODSEQ "/flags/\\\\draft" all 620162338',
            p.ModSeqKey(620162338, "/flags/\\draft", "all")),
    _search(b"RETURN (MIN COUNT) UNSEEN", UNSEEN, returns=("MIN", "COUNT")),
    _search(b"RETURN () UNSEEN", UNSEEN, returns=("ALL",)),
    _search(b"RETURN (ALL MAX MIN COUNT) CHARSET UTF-8 ALL", p.AllKey(), charset="UTF-8",
            returns=("ALL", "MAX", "MIN", "COUNT")),
    (b"a UID SEARCH 1:100 UID 443:557", p.Search(
        p.AndKey((p.SequenceKey(seqs("1:100")), p.UidKey(seqs("443:557")))), uid=True)),
    (b"a UID SEARCH RETURN (COUNT) DELETED",
     p.Search(p.FlagKey("\\Deleted"), uid=True, returns=("COUNT",))),
]  # fmt: skip


def _input_id(value: object) -> str:
    """Test ids from the input only: a command's repr shows frozensets in hash order, which
    differs between pytest-xdist workers."""
    return repr(value) if isinstance(value, bytes) else "expected"


@pytest.mark.parametrize(("data", "command"), GOOD + FETCH + SEARCH, ids=_input_id)
def test_parse_good(data: bytes, command: p.Command) -> None:
    assert p.parse_command(data) == p.Request("a", command)
    if not data.endswith(b"\n"):
        assert p.parse_command(data + b"\r\n") == p.Request("a", command)


BAD: list[tuple[bytes, str | None, str]] = [
    (b"", None, "tag"),
    (b"\r\n", None, "tag"),
    (b"* NOOP", None, "tag"),
    (b"+a NOOP", None, "tag"),
    (b"a+ NOOP", None, "tag"),
    (b"a{ NOOP", None, "tag"),
    (b"a", "a", "Missing command"),
    (b"a ", "a", "Missing command"),
    (b"a  NOOP", "a", "Missing command"),
    (b"a XYZZY", "a", "Unknown command XYZZY"),
    (b"a UID", "a", "Expected a space"),
    (b"a UID NOOP", "a", "Unknown command UID NOOP"),
    (b"a UID CHECK", "a", "Unknown command UID CHECK"),
    (b"a NOOP now", "a", "at end of command"),
    (b"a NOOP ", "a", "at end of command"),
    (b"a CAPABILITY\r\n\r\n", "a", "at end of command"),
    (b"a LOGIN", "a", "Missing arguments to LOGIN"),
    (b"a LOGIN alice", "a", "Expected a space"),
    (b"a LOGIN alice ", "a", "Expected a password"),
    (b"a LOGIN alice secret extra", "a", "at end"),
    (b'a LOGIN "alice secret', "a", "quoted"),
    (b'a LOGIN "al\\ice" x', "a", "quoted"),
    (b'a LOGIN "al\rice" x', "a", "quoted"),
    (b"a LOGIN {5}\r\nali", "a", "Literal runs past"),
    (b"a LOGIN {5}\nalice x", "a", "Invalid literal"),
    (b"a LOGIN {99999999999999999999}\r\nx", "a", "Literal runs past"),
    (b"a LOGIN alice \xff\xfe", "a", "Expected a password"),
    (b"a LOGIN alice {2}\r\n\xff\xfe", "a", "UTF-8"),
    (b"a AUTHENTICATE", "a", "Missing arguments"),
    (b"a AUTHENTICATE PLAIN abc", "a", "base64"),
    (b"a AUTHENTICATE PLAIN ab==cd", "a", "base64"),
    (b"a SELECT", "a", "Missing arguments"),
    (b"a SELECT INBOX ()", "a", "Empty list"),
    (b"a SELECT INBOX (FOO)", "a", "Unknown SELECT parameter FOO"),
    (b"a SELECT INBOX (QRESYNC (0 1))", "a", "out of range"),
    (b"a SELECT INBOX (QRESYNC (1 0))", "a", "out of range"),
    (b"a SELECT INBOX (QRESYNC (1))", "a", "Expected a space"),
    (b"a SELECT INBOX (QRESYNC (1 2 3:4 5))", "a", "seq-match-data"),
    (b"a SELECT INBOX (QRESYNC (1 2) QRESYNC (1 2))", "a", "Unknown SELECT parameter"),
    (b"a SELECT caf\xc3\xa9", "a", "at end of command"),
    (b"a SELECT \"caf\xc3\xa9\"", "a", "Invalid mailbox name"),
    (b"a SELECT &AGE-", "a", "Invalid mailbox name"),  # encodes plain "a"
    (b"a SELECT &Jjo", "a", "unterminated"),
    (b"a SELECT &Jjo!-", "a", "Invalid mailbox name"),
    (b"a SELECT &2D0-", "a", "Invalid mailbox name"),  # a lone high surrogate
    (b"a SELECT %", "a", "Expected a mailbox name"),
    (b"a CREATE x (USE (\\Bogus))", "a", "Unknown special-use attribute"),
    (b"a CREATE x (FOO)", "a", "Unknown CREATE parameter"),
    (b"a RENAME a", "a", "Expected a space"),
    (b'a LIST ""', "a", "Expected a space"),
    (b'a LIST "" ()', "a", "Empty list"),
    (b'a LIST (FOO) "" %', "a", "Unknown LIST selection option FOO"),
    (b'a LIST (RECURSIVEMATCH) "" %', "a", "RECURSIVEMATCH needs another"),
    (b'a LIST (RECURSIVEMATCH REMOTE) "" %', "a", "RECURSIVEMATCH needs another"),
    (b'a LIST "" % RETURN (FOO)', "a", "Unknown LIST return option"),
    (b'a LIST "" % RETURN (STATUS ())', "a", "Empty list"),
    (b'a LIST "" % RETURN (STATUS (BOGUS))', "a", "Unknown STATUS item"),
    (b'a LIST "" % WHATEVER', "a", "RETURN"),
    (b"a STATUS INBOX ()", "a", "Empty list"),
    (b"a STATUS INBOX (MESSAGES FOO)", "a", "Unknown STATUS item FOO"),
    (b"a STATUS INBOX", "a", "Expected a space"),
    (b'a APPEND INBOX "hello"', "a", "Invalid date-time"),
    (b"a APPEND INBOX hello", "a", "literal"),
    (b"a APPEND INBOX (\\Recent) {1}\r\nx", "a", "\\Recent cannot be set"),
    (b"a APPEND INBOX (\\Bogus) {1}\r\nx", "a", "Unknown system flag"),
    (b'a APPEND INBOX "31-Feb-2020 00:00:00 +0000" {1}\r\nx', "a", "Invalid date"),
    (b'a APPEND INBOX "01-Feb-2020 24:00:00 +0000" {1}\r\nx', "a", "Invalid date-time"),
    (b'a APPEND INBOX "01-Feb-2020 23:00:00 +2400" {1}\r\nx', "a", "Invalid date-time"),
    (b'a APPEND INBOX "01-Foo-2020 23:00:00 +0000" {1}\r\nx', "a", "Invalid date"),
    (b"a APPEND INBOX {2}\r\nx", "a", "Literal runs past"),
    (b"a APPEND INBOX {1}\r\nxy", "a", "at end"),
    (b"a APPEND INBOX ~{1}\r\nx", "a", "literal"),
    (b"a FETCH", "a", "Missing arguments"),
    (b"a FETCH 1", "a", "Expected a space"),
    (b"a FETCH 0 FLAGS", "a", "Invalid sequence set"),
    (b"a FETCH 1:x FLAGS", "a", "Invalid sequence set"),
    (b"a FETCH 1 (FLAGS (UID))", "a", "Expected a FETCH attribute"),
    (b"a FETCH $ FLAGS", "a", "SEARCHRES"),
    (b"a FETCH 1 ()", "a", "Empty list"),
    (b"a FETCH 1 (ALL)", "a", "Unknown FETCH attribute ALL"),
    (b"a FETCH 1 BOGUS", "a", "Unknown FETCH attribute BOGUS"),
    (b"a FETCH 1 BINARY[]", "a", "Unknown FETCH attribute"),
    (b"a FETCH 1 (FLAGS", "a", "Expected a space"),
    (b"a FETCH 1 BODY[", "a", "Expected ]"),
    (b"a FETCH 1 BODY[0]", "a", "Invalid section part"),
    (b"a FETCH 1 BODY[01]", "a", "Invalid section part"),
    (b"a FETCH 1 BODY[1.]", "a", "Invalid section"),
    (b"a FETCH 1 BODY[MIME]", "a", "MIME needs a part"),
    (b"a FETCH 1 BODY[FOO]", "a", "Invalid section"),
    (b"a FETCH 1 BODY[HEADER.FIELDS]", "a", "Expected a space"),
    (b"a FETCH 1 BODY[HEADER.FIELDS ()]", "a", "Empty list"),
    (b'a FETCH 1 BODY[HEADER.FIELDS ("a:b")]', "a", "header field name"),
    (b"a FETCH 1 BODY[]<0>", "a", "Expected . in the partial"),
    (b"a FETCH 1 BODY[]<0.0>", "a", "out of range"),
    (b"a FETCH 1 BODY[]<4294967296.1>", "a", "out of range"),
    (b"a FETCH 1 BODY.PEEK", "a", "Unknown FETCH attribute"),  # BODY.PEEK needs a section
    (b"a FETCH 1 (FLAGS) (VANISHED)", "a", "VANISHED needs UID FETCH"),
    (b"a UID FETCH 1 (FLAGS) (VANISHED)", "a", "VANISHED needs UID FETCH with CHANGEDSINCE"),
    (b"a FETCH 1 (FLAGS) (CHANGEDSINCE 5 VANISHED)", "a", "VANISHED needs UID FETCH"),
    (b"a FETCH 1 (FLAGS) (CHANGEDSINCE 0)", "a", "out of range"),
    (b"a FETCH 1 (FLAGS) (CHANGEDSINCE 9223372036854775808)", "a", "out of range"),
    (b"a FETCH 1 (FLAGS) (FOO)", "a", "Unknown FETCH modifier"),
    (b"a STORE 1 FLAGS", "a", "Expected a space"),
    (b"a STORE 1 +FLAGS (\\Recent)", "a", "\\Recent cannot be set"),
    (b"a STORE 1 +FLAGS \\Seen \\Recent", "a", "\\Recent cannot be set"),
    (b"a STORE 1 XFLAGS (\\Seen)", "a", "Expected FLAGS"),
    (b"a STORE 1 FLAGS.LOUD (\\Seen)", "a", "Expected FLAGS"),
    (b"a STORE 1 (FOO 1) FLAGS (\\Seen)", "a", "Unknown STORE modifier"),
    (b"a STORE 1 +FLAGS (\\*)", "a", "Expected a flag"),
    (b"a STORE 1 +FLAGS (a b", "a", "Expected a space"),
    (b"a COPY 1", "a", "Expected a space"),
    (b"a UID EXPUNGE", "a", "Missing arguments"),
    (b"a EXPUNGE 1", "a", "at end"),
    (b"a SEARCH", "a", "Missing arguments"),
    (b"a SEARCH BOGUS", "a", "Unknown search key BOGUS"),
    (b"a SEARCH FROM", "a", "Expected a space"),
    (b"a SEARCH OR SEEN", "a", "Expected a space"),
    (b"a SEARCH NOT", "a", "Expected a space"),
    (b"a SEARCH ()", "a", "Empty list"),
    (b"a SEARCH (SEEN", "a", "Expected a space"),
    (b"a SEARCH SEEN)", "a", "at end"),
    (b"a SEARCH BEFORE 1-Feb-94", "a", "Expected a date"),
    (b"a SEARCH BEFORE 30-Feb-1994", "a", "Invalid date"),
    (b'a SEARCH BEFORE "1-Feb-1994', "a", "Expected a date"),
    (b"a SEARCH LARGER x", "a", "Expected a size"),
    (b"a SEARCH LARGER 4294967296", "a", "out of range"),
    (b"a SEARCH KEYWORD \\Seen", "a", "Expected a keyword"),
    (b"a SEARCH UID x", "a", "Expected a sequence set"),
    (b"a SEARCH RETURN (SAVE) ALL", "a", "Unsupported SEARCH return option SAVE"),
    (b"a SEARCH RETURN (MIN)", "a", "Expected a space"),
    (b"a SEARCH MODSEQ \"/flags/x\" bogus 5", "a", "Invalid entry type"),
    (b"a SEARCH TEXT {2}\r\n\xff\xff", "a", "UTF-8"),
    (b"a SEARCH " + b"NOT " * 200 + b"ALL", "a", "Too deeply nested"),
    (b"a SEARCH " + b"(" * 200 + b"ALL" + b")" * 200, "a", "Too deeply nested"),
    (b"a SEARCH " + b"OR ALL " * 200 + b"ALL", "a", "Too deeply nested"),
    (b"a ENABLE", "a", "Missing arguments"),
    (b"a ID", "a", "Missing arguments"),
    (b"a ID (\"name\")", "a", "Expected a space"),
    (b"a SETQUOTA \"\" (STORAGE)", "a", "Expected a space"),
    (b"a SETQUOTA \"\" (STORAGE x)", "a", "Expected a limit"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "tag", "reason"), BAD, ids=repr)
def test_parse_bad(data: bytes, tag: str | None, reason: str) -> None:
    with pytest.raises(p.ParseError) as info:
        p.parse_command(data)
    error = info.value
    assert reason in error.reason
    assert error.tag == tag
    assert (error.status, error.code, error.fatal) == ("BAD", None, False)
    assert "\r" not in error.reason and "\n" not in error.reason


def test_unknown_charset_is_no_badcharset() -> None:
    with pytest.raises(p.ParseError) as info:
        p.parse_command(b"a SEARCH CHARSET KOI8-R TEXT x")
    error = info.value
    assert (error.tag, error.status, error.code) == ("a", "NO", "BADCHARSET (US-ASCII UTF-8)")


def test_fetch_helpers() -> None:
    fetch = p.parse_command(b"a FETCH 1 (BODY.PEEK[HEADER.FIELDS (From To)]<10.20> UID)").command
    assert isinstance(fetch, p.Fetch) and not fetch.sets_seen
    section = fetch.attributes[0]
    assert isinstance(section, p.BodySection)
    assert section.response_name() == "BODY[HEADER.FIELDS (From To)]<10>"
    for seen in (b"BODY[]", b"RFC822", b"RFC822.TEXT", b"(UID BODY[1.MIME])"):
        command = p.parse_command(b"a FETCH 1 " + seen).command
        assert isinstance(command, p.Fetch) and command.sets_seen, seen
    for peek in (b"RFC822.HEADER", b"BODY", b"BODYSTRUCTURE"):
        command = p.parse_command(b"a FETCH 1 " + peek).command
        assert isinstance(command, p.Fetch) and not command.sets_seen, peek
    part = p.BodySection(p.Section((1, 2), "MIME"))
    assert part.response_name() == "BODY[1.2.MIME]"


def test_search_uses_modseq() -> None:
    with_modseq = p.parse_command(b"a SEARCH OR SEEN NOT (MODSEQ 5)").command
    without = p.parse_command(b"a SEARCH OR SEEN NOT (UID 5)").command
    assert isinstance(with_modseq, p.Search) and with_modseq.uses_modseq
    assert isinstance(without, p.Search) and not without.uses_modseq


def test_long_sequence_set_is_one_range() -> None:
    fetch = p.parse_command(b"a UID FETCH 1:4294967295 UID").command
    assert isinstance(fetch, p.Fetch)
    assert fetch.sequence_set.ranges == (SeqRange(1, 4294967295),)


# --- mailbox names: RFC 3501 §5.1.3 modified UTF-7 ----------------------------------------------

NAMES = [
    ("INBOX", "INBOX"),
    ("", ""),
    ("a&b", "a&-b"),
    ("&", "&-"),
    ("&&", "&-&-"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("Entwürfe", "Entw&APw-rfe"),
    ("£", "&AKM-"),
    ("😀", "&2D3eAA-"),  # outside the BMP: a surrogate pair
    ("a😀b日", "a&2D3eAA-b&ZeU-"),
    ("tab\there", "tab&AAk-here"),
    ("é&ü", "&AOk-&-&APw-"),
    ("/", "/"),
]


@pytest.mark.parametrize(("name", "wire"), NAMES)
def test_mailbox_names_both_ways(name: str, wire: str) -> None:
    assert p.encode_mailbox_name(name) == wire
    assert p.decode_mailbox_name(wire) == name
    assert p.decode_mailbox_name(wire.encode("ascii")) == name


NOT_NAMES = ["&", "&AGE-", "&U,BTFw", "&U,BTF", "&Jjo!-", "&2D0-", "&3gA-", "&AKM-&AKM-",
             "&AKN-", "é", "a\x00b", "&A-", "&AA-"]  # fmt: skip


@pytest.mark.parametrize("wire", NOT_NAMES)
def test_mailbox_names_rejected(wire: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        p.decode_mailbox_name(wire)


def test_inbox_case_insensitive_only_whole_name() -> None:
    assert p.parse_command(b"a SELECT iNbOx").command == p.Select("INBOX")
    assert p.parse_command(b"a SELECT inbox/Sub").command == p.Select("inbox/Sub")
    assert p.parse_command(b"a DELETE Inboxes").command == p.Delete("Inboxes")
