"""TLS setup: the generated certificate's names, and certificate problems named at startup."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509

from helpers import tidings, write_config
from tidings.tls import write_self_signed


def test_self_signed_certificate_names_hostname_localhost_and_loopback(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_self_signed(cert, key, "mail.example.org")
    names = (
        x509.load_pem_x509_certificate(cert.read_bytes())
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert names.get_values_for_type(x509.DNSName) == ["mail.example.org", "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert key.stat().st_mode & 0o077 == 0, "the private key is readable by its owner only"


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
