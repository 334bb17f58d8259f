"""A real IMAP client from Debian — mbsync (package isync) — syncing a whole account both ways.

mbsync pairs every folder of a 500-message account with a local Maildir over implicit TLS
(checking the test server's self-signed certificate). The first run must bring every message
down with its flags, byte for byte but for what mbsync does to every message it copies either
way: LF line ends in a Maildir (CRLF on the server), and an ``X-TUID`` field added at the end
of the header. Then both sides change — locally: flags set and cleared, files deleted, files moved
between folders, new files written; on the server: flags stored, messages expunged and moved,
new mail delivered — and the second run must make the two agree: the server holds exactly the
messages a user would expect, each once, with the expected flags, and the Maildir mirrors it.
A third run must change nothing on either side.
"""

from __future__ import annotations

import asyncio
import imaplib
import re
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from helpers import (
    MailboxState,
    TidingsServer,
    add_users,
    deliver_messages,
    mailbox_state,
    stored_messages,
    write_config,
)

PASSWORD = "secret"
COUNT = 500
ARCHIVED = 25
FOLDERS = ("INBOX", "Archive", "Sent", "Drafts", "Trash", "Junk")
MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)
# Maildir info flags (https://cr.yp.to/proto/maildir.html) as mbsync maps them to IMAP.
MAILDIR_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen"}

pytestmark = pytest.mark.skipif(
    shutil.which("mbsync") is None,
    reason="mbsync is not installed (Debian package isync; .ci/run installs it)",
)


# --- the mail -----------------------------------------------------------------------------------


def message(tag: str, n: int) -> bytes:
    """Message ``n``: plain ASCII, 8-bit UTF-8, or multipart with an attachment; 0.3 KB to
    60 KB, and a few of 1 MB."""
    mid = f"{n}.{tag}@interop.example"
    if n % 5 == 0:
        outer = EmailMessage()
        outer["From"] = "Zoë Sender <z@sender.example>"
        outer["To"] = "someone@example.org"
        outer["Subject"] = f"Grüße {n}"
        outer["Date"] = "Tue, 24 Nov 2026 08:00:00 +0000"
        outer["Message-ID"] = f"<{mid}>"
        outer.set_content(f"plain part of {n}\nmit Umlauten: äöü\n")
        outer.add_alternative(f"<p>html part of {n}</p>\n", subtype="html")
        outer.add_attachment(bytes(range(256)) * (n % 40 + 1), maintype="application",
                             subtype="octet-stream", filename=f"data-{n}.bin")  # fmt: skip
        return outer.as_bytes().replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")
    if n % 5 in (1, 3):
        head = "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        line = f"caf\u00e9 \u2713 na\u00efve {n} \u2014 \u65e5\u672c\u8a9e\r\n"
    else:
        head = "Content-Type: text/plain; charset=us-ascii\r\n"
        line = f"Plain line of message {n}, nothing special in it at all.\r\n"
    lines = n * 7 % 1000 if n % 125 != 1 else 16000
    body = (line * lines) + ".\r\n..two dots\r\n\r\nFrom the start of a line\r\n"
    return (
        f"From: Sender {n} <s{n}@sender.example>\r\nTo: {tag}\r\nSubject: sync {n}\r\n"
        f"Date: Mon, 23 Nov 2026 10:{n % 60:02d}:00 +0100\r\nMessage-ID: <{mid}>\r\n"
        f"MIME-Version: 1.0\r\n{head}\r\n{body}"
    ).encode()


def message_id(data: bytes) -> str:
    found = MESSAGE_ID.search(data)
    assert found, data[:300]
    return found.group(1).decode()


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def copied(data: bytes) -> bytes:
    """What mbsync stored, less the one ``X-TUID`` field it adds at the end of the header of
    every message it copies (to find the copy again should it be interrupted), in LF form."""
    data = lf(data)
    head, sep, body = data.partition(b"\n\n")
    fields = head.split(b"\n")
    tuids = [i for i, f in enumerate(fields) if f.startswith(b"X-TUID: ")]
    assert tuids == [len(fields) - 1], head[-300:]
    return b"\n".join(fields[:-1]) + sep + body


# --- the server ---------------------------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path, db_url: str) -> Iterator[TidingsServer]:
    directory = tmp_path / "server"
    directory.mkdir()
    config = write_config(directory, db_url, listen={"smtp": ""}, limits={"auth_failure_delay": 0})
    server = TidingsServer(config).start()
    try:
        yield server
    finally:
        server.stop()


