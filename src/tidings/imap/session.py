"""The IMAP server: connections, the RFC 3501 state machine, and the commands it runs.

A session is not authenticated → authenticated → selected → logout (RFC 3501 §3). Parsing is
``parser.py``'s and wire syntax ``responses.py``'s; FETCH items come from ``fetch.py``,
SEARCH matching from ``search.py``, the selected mailbox's numbering from ``view.py``; the store
functions in ``store/mailbox.py`` and ``store/folders.py`` do the database work, each command
in one transaction. Nothing is answered OK before the change it reports has committed.

Other sessions' changes (new mail, flags, expunges, here or in another process) ring the
session's watch on its selected mailbox (``store/notify.py``); the session then asks the
store what changed since its modseq and tells the client when the protocol allows: after any
command, and at once while IDLE (RFC 2177). Expunges wait while FETCH, STORE or SEARCH runs
(RFC 3501 §7.4.1).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from tidings.auth import (
    LOGIN_PASSWORD_CHALLENGE,
    LOGIN_USERNAME_CHALLENGE,
    Authenticator,
    LoginRefused,
    SaslError,
    decode_base64,
    decode_plain,
    decode_utf8,
)
from tidings.connection import ClientConnection, ConnectionClosed
from tidings.imap import fetch as f
from tidings.imap import parser as p
from tidings.imap import responses as r
from tidings.imap import search as s
from tidings.imap.listing import Folder, list_folders, lsub_folders
from tidings.imap.sequence import SequenceSet
from tidings.imap.view import InvalidNumbers, MailboxView, Snapshot, ViewMessage
from tidings.mime import MessageInfo, SearchHeaders, analyze, envelope_sexp, stored_form
from tidings.store import folders as fo
from tidings.store import mailbox as mb
from tidings.store.db import Store, StoreError, describe_db_error, is_storage_full
from tidings.store.notify import MailboxEvents, MailboxWatch

log = logging.getLogger(__name__)

# FETCH and SEARCH read bodies in chunks of this many messages / bytes: memory stays bounded.
CHUNK_MESSAGES = 200
CHUNK_BYTES = 8 * 1024 * 1024
# A session in IDLE looks at its mailbox at least this often even without a notice.
IDLE_POLL = 30.0
SASL_MECHANISMS = ("PLAIN", "LOGIN")
# Mailboxes whose last-read snapshot the service keeps for the next SELECT.
MAX_SNAPSHOTS = 256

NOT_AUTHENTICATED = "not authenticated"
AUTHENTICATED = "authenticated"
SELECTED = "selected"

_ANY = (p.Capability, p.Noop, p.Logout, p.Id)
_NOT_AUTH = (p.StartTLS, p.Authenticate, p.Login)
_AUTH = (
    p.Select, p.Create, p.Delete, p.Rename, p.Subscribe, p.Unsubscribe, p.List, p.Lsub,
    p.Status, p.Append, p.Idle, p.Namespace, p.Enable, p.GetQuota, p.GetQuotaRoot, p.SetQuota,
)  # fmt: skip
_SELECTED = (p.Check, p.Close, p.Unselect, p.Expunge, p.Search, p.Fetch, p.Store, p.Copy, p.Move)
ALLOWED: dict[str, tuple[type, ...]] = {
    NOT_AUTHENTICATED: _ANY + _NOT_AUTH,
    AUTHENTICATED: _ANY + _AUTH,
    SELECTED: _ANY + _AUTH + _SELECTED,
}


@dataclass(frozen=True)
class ImapSettings:
    hostname: str
    timeout: float = 1800.0
    max_line: int = p.MAX_LINE
    max_literal: int = p.MAX_LITERAL
    max_append: int = p.MAX_APPEND
    allow_insecure_auth: bool = False
    # BAD replies, and commands before login, after which the session is closed (0: no limit).
    max_errors: int = 20
    max_junk_commands: int = 100


@dataclass(frozen=True, slots=True)
class Change:
    """What the store says changed in a mailbox from modseq ``since`` to ``until``."""

    mailbox_id: int
    since: int
    until: int
    gone: list[int]
    changed: list[mb.MessageRow]


class ImapError(Exception):
    """A command refused: the tagged NO (or BAD) to send."""

    def __init__(self, text: str, code: str | None = None, status: str = "NO") -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.status = status


# --- the connection ------------------------------------------------------------------------------


class Connection(ClientConnection):
    """One client connection: bytes in through a CommandReader, bytes out with flow control.

    The reader is replaced after STARTTLS, so nothing sent before the handshake can be taken
    as a command of the protected session (RFC 3501 §6.2.1).
    """

    protocol_name = "imap"

    def __init__(self, service: ImapService, implicit_tls: bool) -> None:
        super().__init__(implicit_tls, service.connections)
        self.service = service
        self.reader = service.new_reader()

    def refusal(self, reason: str) -> bytes:
        return r.bye(reason, r.UNAVAILABLE)

    def run_session(self) -> Coroutine[Any, Any, None]:
        return Session(self.service, self).run()

    def take_input(self, data: bytes) -> int:
        self.reader.feed(data)
        return self.reader.pending_bytes

    def drop_input(self) -> None:
        self.reader = self.service.new_reader()

    async def wait_for_data(self) -> None:
        """Until more input arrives after the last ``will_read``; ConnectionClosed at its end."""
        if self.at_eof:
            raise ConnectionClosed
        await self.wait_readable()
        if self.at_eof and not self.reader.pending_bytes:
            raise ConnectionClosed

    async def next_event(self) -> p.ReadEvent:
        while True:
            self.will_read()
            event = self.reader.next_event()
            if not isinstance(event, p.NeedMore):
                if not isinstance(event, p.SendContinuation):
                    self.command_done()
                return event
            await self.wait_for_data()

    async def next_line(self) -> p.ReadEvent:
        while True:
            self.will_read()
            event = self.reader.next_line()
            if not isinstance(event, p.NeedMore):
                self.command_done()
                return event
            await self.wait_for_data()


# --- the session ---------------------------------------------------------------------------------


class Session:
    """One IMAP conversation, from greeting to close."""

    def __init__(self, service: ImapService, conn: Connection) -> None:
        self.service = service
        self.settings = service.settings
        self.store = service.store
        self.conn = conn
        self.state = NOT_AUTHENTICATED
        self.account: str | None = None
        self.account_id = 0
        self.enabled: set[str] = set()
        self.view: MailboxView | None = None
        self.watch: MailboxWatch | None = None
        self.bad_commands = 0
        self.commands_before_login = 0
        self.done = False
        self.out: list[bytes] = []

    # --- the loop -------------------------------------------------------------------------------

    @property
    def timeout(self) -> float:
        """RFC 3501 §5.4: at least 30 minutes once logged in; a stranger gets a tenth."""
        if self.state == NOT_AUTHENTICATED:
            return self.settings.timeout / 10
        return self.settings.timeout

    async def run(self) -> None:
        try:
            caps = r.capability_code(self.capabilities())
            self.send(r.untagged_status("OK", f"{self.settings.hostname} Tidings IMAP4rev1 ready",
                                        caps))  # fmt: skip
            await self.flush()
            while not self.done:
                try:
                    async with asyncio.timeout(self.timeout):
                        event = await self.conn.next_event()
                except TimeoutError:
                    self.send(r.bye("Autologout; idle for too long"))
                    break
                await self.handle(event)
                await self.flush()
        except (ConnectionClosed, ConnectionError, ssl.SSLError, OSError) as e:
            log.debug("imap %s: connection ended: %s", self.conn.peer, e)
        except TimeoutError:
            log.info("imap %s: client stopped reading; closing", self.conn.peer)
        except Exception:
            log.exception("imap %s: session failed", self.conn.peer)
            with contextlib.suppress(Exception):
                self.send(r.bye("Internal server error", r.SERVERBUG))
                await self.flush()
        finally:
            self.end()

    def end(self) -> None:
        self.deselect()
        with contextlib.suppress(Exception):
            self.conn.write(b"".join(self.out))
        self.out.clear()
        self.conn.close()

    def send(self, data: bytes) -> None:
        self.out.append(data)

    async def flush(self) -> None:
        if self.out:
            data = b"".join(self.out)
            self.out.clear()
            self.conn.write(data)
        async with asyncio.timeout(self.timeout):
            await self.conn.drain()

    async def handle(self, event: p.ReadEvent) -> None:
        if isinstance(event, p.SendContinuation):
            self.send(r.continuation("Ready for literal data"))
            return
        if isinstance(event, p.ReadError):
            self.bad_input(event.error)
            return
        assert isinstance(event, p.CommandReady)  # next_event never gives a LineReady
        try:
            request = p.parse_command(event.data)
        except p.ParseError as e:
            self.bad_input(e)
            return
        await self.dispatch(request)

    def bad_input(self, error: p.ParseError) -> None:
        reply = r.error_response(error)
        if error.status == "BAD":
            self.bad_commands += 1
        self.send(reply)
        if error.fatal:
            self.send(r.bye("Cannot go on reading"))
            self.done = True
        else:
            self.check_error_count()

    def check_error_count(self) -> None:
        limit = self.settings.max_errors
        if limit and self.bad_commands >= limit and not self.done:
            self.send(r.bye("Too many errors; closing the connection"))
            self.done = True

    async def dispatch(self, request: p.Request) -> None:
        command = request.command
        tag = request.tag
        name = type(command).__name__.upper()
        if self.state == NOT_AUTHENTICATED:
            self.commands_before_login += 1
            limit = self.settings.max_junk_commands
            if limit and self.commands_before_login > limit:
                self.send(r.bye("Too many commands without logging in; closing the connection"))
                self.done = True
                return
        if not isinstance(command, ALLOWED[self.state]):
            self.bad_commands += 1
            self.send(r.bad(tag, f"{name} is not valid in the {self.state} state"))
            self.check_error_count()
            return
        handler: Callable[[str, Any], Awaitable[None]] = getattr(
            self, "do_" + type(command).__name__
        )
        try:
            await handler(tag, command)
        except ImapError as e:
            if e.status == "BAD":
                self.bad_commands += 1
                self.send(r.bad(tag, e.text, e.code))
                self.check_error_count()
            else:
                self.send(r.no(tag, e.text, e.code))
        except (SQLAlchemyError, StoreError) as e:
            # RFC 5530 §3: UNAVAILABLE, "a subsystem is down" — the database, or its disk when
            # full (not OVERQUOTA: no user's quota is at fault; not LIMIT: retrying once space
            # is freed succeeds). The session stays usable: the next command tries again.
            log.error("imap %s: %s: %s", self.conn.peer, name, describe_db_error(e))
            reason = "Mail storage is full" if is_storage_full(e) else "Temporary server failure"
            self.send(r.no(tag, f"{reason}, try again later", r.UNAVAILABLE))

    # --- any state ------------------------------------------------------------------------------

    def capabilities(self) -> list[str]:
        caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE"]
        if self.state == NOT_AUTHENTICATED:
            if self.auth_allowed:
                caps += [f"AUTH={m}" for m in SASL_MECHANISMS]
                if not self.conn.tls_active and self.service.tls is not None:
                    caps.append("STARTTLS")
            else:
                if self.service.tls is not None:
                    caps.append("STARTTLS")
                caps.append("LOGINDISABLED")
            return caps
        return [
            *caps,
            "UIDPLUS", "MOVE", "UNSELECT", "CHILDREN", "LIST-EXTENDED", "LIST-STATUS",
            "SPECIAL-USE", "CREATE-SPECIAL-USE", "CONDSTORE", "QRESYNC", "ESEARCH",
            "QUOTA", "QUOTA=RES-STORAGE", f"APPENDLIMIT={self.settings.max_append}",
            "STATUS=SIZE",
        ]  # fmt: skip

    async def do_Capability(self, tag: str, _: p.Capability) -> None:
        self.send(r.capability(self.capabilities()))
        self.send(r.ok(tag, "CAPABILITY completed"))

    async def do_Noop(self, tag: str, _: p.Noop) -> None:
        await self.refresh(expunges=True)
        self.send(r.ok(tag, "NOOP completed"))

    async def do_Logout(self, tag: str, _: p.Logout) -> None:
        self.send(r.bye(f"{self.settings.hostname} Tidings IMAP4rev1 logging out"))
        self.send(r.ok(tag, "LOGOUT completed"))
        self.done = True

    async def do_Id(self, tag: str, _: p.Id) -> None:
        self.send(r.id_((("name", "Tidings"), ("vendor", "Tidings"))))
        self.send(r.ok(tag, "ID completed"))

    # --- not authenticated ----------------------------------------------------------------------

    async def do_StartTLS(self, tag: str, _: p.StartTLS) -> None:
        if self.conn.tls_active:
            raise ImapError("TLS is already active", status="BAD")
        if self.service.tls is None:
            raise ImapError("TLS is not available")
        if self.conn.reader.buffered:
            # RFC 3501 §6.2.1: nothing may follow STARTTLS before the handshake.
            raise ImapError("Commands sent after STARTTLS before the handshake", status="BAD")
        self.send(r.ok(tag, "Begin TLS negotiation now"))
        await self.flush()
        await self.conn.start_tls(self.service.tls)

    @property
    def auth_allowed(self) -> bool:
        """RFC 3501 §6.2.3 / RFC 8314: passwords only over TLS unless the admin says so."""
        return self.conn.tls_active or self.settings.allow_insecure_auth

    def need_tls(self) -> None:
        if not self.auth_allowed:
            raise ImapError("Use STARTTLS before logging in", r.PRIVACYREQUIRED)

    async def do_Login(self, tag: str, command: p.Login) -> None:
        self.need_tls()
        await self.login(tag, command.username, command.password)

    async def do_Authenticate(self, tag: str, command: p.Authenticate) -> None:
        self.need_tls()
        mechanism = command.mechanism.upper()
        try:
            if mechanism == "PLAIN":
                response = await self.sasl_step("", command.initial_response)
                user, password = decode_plain(response)
            elif mechanism == "LOGIN":
                name = await self.sasl_step(LOGIN_USERNAME_CHALLENGE, command.initial_response)
                secret = await self.sasl_step(LOGIN_PASSWORD_CHALLENGE, None)
                user = decode_utf8(name, "User name")
                password = decode_utf8(secret, "Password")
            else:
                raise ImapError("Unsupported authentication mechanism", r.CANNOT)
        except SaslError as e:
            raise ImapError(str(e), status="BAD") from None
        await self.login(tag, user, password)

    async def sasl_step(self, challenge: str, initial: str | None) -> bytes:
        """One challenge and its response (RFC 3501 §6.2.2; RFC 4959 initial response)."""
        if initial is not None:
            return b"" if initial == "=" else decode_base64(initial)
        self.send(f"+ {challenge}\r\n".encode())
        await self.flush()
        async with asyncio.timeout(self.timeout):
            event = await self.conn.next_line()
        if isinstance(event, p.ReadError):
            raise SaslError("Line too long")
        assert isinstance(event, p.LineReady)
        text = event.line.decode("ascii", errors="replace").strip()
        if text == "*":
            raise SaslError("Authentication cancelled")
        return decode_base64(text)

    async def login(self, tag: str, user: str, password: str) -> None:
        try:
            address = await self.service.authenticator.login(self.conn.peer, user, password, "imap")
        except LoginRefused as e:
            code = r.UNAVAILABLE if e.temporary else r.AUTHENTICATIONFAILED
            raise ImapError(str(e), code) from None
        async with self.store.read() as db:
            account_id = await fo.account_id_of(db, address)
        if account_id is None:
            raise ImapError("Authentication failed", r.AUTHENTICATIONFAILED)
        self.account, self.account_id = address, account_id
        self.state = AUTHENTICATED
        log.info("imap %s: %s logged in", self.conn.peer, address)
        self.send(r.ok(tag, "Logged in", r.capability_code(self.capabilities())))

    # --- authenticated: mailboxes ---------------------------------------------------------------

    async def folder(self, name: str, *, trycreate: bool = False) -> fo.FolderInfo:
        async with self.store.read() as db:
            found = await fo.get_folder(db, self.account_id, name)
        if found is None:
            raise ImapError("No such mailbox", r.TRYCREATE if trycreate else r.NONEXISTENT)
        return found

    async def do_Select(self, tag: str, command: p.Select) -> None:
        if command.qresync is not None and "QRESYNC" not in self.enabled:
            raise ImapError("QRESYNC must be enabled first", status="BAD")
        was_selected = self.view is not None
        self.deselect()
        if was_selected and "QRESYNC" in self.enabled:
            self.send(r.untagged_status("OK", "Previous mailbox closed", r.CLOSED))
        if command.condstore:
            self.enabled.add("CONDSTORE")
        read_only = command.read_only
        async with self.store.write() as db:
            folder = await fo.get_folder(db, self.account_id, command.mailbox)
            if folder is None:
                raise ImapError("No such mailbox", r.NONEXISTENT)
            recent_from = folder.recent_uid if read_only else await mb.claim_recent(db, folder.id)
            # The marks before the rows: rows newer than the marks are harmless (the next look
            # finds them equal), marks newer than the rows would hide a change for good.
            marks = await mb.mailbox_marks(db, folder.id)
            assert marks is not None
            highestmodseq, uidnext, _ = marks
            snapshot = self.service.snapshot(folder.id, highestmodseq)
            if snapshot is None:
                rows = await mb.message_rows(db, folder.id)
                snapshot = Snapshot.of(highestmodseq, [ViewMessage.of(row) for row in rows])
                self.service.remember(folder.id, snapshot)
        view = MailboxView.on(
            folder.id, folder.name, folder.uidvalidity, read_only=read_only, uidnext=uidnext,
            snapshot=snapshot,
        )  # fmt: skip
        view.recent = set(view.uids[bisect.bisect_left(view.uids, recent_from) :])
        self.view = view
        self.watch = self.service.events.watch(folder.id)
        self.state = SELECTED
        for line in view.flag_responses():
            self.send(line)
        self.send(r.exists(view.exists))
        self.send(r.recent(len(view.recent)))
        unseen = view.first_unseen()
        if unseen is not None:
            self.send(r.untagged_status("OK", "First unseen", r.unseen_code(unseen)))
        self.send(r.untagged_status("OK", "UIDs valid", r.uidvalidity_code(view.uidvalidity)))
        self.send(r.untagged_status("OK", "Predicted next UID", r.uidnext_code(uidnext)))
        self.send(r.untagged_status("OK", "Highest", r.highestmodseq_code(highestmodseq)))
        if command.qresync is not None:
            await self.qresync(command.qresync)
        code = r.READ_ONLY if read_only else r.READ_WRITE
        self.send(r.ok(tag, "EXAMINE completed" if read_only else "SELECT completed", code))

    async def qresync(self, q: p.QResync) -> None:
        """RFC 7162 §3.2.5.1: what changed since the client's last known modseq."""
        view = self.view
        assert view is not None
        if q.uidvalidity != view.uidvalidity:
            return
        async with self.store.read() as db:
            gone = await mb.expunged_since(db, view.mailbox_id, q.modseq)
        if q.known_uids is not None:
            known = q.known_uids
            top = max([u for u in gone] + [view.largest_uid, 1])
            gone = [u for u in gone if known.contains(u, top)]
        if gone:
            self.send(r.vanished(gone, earlier=True))
        for seq, m in view.numbered():
            if m.modseq > q.modseq:
                self.send(view.flag_fetch(seq, m, with_modseq=True))

    def deselect(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        self.view = None
        if self.state == SELECTED:
            self.state = AUTHENTICATED

    async def do_Create(self, tag: str, command: p.Create) -> None:
        if command.mailbox.upper() == "INBOX":
            raise ImapError("INBOX always exists", r.ALREADYEXISTS)
        if len(command.use) > 1:
            raise ImapError("Only one special use per mailbox", "USEATTR")
        async with self.store.write() as db:
            try:
                await fo.create_folder(db, self.account_id, command.mailbox,
                                       command.use[0] if command.use else None)  # fmt: skip
            except fo.FolderError as e:
                raise ImapError(str(e), e.code) from None
        self.send(r.ok(tag, "CREATE completed"))

    async def do_Delete(self, tag: str, command: p.Delete) -> None:
        async with self.store.write() as db:
            folder = await fo.get_folder(db, self.account_id, command.mailbox)
            try:
                await fo.delete_folder(db, self.account_id, command.mailbox)
            except fo.FolderError as e:
                raise ImapError(str(e), e.code) from None
        if folder is not None:
            self.service.events.changed([folder.id])
        self.send(r.ok(tag, "DELETE completed"))

    async def do_Rename(self, tag: str, command: p.Rename) -> None:
        async with self.store.write() as db:
            try:
                await fo.rename_folder(db, self.account_id, command.old, command.new)
            except fo.FolderError as e:
                raise ImapError(str(e), e.code) from None
            inbox = await fo.get_folder(db, self.account_id, "INBOX")
        if command.old == "INBOX" and inbox is not None:
            self.service.events.changed([inbox.id])
        self.send(r.ok(tag, "RENAME completed"))

    async def do_Subscribe(self, tag: str, command: p.Subscribe) -> None:
        await self.subscribe(command.mailbox, True)
        self.send(r.ok(tag, "SUBSCRIBE completed"))

    async def do_Unsubscribe(self, tag: str, command: p.Unsubscribe) -> None:
        await self.subscribe(command.mailbox, False)
        self.send(r.ok(tag, "UNSUBSCRIBE completed"))

    async def subscribe(self, name: str, on: bool) -> None:
        async with self.store.write() as db:
            try:
                await fo.set_subscribed(db, self.account_id, name, on)
            except fo.FolderError as e:
                raise ImapError(str(e), e.code) from None

    async def do_List(self, tag: str, command: p.List) -> None:
        if not command.extended and command.patterns == ("",):
            # RFC 3501 §6.3.8: the hierarchy delimiter and root.
            self.send(r.list_(("\\Noselect",), "/", ""))
            self.send(r.ok(tag, "LIST completed"))
            return
        async with self.store.read() as db:
            folders = await fo.list_folders(db, self.account_id)
        listed = list_folders(
            [Folder(x.name, x.special_use, x.subscribed) for x in folders],
            command.reference,
            command.patterns,
            subscribed_only="SUBSCRIBED" in command.selection,
            special_use_only="SPECIAL-USE" in command.selection,
            recursive_match="RECURSIVEMATCH" in command.selection,
            return_subscribed="SUBSCRIBED" in command.returns,
            extended=command.extended,
        )
        by_name = {x.name: x for x in folders}
        for item in listed:
            extra: list[tuple[str, r.Value]] = []
            if item.child_info:
                extra.append(("CHILDINFO", ["SUBSCRIBED"]))
            self.send(r.list_(item.attributes, "/", item.name, extra))
            if command.status_items and item.exists:
                await self.status_response(by_name[item.name], command.status_items)
        self.send(r.ok(tag, "LIST completed"))

    async def do_Lsub(self, tag: str, command: p.Lsub) -> None:
        async with self.store.read() as db:
            folders = await fo.list_folders(db, self.account_id)
        for item in lsub_folders(
            [Folder(x.name, x.special_use, x.subscribed) for x in folders],
            command.reference,
            command.pattern,
        ):
            self.send(r.lsub(item.attributes, "/", item.name))
        self.send(r.ok(tag, "LSUB completed"))

    async def do_Status(self, tag: str, command: p.Status) -> None:
        folder = await self.folder(command.mailbox)
        await self.status_response(folder, command.items)
        self.send(r.ok(tag, "STATUS completed"))

    async def status_response(self, folder: fo.FolderInfo, items: Sequence[str]) -> None:
        async with self.store.read() as db:
            st = await fo.folder_status(db, folder.id)
        values = {
            "MESSAGES": st.messages, "RECENT": st.recent, "UIDNEXT": st.uidnext,
            "UIDVALIDITY": st.uidvalidity, "UNSEEN": st.unseen,
            "HIGHESTMODSEQ": st.highestmodseq, "SIZE": st.size, "DELETED": st.deleted,
            "APPENDLIMIT": self.settings.max_append,
        }  # fmt: skip
        self.send(r.status(folder.name, [(item, values[item]) for item in items]))

    async def do_Append(self, tag: str, command: p.Append) -> None:
        if len(command.message) > self.settings.max_append:
            raise ImapError("Message too big", r.TOOBIG)
        if not command.message:
            raise ImapError("Empty message", status="BAD")
        folder = await self.folder(command.mailbox, trycreate=True)
        info = await asyncio.to_thread(analyze, command.message)
        when = command.internal_date or datetime.now(UTC)
        async with self.store.write() as db:
            try:
                uidvalidity, uid = await mb.append_message(
                    db, folder.id, command.message, command.flags, when, stored_form(info)
                )
            except fo.FolderError as e:
                raise ImapError(str(e), e.code) from None
        self.service.events.changed([folder.id])
        await self.refresh(expunges=True)
        self.send(r.ok(tag, "APPEND completed", r.appenduid_code(uidvalidity, uid)))

    async def do_Idle(self, tag: str, _: p.Idle) -> None:
        """RFC 2177: tell the client of changes as they happen until it sends DONE."""
        self.send(r.continuation("idling"))
        await self.refresh(expunges=True)
        await self.flush()
        deadline = asyncio.get_running_loop().time() + self.timeout
        if self.watch is not None:
            self.watch.waker = self.conn.wake  # one wait for input and for changes
        try:
            while True:
                self.conn.will_read()
                event = self.conn.reader.next_line()
                if isinstance(event, p.LineReady):
                    if event.line.strip().upper() == b"DONE":
                        self.send(r.ok(tag, "IDLE terminated"))
                    else:
                        self.send(r.bad(tag, "Expected DONE"))
                    return
                if isinstance(event, p.ReadError):
                    self.send(r.bad(tag, "Line too long"))
                    return
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    self.send(r.bye("Autologout; idle for too long"))
                    self.done = True
                    return
                if self.watch is None or not self.watch.rung:
                    try:
                        async with asyncio.timeout(min(left, IDLE_POLL)):
                            await self.conn.wait_for_data()  # ConnectionClosed ends the session
                        continue
                    except TimeoutError:
                        pass  # look at the mailbox anyway, in case a notice was lost
                await self.refresh(expunges=True)
                if self.done:
                    return
                await self.flush()
        finally:
            if self.watch is not None:
                self.watch.waker = None

    async def do_Namespace(self, tag: str, _: p.Namespace) -> None:
        self.send(r.namespace((("", "/"),)))
        self.send(r.ok(tag, "NAMESPACE completed"))

    async def do_Enable(self, tag: str, command: p.Enable) -> None:
        """RFC 5161; QRESYNC implies CONDSTORE (RFC 7162 §3.2.3)."""
        newly: list[str] = []
        for name in command.capabilities:
            wanted = ["CONDSTORE", "QRESYNC"] if name == "QRESYNC" else [name]
            for cap in wanted:
                if cap in ("CONDSTORE", "QRESYNC") and cap not in self.enabled:
                    self.enabled.add(cap)
                    newly.append(cap)
        self.send(r.enabled(newly))
        self.send(r.ok(tag, "ENABLE completed"))

    async def quota(self) -> tuple[int, int]:
        async with self.store.read() as db:
            return await fo.quota_usage(db, self.account_id)

    async def do_GetQuota(self, tag: str, command: p.GetQuota) -> None:
        used, limit = await self.quota()
        if command.root != "" or not limit:
            raise ImapError("No such quota root", r.NONEXISTENT)
        self.send(r.quota("", [("STORAGE", used // 1024, limit // 1024)]))
        self.send(r.ok(tag, "GETQUOTA completed"))

    async def do_GetQuotaRoot(self, tag: str, command: p.GetQuotaRoot) -> None:
        folder = await self.folder(command.mailbox)
        used, limit = await self.quota()
        self.send(r.quotaroot(folder.name, [""] if limit else []))
        if limit:
            self.send(r.quota("", [("STORAGE", used // 1024, limit // 1024)]))
        self.send(r.ok(tag, "GETQUOTAROOT completed"))

    async def do_SetQuota(self, tag: str, _: p.SetQuota) -> None:
        raise ImapError("Quotas are set by the administrator", r.NOPERM)

    # --- selected -------------------------------------------------------------------------------

    @property
    def selected(self) -> MailboxView:
        assert self.view is not None
        return self.view

    def writable(self) -> MailboxView:
        view = self.selected
        if view.read_only:
            raise ImapError("Mailbox is read-only (EXAMINE)", r.READ_ONLY)
        return view

    @property
    def condstore(self) -> bool:
        return "CONDSTORE" in self.enabled

    async def refresh(self, *, expunges: bool) -> None:
        """Tell the client what changed in its mailbox since the view's modseq.

        Without ``expunges`` (during FETCH, STORE, SEARCH: RFC 3501 §7.4.1) nothing is told
        if anything was expunged; the next command that may tell it does.
        """
        view = self.view
        if view is None:
            return
        if self.watch is not None:
            self.watch.clear()
        # A read transaction, which never waits for a writer; what changed between two
        # modseqs is read once for all the sessions that look (2,000 IDLE sessions on one
        # mailbox wake together).
        async with self.store.read() as db:
            marks = await mb.mailbox_marks(db, view.mailbox_id)
            if marks is None:
                self.send(r.bye("The selected mailbox was deleted"))
                self.done = True
                return
            highestmodseq = marks[0]
            if highestmodseq <= view.modseq:
                return
            change = self.service.change(view.mailbox_id, view.modseq, highestmodseq)
            if change is None:
                change = Change(
                    view.mailbox_id, view.modseq, highestmodseq,
                    await mb.expunged_since(db, view.mailbox_id, view.modseq),
                    await mb.changed_since(db, view.mailbox_id, view.modseq),
                )  # fmt: skip
                self.service.remember_change(change)
        if change.gone and not expunges and any(view.seq_of(u) for u in change.gone):
            return
        newest = max((row.uid for row in change.changed), default=0)
        recent_from = await self.recent_from(view, newest) if newest > view.largest_uid else None
        base = view.messages
        lines = view.apply(
            change.changed,
            change.gone,
            highestmodseq,
            recent_from=recent_from,
            vanished="QRESYNC" in self.enabled,
            with_modseq=self.condstore,
        )
        self.service.share(view, base)
        for line in lines:
            self.send(line)

    async def recent_from(self, view: MailboxView, newest: int) -> int | None:
        """The first UID that is \\Recent for this session among new mail up to ``newest``:
        the first session to see a message claims it (RFC 3501 §2.3.2); EXAMINE only looks."""
        claimed = self.service.recent_claimed
        if not view.read_only and claimed.get(view.mailbox_id, 0) > newest:
            return None  # a session of this process saw them first
        async with self.store.read() as db:
            folder = await fo.get_folder(db, self.account_id, view.name)
        if folder is None:
            return None
        if view.read_only:
            return folder.recent_uid
        if folder.recent_uid > newest:
            return None  # another session saw them first
        async with self.store.write() as db:
            first = await mb.claim_recent(db, view.mailbox_id)
        claimed[view.mailbox_id] = max(claimed.get(view.mailbox_id, 0), newest + 1)
        return first

    async def do_Check(self, tag: str, _: p.Check) -> None:
        await self.refresh(expunges=True)
        self.send(r.ok(tag, "CHECK completed"))

    async def do_Close(self, tag: str, _: p.Close) -> None:
        view = self.selected
        if not view.read_only:
            await self.expunge(view, None, silent=True)
        self.deselect()
        self.send(r.ok(tag, "CLOSE completed"))

    async def do_Unselect(self, tag: str, _: p.Unselect) -> None:
        self.deselect()
        self.send(r.ok(tag, "UNSELECT completed"))

    async def do_Expunge(self, tag: str, command: p.Expunge) -> None:
        view = self.writable()
        await self.expunge(view, command.uids, silent=False)
        code = r.highestmodseq_code(view.modseq) if self.condstore else None
        self.send(r.ok(tag, "EXPUNGE completed", code))

    async def expunge(self, view: MailboxView, uids: SequenceSet | None, *, silent: bool) -> None:
        await self.refresh(expunges=True)
        targets = view.messages if uids is None else [m for _, m in view.select(uids, uid=True)]
        ids = [m.id for m in targets if m.has("\\Deleted")]
        if ids:
            async with self.store.write() as db:
                await mb.expunge_messages(db, view.mailbox_id, ids)
            self.service.events.changed([view.mailbox_id])
        if silent:
            return
        await self.refresh(expunges=True)

    def numbers(self, numbers: SequenceSet, uid: bool) -> list[tuple[int, ViewMessage]]:
        try:
            return self.selected.select(numbers, uid=uid)
        except InvalidNumbers as e:
            raise ImapError(str(e), status="BAD") from None

    async def do_Fetch(self, tag: str, command: p.Fetch) -> None:
        await self.refresh(expunges=command.uid)
        view = self.selected
        if command.vanished and not (command.uid and "QRESYNC" in self.enabled):
            raise ImapError("VANISHED needs UID FETCH with QRESYNC enabled", status="BAD")
        # RFC 7162 §3.1.4.1: MODSEQ in every item answered; asking enables CONDSTORE (§3.1).
        add_modseq = command.changed_since is not None or any(
            isinstance(a, p.FetchItem) and a.name == "MODSEQ" for a in command.attributes
        )
        if add_modseq:
            self.enabled.add("CONDSTORE")
        chosen = self.numbers(command.sequence_set, command.uid)
        if command.changed_since is not None:
            since = command.changed_since
            if command.vanished:
                async with self.store.read() as db:
                    gone = await mb.expunged_since(db, view.mailbox_id, since)
                top = max([*gone, view.largest_uid, 1])
                gone = [u for u in gone if command.sequence_set.contains(u, top)]
                if gone:
                    self.send(r.vanished(gone, earlier=True))
            chosen = [(seq, m) for seq, m in chosen if m.modseq > since]
        seen_set: set[int] = set()
        if command.sets_seen and not view.read_only:
            unseen = [m.id for _, m in chosen if not m.has("\\Seen")]
            if unseen:
                async with self.store.write() as db:
                    changes, _ = await mb.store_flags(db, view.mailbox_id, unseen, "add",
                                                      ["\\Seen"])  # fmt: skip
                for c in changes:
                    view.update_flags(c.uid, c.flags, c.modseq)
                    seen_set.add(c.uid)
                if changes:
                    self.service.events.changed([view.mailbox_id])
        attributes = command.attributes
        want_info = f.needs_info(attributes)
        want_raw = f.needs_raw(attributes)
        # A first sync (UID FLAGS RFC822.SIZE ENVELOPE) needs only the stored ENVELOPE bytes.
        envelope_only = want_info and f.needs_envelope_only(attributes)
        for chunk in self.chunks(chosen, want_raw):
            envelopes: dict[int, bytes] = {}
            infos: dict[int, MessageInfo] = {}
            raws: dict[int, bytes] = {}
            if envelope_only:
                envelopes = await self.load_envelopes(chunk)
            else:
                infos, raws = await self.load(chunk, want_info, want_raw)
            for seq, _ in chunk:
                m = view.messages[seq - 1]  # as it is now: the \Seen above made new objects
                if envelope_only and m.blob_id not in envelopes:
                    continue  # expunged by another session meanwhile
                if (want_raw and m.blob_id not in raws) or (
                    want_info and not envelope_only and m.blob_id not in infos
                ):
                    continue
                message = f.FetchMessage(
                    seq, m.uid, m.flags, m.uid in view.recent, m.internaldate, m.size,
                    m.modseq, infos.get(m.blob_id), raws.get(m.blob_id),
                    envelopes.get(m.blob_id),
                )  # fmt: skip
                items = f.fetch_items(
                    attributes, message, add_uid=command.uid, add_modseq=add_modseq,
                    add_flags=m.uid in seen_set,
                )  # fmt: skip
                self.send(r.fetch(seq, items))
            await self.flush()
        self.send(r.ok(tag, "UID FETCH completed" if command.uid else "FETCH completed"))

    def chunks(
        self, chosen: list[tuple[int, ViewMessage]], by_size: bool
    ) -> list[list[tuple[int, ViewMessage]]]:
        out: list[list[tuple[int, ViewMessage]]] = []
        current: list[tuple[int, ViewMessage]] = []
        size = 0
        for pair in chosen:
            if current and (
                len(current) >= CHUNK_MESSAGES or (by_size and size + pair[1].size > CHUNK_BYTES)
            ):
                out.append(current)
                current, size = [], 0
            current.append(pair)
            size += pair[1].size
        if current:
            out.append(current)
        return out

    async def load(
        self, chunk: Sequence[tuple[int, ViewMessage]], want_info: bool, want_raw: bool
    ) -> tuple[dict[int, MessageInfo], dict[int, bytes]]:
        """The analyses and bytes of a chunk's messages, by blob id; a missing analysis is
        computed from the bytes (off the event loop)."""
        blob_ids = sorted({m.blob_id for _, m in chunk})
        raws: dict[int, bytes] = {}
        infos: dict[int, MessageInfo] = {}
        if not (want_info or want_raw):
            return infos, raws
        async with self.store.read() as db:
            structures = await mb.load_structures(db, blob_ids) if want_info else {}
            missing = [b for b, text in structures.items() if text is None]
            if want_raw or missing:
                raws = await mb.load_blobs(db, blob_ids if want_raw else missing)
        if want_info:
            infos = await asyncio.to_thread(_decode_structures, structures, raws)
        return infos, raws

    async def load_envelopes(self, chunk: Sequence[tuple[int, ViewMessage]]) -> dict[int, bytes]:
        """The ENVELOPE wire form of a chunk's messages, by blob id: stored at delivery, or
        rendered from the analysis for older rows."""
        blob_ids = sorted({m.blob_id for _, m in chunk})
        async with self.store.read() as db:
            stored = await mb.load_envelopes(db, blob_ids)
        found = {b: env for b, env in stored.items() if env is not None}
        older = [(0, m) for _, m in chunk if m.blob_id in stored and m.blob_id not in found]
        if older:
            infos, _ = await self.load(older, True, False)
            found.update((b, envelope_sexp(info)) for b, info in infos.items())
        return found

    async def load_headers(
        self, chunk: Sequence[tuple[int, ViewMessage]]
    ) -> dict[int, SearchHeaders]:
        """The decoded SEARCH header fields of a chunk's messages, by blob id."""
        blob_ids = sorted({m.blob_id for _, m in chunk})
        async with self.store.read() as db:
            structures = await mb.load_structures(db, blob_ids)
        headers = await asyncio.to_thread(_decode_headers, structures)
        missing = [b for b in structures if b not in headers]
        if missing:  # never analysed, or in an older form: from the bytes
            async with self.store.read() as db:
                raws = await mb.load_blobs(db, missing)
            infos = await asyncio.to_thread(_decode_structures, dict.fromkeys(raws), raws)
            headers.update((b, info.search) for b, info in infos.items())
        return headers

    async def do_Store(self, tag: str, command: p.Store) -> None:
        await self.refresh(expunges=command.uid)
        view = self.writable()
        if command.unchanged_since is not None:
            self.enabled.add("CONDSTORE")
        chosen = self.numbers(command.sequence_set, command.uid)
        ids = [m.id for _, m in chosen]
        failed: list[int] = []
        keywords = len(view.keywords)
        if ids:
            async with self.store.write() as db:
                changes, failed = await mb.store_flags(
                    db, view.mailbox_id, ids, command.mode, command.flags, command.unchanged_since
                )
            if changes:
                self.service.events.changed([view.mailbox_id])
        else:
            changes = []
        changed_uids = set()
        for c in changes:
            view.update_flags(c.uid, c.flags, c.modseq)
            changed_uids.add(c.uid)
        if len(view.keywords) != keywords:
            for line in view.flag_responses():
                self.send(line)
        failed_ids = set(failed)
        for seq, _ in chosen:
            m = view.messages[seq - 1]  # as it is now, after update_flags
            if m.id in failed_ids:
                continue
            # RFC 7162 §3.1.3: with UNCHANGEDSINCE, a FETCH even under .SILENT for changes.
            if command.silent and not (self.condstore and m.uid in changed_uids
                                       and command.unchanged_since is not None):  # fmt: skip
                continue
            items: list[tuple[str, r.Value]] = []
            if command.uid:
                items.append(("UID", m.uid))
            items.append(("FLAGS", r.Raw(r.flag_list(view.flags_of(m)))))
            if self.condstore:
                items.append(("MODSEQ", r.Raw(b"(%d)" % m.modseq)))
            self.send(r.fetch(seq, items))
        code = None
        if failed:
            by_id = {m.id: (seq, m.uid) for seq, m in chosen}
            numbers = [by_id[i][1] if command.uid else by_id[i][0] for i in failed if i in by_id]
            code = r.modified_code(numbers)
        self.send(r.ok(tag, "STORE completed", code))

    async def do_Copy(self, tag: str, command: p.Copy) -> None:
        await self.transfer(tag, command.sequence_set, command.mailbox, command.uid, move=False)

    async def do_Move(self, tag: str, command: p.Move) -> None:
        await self.transfer(tag, command.sequence_set, command.mailbox, command.uid, move=True)

    async def transfer(
        self, tag: str, numbers: SequenceSet, mailbox: str, uid: bool, *, move: bool
    ) -> None:
        """COPY (RFC 3501 §6.4.7) and MOVE (RFC 6851), with RFC 4315 COPYUID."""
        await self.refresh(expunges=uid)
        view = self.writable() if move else self.selected
        chosen = self.numbers(numbers, uid)
        target = await self.folder(mailbox, trycreate=True)
        ids = [m.id for _, m in chosen]
        pairs: list[tuple[int, int]] = []
        if ids:
            async with self.store.write() as db:
                try:
                    if move:
                        pairs = await mb.move_messages(db, view.mailbox_id, ids, target.id)
                    else:
                        pairs = await mb.copy_messages(db, view.mailbox_id, ids, target.id)
                except fo.FolderError as e:
                    raise ImapError(str(e), e.code) from None
            self.service.events.changed({target.id, view.mailbox_id})
        name = ("UID " if uid else "") + ("MOVE" if move else "COPY")
        code = r.copyuid_code(target.uidvalidity, pairs) if pairs else None
        if move:
            if code is not None:
                self.send(r.untagged_status("OK", "Moved", code))
            await self.refresh(expunges=True)
            self.send(r.ok(tag, f"{name} completed"))
        else:
            await self.refresh(expunges=uid)
            self.send(r.ok(tag, f"{name} completed", code))

    async def do_Search(self, tag: str, command: p.Search) -> None:
        await self.refresh(expunges=command.uid)
        view = self.selected
        if command.uses_modseq:
            self.enabled.add("CONDSTORE")
        key = command.key
        want_info = s.needs_info(key)
        want_raw = s.needs_raw(key)
        # FROM, SUBJECT, SENTSINCE …: only the decoded header fields, not the MIME tree.
        headers_only = want_info and not want_raw and s.needs_headers_only(key)
        largest_seq, largest_uid = view.exists, view.largest_uid
        found: list[ViewMessage] = []
        found_seqs: list[int] = []
        for chunk in self.chunks(list(view.numbered()), want_raw):
            headers: dict[int, SearchHeaders] = {}
            infos: dict[int, MessageInfo] = {}
            raws: dict[int, bytes] = {}
            if headers_only:
                headers = await self.load_headers(chunk)
            else:
                infos, raws = await self.load(chunk, want_info, want_raw)
            batch: list[tuple[s.SearchMessage, ViewMessage]] = []
            for seq, m in chunk:
                info, raw = infos.get(m.blob_id), raws.get(m.blob_id)
                found_headers = headers.get(m.blob_id)
                if headers_only and found_headers is None:
                    continue  # expunged by another session meanwhile
                if not headers_only and (
                    (want_info and info is None) or (want_raw and raw is None)
                ):
                    continue
                flags = frozenset(view.flags_of(m))
                batch.append((s.SearchMessage(seq, m.uid, flags, m.internaldate, m.size,
                                              m.modseq, info, raw, found_headers), m))  # fmt: skip
            limits = (largest_seq, largest_uid)
            if want_info or want_raw:
                hits = await asyncio.to_thread(_matching, key, batch, limits)
            else:
                hits = _matching(key, batch, limits)
            for msg, m in hits:
                found.append(m)
                found_seqs.append(msg.seq)
        numbers = [m.uid for m in found] if command.uid else found_seqs
        modseq = max((m.modseq for m in found), default=None) if command.uses_modseq else None
        if command.returns is None:
            self.send(r.search(numbers, modseq))
        else:
            returns = command.returns or ("ALL",)
            self.send(r.esearch(tag, numbers, returns, uid=command.uid, modseq=modseq))
        self.send(r.ok(tag, "UID SEARCH completed" if command.uid else "SEARCH completed"))


def _matching(
    key: p.SearchKey,
    batch: list[tuple[s.SearchMessage, ViewMessage]],
    limits: tuple[int, int],
) -> list[tuple[s.SearchMessage, ViewMessage]]:
    largest_seq, largest_uid = limits
    return [
        pair
        for pair in batch
        if s.matches(key, pair[0], largest_seq=largest_seq, largest_uid=largest_uid)
    ]


def _decode_headers(structures: dict[int, str | None]) -> dict[int, SearchHeaders]:
    headers: dict[int, SearchHeaders] = {}
    for blob_id, text in structures.items():
        if text is not None:
            with contextlib.suppress(ValueError):
                headers[blob_id] = MessageInfo.search_headers_from_json(text)
    return headers


def _decode_structures(
    structures: dict[int, str | None], raws: dict[int, bytes]
) -> dict[int, MessageInfo]:
    infos: dict[int, MessageInfo] = {}
    for blob_id, text in structures.items():
        if text is not None:
            try:
                infos[blob_id] = MessageInfo.from_json(text)
                continue
            except ValueError:
                pass
        raw = raws.get(blob_id)
        if raw is not None:
            infos[blob_id] = analyze(raw)
    return infos


# --- the service ---------------------------------------------------------------------------------


class ImapService:
    """What IMAP listeners share: store, settings, TLS, the login check, mailbox notices."""

    def __init__(
        self,
        store: Store,
        settings: ImapSettings,
        authenticator: Authenticator,
        tls: ssl.SSLContext | None,
        events: MailboxEvents,
    ) -> None:
        self.store = store
        self.settings = settings
        self.authenticator = authenticator
        self.tls = tls
        self.events = events
        self.connections: set[Connection] = set()
        # The last snapshot read of each recently selected mailbox (see view.Snapshot).
        self.snapshots: OrderedDict[int, Snapshot] = OrderedDict()
        # Per mailbox, a UID below which this process's sessions already claimed \Recent:
        # sessions waking for the same new mail need not ask the store.
        self.recent_claimed: dict[int, int] = {}
        # What changed in a mailbox between two modseqs, and the lists it led to from a given
        # list: read and built once for every session making the same move.
        self.changes: OrderedDict[tuple[int, int], Change] = OrderedDict()
        self.results: OrderedDict[tuple[int, int, int], tuple[list[ViewMessage], Snapshot]] = (
            OrderedDict()
        )
        # The lists last published for a mailbox at a modseq, whatever path led there: views
        # that reached the same state by different steps (IDLE sessions waking at different
        # moments) share them again instead of each keeping its own copy for good.
        self.converged: OrderedDict[tuple[int, int], Snapshot] = OrderedDict()

    def snapshot(self, mailbox_id: int, modseq: int) -> Snapshot | None:
        """The shared snapshot of a mailbox at exactly this modseq, if one was read."""
        found = self.snapshots.get(mailbox_id)
        if found is None or found.modseq != modseq:
            return None
        self.snapshots.move_to_end(mailbox_id)
        return found

    def change(self, mailbox_id: int, since: int, until: int) -> Change | None:
        found = self.changes.get((mailbox_id, since))
        return found if found is not None and found.until == until else None

    def remember_change(self, change: Change) -> None:
        self.changes[(change.mailbox_id, change.since)] = change
        while len(self.changes) > MAX_SNAPSHOTS:
            self.changes.popitem(last=False)

    def share(self, view: MailboxView, base: list[ViewMessage]) -> None:
        """After ``view`` moved from the list ``base`` to its current state: take the lists a
        session that made the same move already built, or offer its own to the next one."""
        selected = self.snapshots.get(view.mailbox_id)
        if selected is not None and selected.modseq < view.modseq:
            # The mailbox moved past its SELECT snapshot, which no later SELECT can use (it
            # asks for the current modseq). Kept, it pinned every message it listed after the
            # views had expunged them: bench/load.py, whose sessions trim their mailboxes,
            # grew ~4,000 ViewMessages a minute with it.
            del self.snapshots[view.mailbox_id]
        if view.messages is base:
            return
        key = (view.mailbox_id, id(base), view.modseq)
        found = self.results.get(key)
        if found is not None and found[0] is base:
            view.adopt(found[1])
            return
        state = (view.mailbox_id, view.modseq)
        for same in (self.converged.get(state), self.snapshot(*state)):
            # Equal lists mostly hold the same objects, so the comparison is mostly identity.
            if same is not None and same.uids == view.uids and same.messages == view.messages:
                view.adopt(same)
                return
        published = view.publish()
        self.results[key] = (base, published)
        self.converged[state] = published
        for cache in (self.results, self.converged):
            while len(cache) > MAX_SNAPSHOTS:
                cache.popitem(last=False)

    def remember(self, mailbox_id: int, snapshot: Snapshot) -> None:
        self.snapshots[mailbox_id] = snapshot
        self.snapshots.move_to_end(mailbox_id)
        while len(self.snapshots) > MAX_SNAPSHOTS:
            self.snapshots.popitem(last=False)

    def new_reader(self) -> p.CommandReader:
        return p.CommandReader(
            max_line=self.settings.max_line,
            max_literal=self.settings.max_literal,
            max_append=self.settings.max_append,
        )

    def protocol_factory(self, implicit_tls: bool) -> Callable[[], asyncio.Protocol]:
        return lambda: Connection(self, implicit_tls)

    async def close(self) -> None:
        """Tell every client the server is going away, and drop the connections."""
        tasks = [c.task for c in self.connections if c.task is not None]
        for c in list(self.connections):
            c.write(r.bye("Server shutting down"))
            c.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
