"""The loopback SMTP peer (tests/peer.py) that queue tests relay to, checked with a real client
(aiosmtplib, and the stdlib's smtplib for the threaded mode)."""

from __future__ import annotations

import asyncio
import smtplib
import ssl

import aiosmtplib
import pytest

from peer import DROP, SMTPPeer

MESSAGE = b"From: a@client.test\r\nTo: b@peer.test\r\nSubject: hi\r\n\r\nHello.\r\n.dot line\r\n"


def client(peer: SMTPPeer, **kwargs: object) -> aiosmtplib.SMTP:
    options: dict[str, object] = {
        "local_hostname": "client.test",
        "start_tls": False,
        "timeout": 10,
    }
    options.update(kwargs)
    return aiosmtplib.SMTP(hostname=peer.host, port=peer.port, **options)


async def test_plain_delivery() -> None:
    async with SMTPPeer() as peer:
        assert peer.port != 0
        async with client(peer) as smtp:
            errors, reply = await smtp.sendmail(
                "a@client.test",
                ["b@peer.test", "c@peer.test"],
                MESSAGE,
                mail_options=["BODY=8BITMIME"],
            )
        assert errors == {}
        assert reply.startswith("2.0.0 OK")
        [message] = await peer.wait_for(1)
    assert message.sender == "a@client.test"
    assert message.recipients == ("b@peer.test", "c@peer.test")
    assert message.content == MESSAGE  # dot-unstuffed, CRLF kept
    assert message.tls is False
    assert message.ehlo == "client.test"
    assert "BODY=8BITMIME" in message.mail_options
    assert message.accepted
    assert message.connection == 0


async def test_null_sender_is_recorded_as_empty() -> None:
    async with SMTPPeer() as peer:
        async with client(peer) as smtp:
            await smtp.sendmail("", ["b@peer.test"], MESSAGE)
        [message] = await peer.wait_for(1)
    assert message.sender == ""


async def test_starttls_with_the_peer_certificate() -> None:
    async with SMTPPeer(starttls=True, hostname="mx.peer.test") as peer:
        assert peer.cert_path is not None
        context = ssl.create_default_context(cafile=str(peer.cert_path))
        async with client(peer, start_tls=True, tls_context=context) as smtp:
            assert smtp.get_transport_info("sslcontext") is not None
            await smtp.sendmail("a@client.test", ["b@peer.test"], MESSAGE)
        [message] = await peer.wait_for(1)
    assert message.tls is True
    assert message.ehlo == "client.test"  # the EHLO given again after STARTTLS
    assert peer.connections[0].tls is True


async def test_require_starttls_refuses_plain_mail() -> None:
    async with SMTPPeer(require_starttls=True) as peer:
        async with client(peer) as smtp:
            await smtp.ehlo()
            assert smtp.supports_extension("starttls")
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
                await smtp.sendmail("a@client.test", ["b@peer.test"], MESSAGE)
        assert refused.value.code == 530
        assert peer.transactions == []


async def test_scripted_data_replies_then_default() -> None:
    later = "451 4.3.0 try later"
    async with SMTPPeer(data_replies=[later, later]) as peer:
        for _ in range(2):
            async with client(peer) as smtp:
                with pytest.raises(aiosmtplib.SMTPDataError) as refused:
                    await smtp.sendmail("a@client.test", ["b@peer.test"], MESSAGE)
                assert (refused.value.code, refused.value.message) == (451, "4.3.0 try later")
        async with client(peer) as smtp:
            await smtp.sendmail("a@client.test", ["b@peer.test"], MESSAGE)
        await peer.wait_for(1)
    assert [t.reply[:3] for t in peer.transactions] == ["451", "451", "250"]
    assert len(peer.messages) == 1
    assert len(peer.connections) == 3


async def test_scripted_rcpt_replies_with_default_in_between() -> None:
    async with SMTPPeer(rcpt_replies=["452 4.2.2 mailbox full", None, "450 4.2.1 busy"]) as peer:
        async with client(peer) as smtp:
            errors, _ = await smtp.sendmail(
                "a@client.test", ["one@peer.test", "two@peer.test", "three@peer.test"], MESSAGE
            )
        [message] = await peer.wait_for(1)
    assert set(errors) == {"one@peer.test", "three@peer.test"}
    assert errors["one@peer.test"].code == 452
    assert message.recipients == ("two@peer.test",)


async def test_rejected_recipient_gets_5xx() -> None:
    async with SMTPPeer(reject=["gone@peer.test"]) as peer:
        async with client(peer) as smtp:
            errors, _ = await smtp.sendmail(
                "a@client.test", ["b@peer.test", "Gone@peer.test"], MESSAGE
            )
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
                await smtp.sendmail("a@client.test", ["gone@peer.test"], MESSAGE)
        [message] = await peer.wait_for(1)
    assert errors["Gone@peer.test"].code == 550
    assert errors["Gone@peer.test"].message == "5.1.1 <gone@peer.test>: no such user"
    assert message.recipients == ("b@peer.test",)


async def test_reject_with_a_reply_of_choice() -> None:
    peer = SMTPPeer(reject={"over@peer.test": "552 5.2.2 over quota"})
    async with peer, client(peer) as smtp:
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await smtp.sendmail("a@client.test", ["over@peer.test"], MESSAGE)
    assert refused.value.recipients[0].code == 552