class Server:
    """The account as an IMAP client and the store see it."""

    def __init__(self, site: TidingsServer, db_url: str, address: str) -> None:
        self.site, self.db_url, self.address = site, db_url, address
        self.cert = site.config.parent / "data/tls/cert.pem"

    def client(self) -> imaplib.IMAP4_SSL:
        context = ssl.create_default_context(cafile=str(self.cert))
        client = imaplib.IMAP4_SSL("localhost", self.site.addresses["imaps"][1],
                                   ssl_context=context, timeout=30)  # fmt: skip
        client.login(self.address, PASSWORD)
        return client

    def state(self, folder: str = "INBOX") -> MailboxState:
        return asyncio.run(mailbox_state(self.db_url, self.address, folder))

    def messages(self, folder: str = "INBOX") -> dict[str, tuple[bytes, set[str]]]:
        """Message-ID → (bytes, flags) of every message in ``folder``; each ID must be once."""
        state = self.state(folder)
        bodies = asyncio.run(stored_messages(self.db_url, self.address, folder))
        assert len(bodies) == len(state.uids)
        out: dict[str, tuple[bytes, set[str]]] = {}
        for uid, body in zip(state.uids, bodies, strict=True):
            mid = message_id(body)
            assert mid not in out, f"{mid} is twice in the server's {folder}"
            out[mid] = (body, set(state.flags[uid].split()))
        return out

    def uids_of(self, folder: str) -> dict[str, int]:
        state = self.state(folder)
        bodies = asyncio.run(stored_messages(self.db_url, self.address, folder))
        return {message_id(b): uid for uid, b in zip(state.uids, bodies, strict=True)}


# --- the Maildir --------------------------------------------------------------------------------


