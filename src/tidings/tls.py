"""TLS: server contexts (TLS 1.2 or newer) and the self-signed certificate of the default setup.

The self-signed certificate names the configured hostname, ``localhost`` and the loopback
addresses, because clients such as mbsync and fetchmail check the name even when told to
trust the certificate itself.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tidings.config import Config, ConfigError, resolve_path


def certificate_paths(config: Config) -> tuple[Path, Path]:
    """The certificate and key to serve: the configured ones, or the generated pair."""
    if config.tls.cert:
        return resolve_path(config.base_dir, config.tls.cert), resolve_path(
            config.base_dir, config.tls.key
        )
    tls_dir = config.data_path / "tls"
    return tls_dir / "cert.pem", tls_dir / "key.pem"


def server_context(config: Config) -> ssl.SSLContext:
    """The SSL context every listener uses; generates the self-signed pair if needed."""
    cert, key = certificate_paths(config)
    if not config.tls.cert and not (cert.exists() and key.exists()):
        write_self_signed(cert, key, config.server.hostname)
    context = _new_context()
    _load_pair(context, cert, key)
    return context


def reload_certificate(context: ssl.SSLContext, config: Config) -> Path:
    """Load the (renewed) certificate and key of ``config`` into the live ``context``: new
    connections get them, sessions already open keep the one they started with. The pair is
    tried on a scratch context first, so a bad pair raises ConfigError and leaves ``context``
    as it was. Both loads read one private copy of the files, so a renewal writing them at
    that moment cannot slip a different pair into the second. Returns the certificate's path."""
    cert, key = certificate_paths(config)
    pair = []
    for name, path in (("tls.cert", cert), ("tls.key", key)):
        try:
            pair.append(path.read_bytes())
        except OSError as e:
            raise ConfigError(f"{name}: cannot read {path}: {e.strerror}") from None
    # The copy goes in the data dir when there is one: writable by design, unlike /tmp in
    # some containers.
    base = config.data_path if config.data_path.is_dir() else None
    try:
        scratch = Path(tempfile.mkdtemp(prefix=".tls-reload-", dir=base))
    except OSError as e:
        raise ConfigError(f"tls: no room to copy the certificate: {e.strerror}") from None
    try:
        cert_copy, key_copy = scratch / "cert.pem", scratch / "key.pem"
        cert_copy.write_bytes(pair[0])
        fd = os.open(key_copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pair[1])
        try:
            _new_context().load_cert_chain(cert_copy, key_copy)
        except (ssl.SSLError, ValueError) as e:
            raise ConfigError(f"tls.cert: {cert} and {key} are not a usable pair: {e}") from None
        context.load_cert_chain(cert_copy, key_copy)
    except OSError as e:
        raise ConfigError(f"tls: cannot copy the certificate to {scratch}: {e.strerror}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return cert


# TLS 1.2 suites: forward-secret key exchange (ECDHE) and an AEAD cipher only — Mozilla's
# "intermediate" list without the DHE suites (this context loads no DH parameters). Python's
# default also allows CBC suites (ECDHE-RSA-AES256-SHA384 ...), which testssl rates "obsolete"
# and LUCKY13-prone. Every mail client that speaks TLS 1.2 offers one of these; TLS 1.3 suites
# are OpenSSL's (all AEAD) and not affected by this string.
TLS12_CIPHERS = "@SECLEVEL=2:ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"


def _new_context() -> ssl.SSLContext:
    """The server side of every TLS listener: TLS 1.2 or 1.3 (RFC 8996 retires 1.0 and 1.1,
    RFC 8314 asks mail servers for 1.2), AEAD suites in the server's order, no TLS
    compression (CRIME), no renegotiation (a client could make the server redo handshakes)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    )
    return context


def _load_pair(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    for name, path in (("tls.cert", cert), ("tls.key", key)):
        try:
            with path.open("rb"):
                pass
        except OSError as e:
            raise ConfigError(f"{name}: cannot read {path}: {e.strerror}") from None
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as e:
        raise ConfigError(f"tls.cert: {cert} and {key} are not a usable pair: {e}") from None


# Apple's platforms refuse a TLS server certificate valid for longer than 825 days, or without
# the serverAuth extended key usage, even one the user chose to trust (their rules for
# certificates issued after 2019-07-01); testssl flags a longer one too.
SELF_SIGNED_LIFETIME = datetime.timedelta(days=825)


def write_self_signed(cert_path: Path, key_path: Path, hostname: str) -> None:
    """Write a self-signed RSA-2048 certificate for ``hostname``, localhost and loopback."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    dns_names = dict.fromkeys([hostname, "localhost"])
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    # Five minutes back for clocks a little behind; the whole lifetime still within 825 days.
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + SELF_SIGNED_LIFETIME)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    # The key is for Tidings' user alone, whatever the umask (the CLI sets 077) or the mode of
    # a key file left from before.
    cert_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(key_bytes)
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