async def test_two_messages_on_one_connection() -> None:
    async with SMTPPeer() as peer:
        async with client(peer) as smtp:
            await smtp.sendmail("a@client.test", ["b@peer.test"], MESSAGE)
            await smtp.sendmail("a@client.test", ["c@peer.test"], MESSAGE)
        async with client(peer) as smtp:
            await smtp.sendmail("a@client.test", ["d@peer.test"], MESSAGE)
        messages = await peer.wait_for(3)
        await peer.wait_until(lambda p: all(c.closed for c in p.connections), what="closes")
    assert [m.connection for m in messages] == [0, 0, 1]
    assert [c.transactions for c in peer.connections] == [2, 1]


async def test_closed_on_connect() -> None:
    async with SMTPPeer(on_connect="close") as peer:
        with pytest.raises((aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError)):
            async with client(peer):
                pass
        await peer.wait_until(lambda p: len(p.connections) == 1 and p.connections[0].closed)


async def test_refusing_greeting() -> None:
    async with SMTPPeer(on_connect="554 5.3.2 not now") as peer:
        with pytest.raises(aiosmtplib.SMTPConnectResponseError) as refused:
            async with client(peer):
                pass
    assert refused.value.code == 554


async def test_silent_host_times_out() -> None:
    async with SMTPPeer(on_connect="silent") as peer:
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            async with client(peer, timeout=0.3):
                pass
        assert len(peer.connections) == 1


async def test_drop_mid_transaction_is_recorded_without_reply() -> None:
    async with SMTPPeer(data_replies=[DROP]) as peer:
        async with client(peer) as smtp:
            with pytest.raises(aiosmtplib.SMTPServerDisconnected):
                await smtp.sendmail("a@client.test", ["b@peer.test"], MESSAGE)
        await peer.wait_until(lambda p: p.connections[0].closed)
    [transaction] = peer.transactions
    assert transaction.reply == ""
    assert not transaction.accepted
    assert transaction.content == MESSAGE  # the peer has it; the client cannot know


async def test_421_closes_the_connection() -> None:
    async with SMTPPeer(mail_replies=["421 4.3.2 shutting down"]) as peer, client(peer) as smtp:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await smtp.sendmail("a@client.test", ["b@peer.test"], MESSAGE)
        assert refused.value.code == 421
        await peer.wait_until(lambda p: p.connections[0].closed, what="the close")


async def test_without_smtputf8() -> None:
    async with SMTPPeer(smtputf8=False) as peer, client(peer) as smtp:
        await smtp.ehlo()
        assert not smtp.supports_extension("smtputf8")
        assert smtp.supports_extension("8bitmime")
    async with SMTPPeer() as peer:
        async with client(peer) as smtp:
            await smtp.ehlo()
            assert smtp.supports_extension("smtputf8")
            await smtp.sendmail(
                "jörg@client.test", ["b@peer.test"], MESSAGE, mail_options=["SMTPUTF8"]
            )
        [message] = await peer.wait_for(1)
    assert message.sender == "jörg@client.test"
    assert "SMTPUTF8" in message.mail_options


async def test_other_loopback_address() -> None:
    async with SMTPPeer("127.0.0.2") as peer:
        assert peer.address[0] == "127.0.0.2"
        async with client(peer) as smtp:
            await smtp.sendmail("a@client.test", ["b@peer.test"], MESSAGE)
        await peer.wait_for(1)


async def test_wait_for_times_out_saying_what_arrived() -> None:
    async with SMTPPeer(data_replies=["554 5.7.1 no"]) as peer:
        async with client(peer) as smtp:
            with pytest.raises(aiosmtplib.SMTPDataError):
                await smtp.sendmail("a@client.test", ["b@peer.test"], MESSAGE)
        with pytest.raises(TimeoutError, match=r"554 5\.7\.1 no"):
            await peer.wait_for(1, timeout=0.2)


async def test_wait_for_wakes_when_a_message_arrives() -> None:
    async with SMTPPeer() as peer:

        async def send_later() -> None:
            await asyncio.sleep(0.1)
            async with client(peer) as smtp:
                await smtp.sendmail("a@client.test", ["b@peer.test"], MESSAGE)

        sender = asyncio.create_task(send_later())
        assert len(await peer.wait_for(1, timeout=5)) == 1
        await sender


def test_threaded_peer_for_sync_tests() -> None:
    with SMTPPeer(starttls=True) as peer:
        assert peer.cert_path is not None
        context = ssl.create_default_context(cafile=str(peer.cert_path))
        with smtplib.SMTP(peer.host, peer.port, local_hostname="sync.test", timeout=10) as smtp:
            smtp.starttls(context=context)
            smtp.sendmail("a@client.test", ["b@peer.test"], MESSAGE)
            smtp.sendmail("a@client.test", ["c@peer.test"], MESSAGE)
        messages = peer.wait_for_sync(2)
        peer.wait_until_sync(lambda p: p.connections[0].closed, what="the close")
    assert [m.recipients for m in messages] == [("b@peer.test",), ("c@peer.test",)]
    assert all(m.tls and m.ehlo == "sync.test" for m in messages)
    assert [c.transactions for c in peer.connections] == [2]


async def test_threaded_peer_from_an_async_test() -> None:
    """The threaded peer keeps answering while the test's loop is blocked, and the async wait
    works across the two loops."""
    with SMTPPeer() as peer:

        def blocking_send() -> None:
            with smtplib.SMTP(peer.host, peer.port, timeout=10) as smtp:
                smtp.sendmail("a@client.test", ["b@peer.test"], MESSAGE)

        blocking_send()  # blocks this loop: an in-loop peer could not answer
        await asyncio.to_thread(blocking_send)
        assert len(await peer.wait_for(2, timeout=5)) == 2
