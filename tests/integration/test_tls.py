"""TLS setup: the generated certificate's names, and certificate problems named at startup;
what the server context negotiates; SIGHUP's new certificate on every TLS listener while the
sessions already open go on."""

from __future__ import annotations

import hashlib
import imaplib
import ipaddress
import poplib
import signal
import smtplib
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from helpers import TidingsServer, add_users, tidings, write_config
from tidings.config import build_config
from tidings.tls import server_context, write_self_signed


def test_self_signed_certificate_names_hostname_localhost_and_loopback(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key, "mail.example.org")
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["mail.example.org", "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert key.stat().st_mode & 0o077 == 0, "the private key is readable by its owner only"
    # Apple's clients refuse a server certificate valid for more than 825 days or without the
    # serverAuth usage, even a trusted one.
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime.days <= 825
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage


def test_renewed_self_signed_key_is_private_whatever_the_old_file_mode(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    key.parent.mkdir(mode=0o755)
    key.write_text("old key\n")
    key.chmod(0o644)
    write_self_signed(cert, key, "mail.example.org")
    assert key.stat().st_mode & 0o777 == 0o600


# --- what the server context negotiates ----------------------------------------------------------


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> ssl.SSLObject:
    """A TLS handshake between the two contexts in memory; the client's end."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {c: False, s: False}
    for _ in range(10):
        for side in (c, s):
            if not done[side]:
                try:
                    side.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return c
    raise AssertionError("the handshake did not finish")


def client(maximum: ssl.TLSVersion | None = None, ciphers: str | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if ciphers:
        context.set_ciphers(ciphers)
    if maximum:
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = maximum
    return context


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_server_context_speaks_tls12_and_13_with_aead_suites_only(tmp_path: Path) -> None:
    context = server_context(build_config({"server": {"data_dir": str(tmp_path)}}, {}, "/"))
    assert handshake(context, client()).version() == "TLSv1.3"
    tls12 = handshake(context, client(ssl.TLSVersion.TLSv1_2))
    assert tls12.version() == "TLSv1.2"
    cipher = tls12.cipher()
    assert cipher is not None
    name = cipher[0]
    assert name.startswith("ECDHE-") and ("-GCM-" in name or "CHACHA20" in name), name
    # Refused: TLS 1.1 and 1.0 (RFC 8996), and TLS 1.2 with CBC suites (LUCKY13) or a key
    # exchange without forward secrecy.
    for weak in (
        client(ssl.TLSVersion.TLSv1_1, "DEFAULT:@SECLEVEL=0"),
        client(ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA:AES128-SHA"),
        client(ssl.TLSVersion.TLSv1_2, "AES128-GCM-SHA256:AES256-GCM-SHA384"),
    ):
        with pytest.raises(ssl.SSLError):
            handshake(context, weak)
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_CIPHER_SERVER_PREFERENCE):
        assert context.options & option, option


def test_unreadable_certificate_stops_serve_with_one_line(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        f"sqlite:///{tmp_path / 't.db'}",
        tls={"cert": str(tmp_path / "missing.pem"), "key": str(tmp_path / "missing.key")},
    )
    result = tidings(config, "serve", timeout=60)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tidings: tls.cert: cannot read ") and "missing.pem" in last


def test_certificate_that_is_not_a_certificate_is_named(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    (tmp_path / "bad.key").write_text("not a key\n")
    config = write_config(
        tmp_path,
        f"sqlite:///{tmp_path / 't.db'}",
        tls={"cert": str(tmp_path / "bad.pem"), "key": str(tmp_path / "bad.key")},
    )
    result = tidings(config, "serve", timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("tidings: tls.cert: ")


def test_everything_tidings_writes_is_private(tmp_path: Path) -> None:
    """The database holds every message and password hash: no other user may read it."""
    result = tidings(None, "init", "--dir", str(tmp_path / "site"), "--demo")
    assert result.returncode == 0, result.stderr
    written = [p for p in (tmp_path / "site").rglob("*")]
    assert any(p.name == "tidings.db" for p in written)
    for path in written:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"


# --- SIGHUP: a renewed certificate, sessions kept ----------------------------------------------


def client_tls() -> ssl.SSLContext:
    return client()


def fingerprint(sock: object) -> str:
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def file_fingerprint(cert: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()


def served(server: TidingsServer, listener: str) -> str:
    """The fingerprint of the certificate a new connection to ``listener`` is given."""
    host, port = server.addresses[listener]
    if listener in ("smtp", "submission"):
        with smtplib.SMTP(host, port, timeout=10) as smtp:
            smtp.starttls(context=client_tls())
            return fingerprint(smtp.sock)
    if listener == "imap":
        imap = imaplib.IMAP4(host, port, timeout=10)
        imap.starttls(client_tls())
        try:
            return fingerprint(imap.sock)
        finally:
            imap.logout()
    if listener == "pop3":
        pop = poplib.POP3(host, port, timeout=10)
        pop.stls(client_tls())
        try:
            return fingerprint(pop.sock)
        finally:
            pop.quit()
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        client_tls().wrap_socket(raw) as implicit,
    ):
        return fingerprint(implicit)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_sighup_new_certificate_on_every_listener_open_sessions_go_on(
    tmp_path: Path, db_url: str
) -> None:
    """Every TLS listener, implicit or STARTTLS, gives new connections the renewed certificate
    after SIGHUP; an SMTP, an IMAP and a POP3 session upgraded before go on undisturbed."""
    await add_users(db_url, "bob@example.org")
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    write_self_signed(cert, key, "mx.tidings.test")
    first = file_fingerprint(cert)
    config = write_config(tmp_path, db_url, tls={"cert": str(cert), "key": str(key)})
    server = TidingsServer(config).start()
    try:
        smtp = smtplib.SMTP(*server.addresses["smtp"], timeout=10)
        smtp.starttls(context=client_tls())
        smtp.ehlo("client.example")
        imap = imaplib.IMAP4(*server.addresses["imap"], timeout=10)
        imap.starttls(client_tls())
        imap.login("bob@example.org", "secret")
        pop = poplib.POP3(*server.addresses["pop3"], timeout=10)
        pop.stls(client_tls())
        pop.user("bob@example.org")
        pop.pass_("secret")
        assert {fingerprint(s) for s in (smtp.sock, imap.sock, pop.sock)} == {first}

        write_self_signed(cert, key, "mx.tidings.test")
        second = file_fingerprint(cert)
        before = server.log().count("reloaded")
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while server.log().count("reloaded") == before:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)

        listeners = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s")
        assert {name: served(server, name) for name in listeners} == dict.fromkeys(
            listeners, second
        )
        # The sessions opened before keep their connection (and its certificate) and work.
        assert smtp.sendmail("a@sender.example", ["bob@example.org"], "Subject: hup\r\n\r\nx") == {}
        assert imap.select("INBOX")[0] == "OK"
        assert imap.noop()[0] == "OK"
        assert pop.stat()[0] >= 0
        assert {fingerprint(s) for s in (smtp.sock, imap.sock, pop.sock)} == {first}
        smtp.quit()
        imap.logout()
        pop.quit()
    finally:
        server.stop()