class Maildir:
    """mbsync's local side: one Maildir per folder under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, name: str) -> Path:
        return self.root / name

    def files(self, name: str) -> list[Path]:
        box = self.folder(name)
        return sorted(p for sub in ("cur", "new") for p in (box / sub).iterdir() if p.is_file())

    def messages(self, name: str) -> dict[str, tuple[Path, set[str]]]:
        out: dict[str, tuple[Path, set[str]]] = {}
        for path in self.files(name):
            mid = message_id(path.read_bytes())
            assert mid not in out, f"{mid} is twice in the local {name}"
            out[mid] = (path, flags_of(path))
        return out

    def snapshot(self) -> dict[str, bytes]:
        """Every file under the root (mbsync's state files included) by path, with contents."""
        return {
            str(p.relative_to(self.root)): p.read_bytes()
            for p in self.root.rglob("*")
            if p.is_file()
        }


def flags_of(path: Path) -> set[str]:
    _, sep, info = path.name.rpartition(":2,")
    return {MAILDIR_FLAGS[c] for c in info if c in MAILDIR_FLAGS} if sep else set()


def set_flags(path: Path, add: str = "", remove: str = "") -> None:
    """Change a Maildir file's flags as a mail reader does: rename it into cur/."""
    base, _, info = path.name.partition(":2,")
    letters = "".join(sorted((set(info) | set(add)) - set(remove)))
    path.rename(path.parent.parent / "cur" / f"{base}:2,{letters}")


# --- mbsync -------------------------------------------------------------------------------------


def mbsync_rc(home: Path, server: Server, local: Path) -> Path:
    rc = home / "mbsyncrc"
    rc.write_text(
        "IMAPAccount tidings\n"
        "Host localhost\n"
        f"Port {server.site.addresses['imaps'][1]}\n"
        f"User {server.address}\n"
        f"Pass {PASSWORD}\n"
        f"{tls_keyword()} IMAPS\n"
        f"CertificateFile {server.cert}\n"
        "AuthMechs LOGIN\n"
        "\n"
        "IMAPStore remote\n"
        "Account tidings\n"
        "\n"
        "MaildirStore local\n"
        f"Path {local}/\n"
        f"Inbox {local}/INBOX\n"
        "SubFolders Verbatim\n"
        "\n"
        "Channel everything\n"
        "Far :remote:\n"
        "Near :local:\n"
        "Patterns *\n"
        "Create Both\n"
        "Expunge Both\n"
        "SyncState *\n"
        "Sync All\n"
    )
    return rc


def tls_keyword() -> str:
    """isync 1.5 renamed SSLType to TLSType (the old name still works, with a warning)."""
    version = subprocess.run(["mbsync", "--version"], capture_output=True, text=True, check=True)
    found = re.search(r"(\d+)\.(\d+)", version.stdout)
    assert found, version.stdout
    return "TLSType" if (int(found[1]), int(found[2])) >= (1, 5) else "SSLType"


def mbsync(rc: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    done = subprocess.run(
        ["mbsync", "-c", str(rc), *extra, "-a"], capture_output=True, text=True, timeout=180,
        check=False, cwd=rc.parent, env={"PATH": "/usr/bin:/bin", "HOME": str(rc.parent)},
    )  # fmt: skip
    assert done.returncode == 0, (
        f"mbsync exited {done.returncode} after {time.monotonic() - started:.1f}s\n"
        f"{done.stdout[-5000:]}\n{done.stderr[-20000:]}"
    )
    return done


# --- the test ---------------------------------------------------------------------------------


def test_mbsync_syncs_an_account_both_ways(
    site: TidingsServer, db_url: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]

    def mid(n: int) -> str:
        return f"{n}.{tag}@interop.example"

    address = f"sync{tag}@example.org"
    asyncio.run(add_users(db_url, address))
    server = Server(site, db_url, address)
    inbox = [message(tag, n) for n in range(COUNT)]
    asyncio.run(deliver_messages(db_url, address, inbox))
    archived = [message(tag, 1000 + n) for n in range(ARCHIVED)]
    client = server.client()
    for n, data in enumerate(archived):
        assert client.append("Archive", "(\\Seen)" if n % 2 else None, None, data)[0] == "OK"
    # Flags set before the first sync, which must bring them down.
    uids = server.uids_of("INBOX")
    client.select("INBOX")
    store(client, [uids[mid(n)] for n in range(0, COUNT, 10)], "+FLAGS", "\\Seen")
    store(client, [uids[mid(n)] for n in range(0, COUNT, 25)], "+FLAGS", "\\Answered")
    client.logout()
    # What each folder must hold after each sync: Message-ID -> (bytes as written, flags).
    expected = {"INBOX": server.messages("INBOX"), "Archive": server.messages("Archive")}
    assert sorted(data for data, _ in expected["INBOX"].values()) == sorted(inbox)
    assert sorted(data for data, _ in expected["Archive"].values()) == sorted(archived)
    box = expected["INBOX"]
    assert {m for m, (_, flags) in box.items() if "\\Seen" in flags} == {
        mid(n) for n in range(0, COUNT, 10)
    }

    local = Maildir(tmp_path / "mail")
    local.root.mkdir()
    rc = mbsync_rc(tmp_path, server, local.root)

    # 1. The first sync brings every folder and message down, with its flags.
    mbsync(rc)
    assert sorted(p.name for p in local.root.iterdir()) == sorted(FOLDERS)
    for folder in FOLDERS:
        assert_agree(server, local, folder, expected.get(folder, {}), uploaded=set(), written=set())
    down = local.messages("INBOX")
    assert len(down) == COUNT

    # 2. Changes on both sides, no message changed on both.
    for n in range(1, 41):  # read locally (every 10th already was)
        set_flags(down[mid(n)][0], add="S")
        box[mid(n)][1].add("\\Seen")
    for n in range(41, 61):  # flagged locally
        set_flags(down[mid(n)][0], add="F")
        box[mid(n)][1].add("\\Flagged")
    for n in range(200, 300, 10):  # marked unread again locally (200, 225, 250, 275 answered)
        set_flags(down[mid(n)][0], remove="S")
        box[mid(n)][1].discard("\\Seen")
    for n in range(100, 130):  # deleted locally
        down[mid(n)][0].unlink()
        del box[mid(n)]
    for n in range(130, 140):  # moved locally to Archive: to mbsync, a deletion and a new file
        path = down[mid(n)][0]
        # mbsync keeps a message's UID in its file name (",U="); a moved file must lose it.
        name = re.sub(r",U=\d+", "", path.name)
        path.rename(local.folder("Archive") / path.parent.name / name)
        expected["Archive"][mid(n)] = box.pop(mid(n))
    written = {mid(n) for n in [*range(2000, 2012), *range(3000, 3003)]}
    uploaded = {mid(n) for n in range(130, 140)} | written
    for folder, numbers in {"INBOX": range(2000, 2012), "Archive": range(3000, 3003)}.items():
        for n in numbers:
            # As a mail reader writes them: LF line ends; some already read.
            data = message(tag, n)
            name = f"{int(time.time())}.M{n}P1.localhost"
            if n % 3 == 0:
                (local.folder(folder) / "cur" / f"{name}:2,S").write_bytes(lf(data))
                expected[folder][mid(n)] = (data, {"\\Seen"})
            else:
                (local.folder(folder) / "new" / name).write_bytes(lf(data))
                expected[folder][mid(n)] = (data, set())

    client = server.client()
    client.select("INBOX")
    store(client, [uids[mid(n)] for n in range(300, 320)], "+FLAGS", "\\Flagged")
    store(client, [uids[mid(n)] for n in range(320, 340)], "+FLAGS", "\\Seen")
    store(client, [uids[mid(n)] for n in range(350, 400, 10)], "-FLAGS", "\\Seen")
    store(client, [uids[mid(n)] for n in range(400, 425)], "+FLAGS", "\\Deleted")
    assert client.expunge()[0] == "OK"
    moved = ",".join(str(uids[mid(n)]) for n in range(450, 455))
    assert client.uid("MOVE", moved, "Archive")[0] == "OK"
    client.logout()
    arrived = [message(tag, 4000 + n) for n in range(20)]
    asyncio.run(deliver_messages(db_url, address, arrived))
    for n in range(300, 320):
        box[mid(n)][1].add("\\Flagged")
    for n in range(320, 340):
        box[mid(n)][1].add("\\Seen")
    for n in range(350, 400, 10):
        box[mid(n)][1].discard("\\Seen")
    for n in range(400, 425):
        del box[mid(n)]
    for n in range(450, 455):
        expected["Archive"][mid(n)] = box.pop(mid(n))
    for n, data in enumerate(arrived):
        box[mid(4000 + n)] = (data, set())
    assert len(expected["INBOX"]) == COUNT - 30 - 10 - 25 - 5 + 12 + 20
    assert len(expected["Archive"]) == ARCHIVED + 10 + 3 + 5

    # 3. The second sync makes both sides what the changes on either side asked for.
    mbsync(rc)
    for folder in FOLDERS:
        assert_agree(
            server, local, folder, expected.get(folder, {}), uploaded=uploaded, written=written
        )

    # 4. A third sync has nothing left to do, on either side.
    before = {folder: server.state(folder) for folder in FOLDERS}
    files = local.snapshot()
    third = mbsync(rc, "-V")
    log = third.stdout[-3000:]
    assert {folder: server.state(folder) for folder in FOLDERS} == before, log
    after = local.snapshot()
    assert sorted(after) == sorted(files), log  # no file came, went, or was renamed
    # mbsync rewrites its sync state each run; nothing else may change.
    assert [k for k in after if after[k] != files[k] and ".mbsyncstate" not in k] == [], log
    assert "Traceback" not in site.log()


def store(client: imaplib.IMAP4_SSL, uids: list[int], mode: str, flag: str) -> None:
    assert uids
    typ, _ = client.uid("STORE", ",".join(map(str, sorted(uids))), mode, f"({flag})")
    assert typ == "OK"


def assert_agree(
    server: Server,
    local: Maildir,
    folder: str,
    expected: dict[str, tuple[bytes, set[str]]],
    *,
    uploaded: set[str],
    written: set[str],
) -> None:
    """``folder`` holds the expected messages with the expected flags, on the server and in
    the Maildir, each once: byte for byte on the server as delivered or (an upload) as in
    the Maildir; locally, as mbsync copied it down or as written there."""
    there = server.messages(folder)
    here = local.messages(folder)
    assert sorted(there) == sorted(expected), f"server's {folder}"
    assert sorted(here) == sorted(expected), f"local {folder}"
    for m, (data, flags) in expected.items():
        stored, server_flags = there[m]
        if m in uploaded:
            assert b"\n" not in stored.replace(b"\r\n", b""), f"{m}: line ends not CRLF"
            assert copied(stored) == lf(data), f"{m}: the upload to {folder} is not as written"
        else:
            assert stored == data, f"{m}: the server's copy in {folder} changed"
        assert server_flags == flags, f"{m}: flags on the server's {folder}"
        path, local_flags = here[m]
        assert local_flags == flags, f"{m}: flags in local {folder}: {path.name}"
        body = path.read_bytes()
        if m in written:
            assert body == lf(data), f"{path} was changed"
        else:
            assert copied(body) == lf(data), f"{path} is not {m}"
