"""DKIM signing speed: signatures per second on one thread, for a typical ~4 KB message.

Measures :func:`tidings.mailauth.signing.sign_message` with an RSA-2048 key (on a plain body,
and on one whose trailing spaces relaxed canonicalisation must remove), an Ed25519 key and both
(one call, two signatures), and dkimpy's own ``dkim.sign`` with the same RSA key for comparison
(pure-Python RSA, and the PEM parsed on every call, as its API does).

    python3 bench/dkim_sign.py                # about 2 s per figure
    python3 bench/dkim_sign.py --seconds 5

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable

import dkim

from tidings.mailauth.signing import generate_private_key, load_signing_key, sign_message

DOMAIN = "bench.test"
PARAGRAPH = (
    "Tidings signs every message submitted on port 587 before it is queued, so the time a\r\n"
    "signature takes is paid once per message that leaves the server; this paragraph is only\r\n"
    "here to give the body the size of an ordinary message with a quoted reply in it.\r\n\r\n"
)


def typical_message(size: int = 4096) -> bytes:
    """Headers an MUA writes, then a text body, about ``size`` octets in all."""
    header = (
        f"From: Alice Example <alice@{DOMAIN}>\r\n"
        "To: Bob <bob@elsewhere.example>, carol@elsewhere.example\r\n"
        "Cc: dave@elsewhere.example\r\n"
        "Subject: Minutes of Thursday's meeting, and the plan for next week\r\n"
        "Date: Thu, 20 Nov 2025 09:12:44 +0100\r\n"
        f"Message-ID: <20251120091244.4711@{DOMAIN}>\r\n"
        "In-Reply-To: <a1b2c3@elsewhere.example>\r\n"
        "References: <a1b2c3@elsewhere.example>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8; format=flowed\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "User-Agent: Bench/1.0\r\n"
        "\r\n"
    ).encode()
    body = b""
    while len(header) + len(body) < size:
        body += PARAGRAPH.encode()
    return header + body


def rate(label: str, seconds: float, fn: Callable[[], object], signatures: int = 1) -> float:
    fn()  # warm caches (the parsed key) before the clock starts
    count = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            fn()
        count += 20
    per_second = count * signatures / elapsed
    print(f"{label:<46} {per_second:>9,.0f} signatures/s  ({elapsed / count * 1e6:,.0f} µs/call)")
    return per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per figure (default 2)")
    parser.add_argument("--size", type=int, default=4096, help="message size (default 4096)")
    args = parser.parse_args()

    message = typical_message(args.size)
    rsa_pem = generate_private_key("rsa")
    rsa_key = load_signing_key(DOMAIN, "r", "rsa", rsa_pem)
    ed_key = load_signing_key(DOMAIN, "e", "ed25519", generate_private_key("ed25519"))
    print(f"message: {len(message)} octets; one thread\n")

    rate("tidings rsa-sha256 (RSA-2048)", args.seconds, lambda: sign_message(message, [rsa_key]))
    # format=flowed ends soft-broken lines with a space: dkimpy's whitespace passes then run.
    split = message.index(b"\r\n\r\n")
    flowed = message[:split] + re.sub(rb"(?<=\S)\r\n(?=\S)", b" \r\n", message[split:])
    rate(
        "tidings rsa-sha256, body with trailing spaces",
        args.seconds,
        lambda: sign_message(flowed, [rsa_key]),
    )
    rate("tidings ed25519-sha256", args.seconds, lambda: sign_message(message, [ed_key]))
    rate(
        "tidings dual (RSA + Ed25519, one call)",
        args.seconds,
        lambda: sign_message(message, [rsa_key, ed_key]),
        signatures=2,
    )
    rate(
        "dkimpy dkim.sign rsa-sha256 (RSA-2048)",
        min(args.seconds, 2.0),
        lambda: dkim.sign(
            message, b"r", DOMAIN.encode(), rsa_pem.encode(),
            canonicalize=(b"relaxed", b"relaxed"),
        ),
    )  # fmt: skip


if __name__ == "__main__":
    main()
