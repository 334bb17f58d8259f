"""The relay's SMTP client: reply parsing and dot-stuffing, then real transactions against an
aiosmtpd peer, with and without PIPELINING, over STARTTLS."""

from __future__ import annotations

import ssl

import pytest

from peer import SMTPPeer
from tidings.queue.client import (
    ConnectionFailed,
    ReplyParser,
    SMTPClient,
    dot_stuffed,
    extensions,
)


def parse(*lines: bytes) -> list[object]:
    parser = ReplyParser()
    return [parser.feed(line) for line in lines]


def test_multiline_reply_is_one_reply() -> None:
    first, second, last = parse(b"250-mx.example greets you\r\n", b"250-SIZE 100\r\n",
                                b"250 PIPELINING\r\n")  # fmt: skip
    assert first is None and second is None
    assert last is not None
    assert last.code == 250  # type: ignore[attr-defined]
    assert extensions(last) == {"SIZE": "100", "PIPELINING": ""}  # type: ignore[arg-type]


def test_reply_text_and_bare_code() -> None:
    [reply] = parse(b"550 5.1.1 <x@y>: no such user\r\n")
    assert reply.text == "550 5.1.1 <x@y>: no such user"  # type: ignore[attr-defined]
    [bare] = parse(b"250\r\n")
    assert bare.code == 250 and bare.ok  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "lines",
    [
        [b"hello\r\n"],
        [b"99 too short\r\n"],
        [b"250-first\r\n", b"550 mixed codes\r\n"],
        [b"650 not a class\r\n"],
    ],
)
def test_garbage_is_a_broken_connection(lines: list[bytes]) -> None:
    with pytest.raises(ConnectionFailed):
        parse(*lines)


def test_dot_stuffing() -> None:
    assert dot_stuffed(b".hidden\r\nline\r\n.\r\n") == b"..hidden\r\nline\r\n..\r\n.\r\n"
    assert dot_stuffed(b"no final newline") == b"no final newline\r\n.\r\n"


def client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])
async def test_transactions_with_refused_recipients(pipelining: bool) -> None:
    async with SMTPPeer(pipelining=pipelining, starttls=True, reject=["gone@peer.test"]) as peer:
        client = await SMTPClient.connect(
            peer.host, peer.port, local_hostname="mx.tidings.test", command_timeout=5
        )
        assert client.supports("PIPELINING") is pipelining
        await client.starttls(client_tls(), "mx.peer.test", "mx.tidings.test")
        assert client.tls
        tx = await client.send(
            "a@tidings.test", ["b@peer.test", "gone@peer.test"], b"Subject: 1\r\n\r\n.dot\r\n"
        )
        assert tx.mail.ok and [r.code for r in tx.rcpts] == [250, 550]
        assert tx.data is not None and tx.data.ok
        # Nobody to deliver to: no message goes out, and the connection stays usable.
        none = await client.send("a@tidings.test", ["gone@peer.test"], b"Subject: 2\r\n\r\nx\r\n")
        assert none.data is None
        await client.rset()
        again = await client.send("a@tidings.test", ["c@peer.test"], b"Subject: 3\r\n\r\ny\r\n")
        assert again.data is not None and again.data.ok
        await client.quit()
        [first, third] = await peer.wait_for(2)
    assert first.tls and first.recipients == ("b@peer.test",)
    assert first.content.endswith(b".dot\r\n")
    assert third.recipients == ("c@peer.test",)
    assert len(peer.connections) == 1


async def test_421_closes_and_raises() -> None:
    async with SMTPPeer(pipelining=True, data_replies=["421 4.3.2 going down"]) as peer:
        client = await SMTPClient.connect(
            peer.host, peer.port, local_hostname="mx.tidings.test", command_timeout=5
        )
        with pytest.raises(ConnectionFailed, match="421"):
            await client.send("a@tidings.test", ["b@peer.test"], b"Subject: x\r\n\r\ny\r\n")


async def test_dead_host_is_a_connection_failure() -> None:
    async with SMTPPeer(on_connect="554 5.3.2 not taking mail") as peer:
        with pytest.raises(ConnectionFailed, match="554"):
            await SMTPClient.connect(
                peer.host, peer.port, local_hostname="mx.tidings.test", command_timeout=5
            )
