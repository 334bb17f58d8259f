"""The ``tidings`` command: run the server and administer domains, users and aliases.

Exit status 0 on success; otherwise one line ``tidings: <reason>`` on stderr and status 1
(2 for a command line that cannot be parsed).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import getpass
import json
import logging
import logging.handlers
import os
import queue
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from tidings.address import AddressError, parse_domain
from tidings.auth import generate_password, hash_password
from tidings.config import (
    Config,
    ConfigError,
    build_config,
    find_config_path,
    load_config,
    parse_size,
    replace_section,
    to_toml,
)
from tidings.logs import FORMATS, RecordQueueHandler, formatter, set_level
from tidings.store import accounts
from tidings.store.accounts import AdminError, now
from tidings.store.db import Store, StoreError

if TYPE_CHECKING:
    from tidings.dnsrecords import DkimKey

DEMO_DOMAIN = "example.test"
# glibc's mallopt() parameter for the most malloc arenas (malloc.h's M_ARENA_MAX), and how
# many ``serve`` allows when MALLOC_ARENA_MAX does not say.
M_ARENA_MAX = -8
SERVE_MALLOC_ARENAS = 2


class CommandError(Exception):
    """A refusal worded for the person at the terminal."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tidings: {message} (see `{self.prog} --help`)\n")


def run_loop(coro: Awaitable[Any]) -> Any:
    """Run ``coro`` on uvloop when it is installed, else on asyncio's own loop."""
    try:
        import uvloop  # noqa: PLC0415 - optional at import time, wanted at run time

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


async def _with_store(config: Config, action: Callable[[Store], Awaitable[Any]]) -> Any:
    store = await Store.open(config.database_url)
    try:
        return await action(store)
    finally:
        await store.close()


def _print_rows(args: argparse.Namespace, rows: Sequence[Any], fmt: Callable[[Any], str]) -> None:
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    else:
        for r in rows:
            print(fmt(r))


def _human_size(n: int) -> str:
    for unit, size in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def _read_password(args: argparse.Namespace) -> tuple[str, bool]:
    """(password, generated): from stdin, a prompt, or generated when neither is possible."""
    if getattr(args, "password_stdin", False):
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CommandError("no password on standard input")
        return password, False
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Again: "):
            raise CommandError("the passwords do not match")
        if not first:
            raise CommandError("empty password")
        return first, False
    return generate_password(), True


def _quota(text: str | None) -> int:
    if text is None:
        return 0
    try:
        return parse_size(text)
    except ValueError as e:
        raise CommandError(f"--quota: {e}") from None


# --- commands ------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> None:
    directory = Path(args.dir)
    path = directory / "tidings.toml"
    if path.exists() and not args.force:
        raise CommandError(f"{path} already exists (use --force to overwrite)")
    domain = args.domain or (DEMO_DOMAIN if args.demo else None)
    hostname = args.hostname or (f"mail.{domain}" if domain else "localhost")
    config = replace_section(
        build_config({}, {}, str(directory.resolve())), "server", hostname=hostname
    )
    directory.mkdir(parents=True, exist_ok=True)
    header = (
        "# Tidings configuration, written by `tidings init`.\n"
        "# Every key is described in config/tidings.example.toml; any key can be overridden\n"
        "# by an environment variable TIDINGS_<SECTION>__<KEY>.\n\n"
    )
    path.write_text(header + to_toml(config), encoding="utf-8")
    print(f"wrote {path}")
    config = load_config(path)

    async def setup(store: Store) -> None:
        if domain:
            names = {d.name for d in await accounts.list_domains(store)}
            if domain not in names:
                await accounts.add_domain(store, domain)
                print(f"added domain {domain}")
        if args.demo:
            password = generate_password()
            address = f"demo@{domain}"
            if await accounts.get_password_hash(store, address) is None:
                await accounts.add_account(store, address, hash_password(password))
            else:
                await accounts.set_password(store, address, hash_password(password))
            print(f"demo user: {address}")
            print(f"password:  {password}")

    run_loop(_with_store(config, setup))
    print(f"start it with: tidings --config {path} serve")


def limit_malloc_arenas(environ: Mapping[str, str] = os.environ) -> bool:
    """Cap glibc's malloc at SERVE_MALLOC_ARENAS arenas for this process; whether it did.

    glibc gives threads that allocate at the same time arenas of their own, up to eight per
    core, and an arena keeps the holes freed in it. The server's SQLite threads (readers, the
    writer, one per aiosqlite connection) fill theirs with pages and rows the event loop frees
    later: under bench/load.py the 16 arenas of a 2-core machine held 82 MiB, a third of it
    free, and still grew 2-3 MiB a minute after warm-up; with two they levelled off at 65 MiB
    at the same throughput. MALLOC_ARENA_MAX in the environment (glibc reads it itself) wins;
    other C libraries are left alone. Called before the server starts any thread.
    """
    if "MALLOC_ARENA_MAX" in environ:
        return False
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False
        return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, SERVE_MALLOC_ARENAS))
    except (AttributeError, OSError, ValueError):  # no confstr, no such name, no mallopt
        return False


def cmd_serve(args: argparse.Namespace, config: Config) -> None:
    from tidings.app import serve  # noqa: PLC0415 - keeps admin commands quick to start

    limit_malloc_arenas()
    # The command line (or $TIDINGS_LOG_LEVEL / $TIDINGS_LOG_FORMAT) wins over [log] in the
    # config; a level from the config follows it on SIGHUP. aiosmtpd's per-command lines stay
    # off (set_level): Tidings logs one line per transaction itself.
    level_fixed = args.log_level is not None
    set_level(logging.root.level if level_fixed else logging.getLevelName(config.log.level))
    handlers = logging.root.handlers[:]
    for handler in handlers:
        handler.setFormatter(formatter(args.log_format or config.log.format))
    # Log lines are written by a thread of their own: a write per message on the event loop
    # cost a tenth of a submission's time on a busy machine.
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    # No log line shows the process or thread: skip looking them up for every record (each
    # getpid() is a system call; py-spy found 1% of the event loop there under load).
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    # Nor the caller's file and line: finding them walks the stack on every record.
    logging._srcfile = None  # the switch the logging documentation gives for this
    listener = logging.handlers.QueueListener(records, *handlers, respect_handler_level=True)
    logging.root.handlers[:] = [RecordQueueHandler(records)]
    listener.start()
    path = find_config_path(args.config)
    try:
        run_loop(serve(config, lambda: load_config(path), log_level_fixed=level_fixed))
    finally:
        listener.stop()
        logging.root.handlers[:] = handlers


def cmd_domain(args: argparse.Namespace, config: Config) -> None:
    async def act(store: Store) -> None:
        if args.action == "add":
            print(f"added domain {await accounts.add_domain(store, args.name)}")
        elif args.action == "remove":
            await accounts.remove_domain(store, args.name)
            print(f"removed domain {args.name}")
        else:
            rows = await accounts.list_domains(store)
            _print_rows(
                args, rows, lambda d: f"{d.name}\t{d.accounts} accounts\t{d.aliases} aliases"
            )

    run_loop(_with_store(config, act))


def cmd_user(args: argparse.Namespace, config: Config) -> None:
    password: str | None = None
    generated = False
    if args.action in ("add", "passwd"):
        password, generated = _read_password(args)
    quota = _quota(getattr(args, "quota", None))

    async def act(store: Store) -> None:
        if args.action == "add":
            assert password is not None
            hashed = await asyncio.to_thread(hash_password, password)
            address = await accounts.add_account(store, args.address, hashed, quota)
            print(f"added user {address}")
            if generated:
                print(f"password: {password}")
        elif args.action == "passwd":
            assert password is not None
            hashed = await asyncio.to_thread(hash_password, password)
            await accounts.set_password(store, args.address, hashed)
            print(f"password changed for {args.address}")
            if generated:
                print(f"password: {password}")
        elif args.action == "quota":
            await accounts.set_quota(store, args.address, _quota(args.size))
            print(f"quota for {args.address}: {args.size}")
        elif args.action == "remove":
            await accounts.remove_account(store, args.address)
            print(f"removed user {args.address}")
        else:
            rows = await accounts.list_accounts(store, args.domain)
            _print_rows(
                args,
                rows,
                lambda a: (
                    f"{a.address}\t{a.messages} messages\t{_human_size(a.used_bytes)}"
                    + (f" of {_human_size(a.quota_bytes)}" if a.quota_bytes else "")
                ),
            )

    run_loop(_with_store(config, act))


def cmd_alias(args: argparse.Namespace, config: Config) -> None:
    async def act(store: Store) -> None:
        if args.action == "add":
            alias = await accounts.add_alias(store, args.source, args.targets)
            print(f"alias {alias.source} -> {', '.join(alias.targets)}")
        elif args.action == "remove":
            await accounts.remove_alias(store, args.source, args.targets)
            print(f"removed alias {args.source}")
        else:
            rows = await accounts.list_aliases(store, args.domain)
            _print_rows(args, rows, lambda a: f"{a.source}\t{', '.join(a.targets)}")

    run_loop(_with_store(config, act))


async def _dns_inputs(store: Store, name: str) -> tuple[str, list[DkimKey]]:
    """The domain as stored and its DKIM keys; CommandError for a domain that is not ours."""
    from sqlalchemy import select  # noqa: PLC0415 - only the dns command needs it here

    from tidings.dnsrecords import DkimKey  # noqa: PLC0415
    from tidings.store.models import DkimKey as DkimKeyRow  # noqa: PLC0415
    from tidings.store.models import Domain  # noqa: PLC0415

    try:
        domain = parse_domain(name)
    except AddressError as e:
        raise CommandError(str(e)) from None
    async with store.read() as conn:
        domain_id = await conn.scalar(select(Domain.id).where(Domain.name == domain))
        if domain_id is None:
            raise CommandError(f"unknown domain {domain!r} (add it with `tidings domain add`)")
        rows = await conn.execute(
            select(DkimKeyRow.selector, DkimKeyRow.private_key)
            .where(DkimKeyRow.domain_id == domain_id)
            .order_by(DkimKeyRow.selector)
        )
        return domain, [DkimKey(selector, pem) for selector, pem in rows]


def cmd_dns(args: argparse.Namespace, config: Config) -> None:
    # dnspython and cryptography load only for this command, as the server's modules for serve.
    from tidings import dnsrecords  # noqa: PLC0415
    from tidings.dns import Resolver  # noqa: PLC0415

    hostname = config.server.hostname
    sts_policy = dnsrecords.configured_mta_sts_policy(config)
    domain, keys = run_loop(_with_store(config, lambda store: _dns_inputs(store, args.domain)))
    try:
        if args.action == "records":
            records = dnsrecords.expected_records(domain, hostname, keys, sts_policy=sts_policy)
            if args.json:
                print(json.dumps(dnsrecords.records_json(domain, hostname, records), indent=2))
            else:
                print(dnsrecords.render_zone(domain, records), end="")
            return
        resolver = Resolver.from_config(config.dns)
        report = run_loop(
            dnsrecords.check_domain(resolver, domain, hostname, keys, sts_policy=sts_policy)
        )
    except dnsrecords.RecordError as e:
        raise CommandError(str(e)) from None
    if args.json:
        print(json.dumps(dnsrecords.check_json(report), indent=2))
    else:
        print(dnsrecords.render_check(report), end="")
    if not report.ok:
        # The one line on stderr that says why the status is non-zero.
        raise CommandError(dnsrecords.summary_line(report))
    if not args.json:
        print(dnsrecords.summary_line(report))


def cmd_dkim(args: argparse.Namespace, config: Config) -> None:
    # cryptography and the signing module load only for this command.
    from tidings.store import dkimkeys  # noqa: PLC0415

    async def act(store: Store) -> None:
        if args.action == "generate":
            from tidings import dnsrecords  # noqa: PLC0415
            from tidings.mailauth.signing import generate_private_key  # noqa: PLC0415

            selector = args.selector or dkimkeys.default_selector(args.algorithm)
            pem = await asyncio.to_thread(generate_private_key, args.algorithm)
            key = await dkimkeys.add_key(store, args.domain, selector, args.algorithm, pem)
            record = next(
                r
                for r in dnsrecords.expected_records(
                    key.domain, config.server.hostname, [dnsrecords.DkimKey(key.selector, pem)]
                )
                if r.kind is dnsrecords.Kind.DKIM
            )
            # Zone-file text throughout, so the output can be appended to a zone as it is.
            print(f"; {key.algorithm} DKIM key {key.selector} for {key.domain}: mail from the")
            print("; domain is signed with it from now on; publish this record:")
            print(dnsrecords.zone_line(record))
        elif args.action == "remove":
            await dkimkeys.remove_key(store, args.domain, args.selector)
            print(f"removed DKIM key {args.selector} of {args.domain}")
        else:
            rows = await dkimkeys.list_keys(store, args.domain)
            _print_rows(
                args, rows, lambda k: f"{k.domain}\t{k.selector}\t{k.algorithm}\t{k.created}"
            )

    run_loop(_with_store(config, act))


def _queue_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _queue_lines(message: Any) -> list[str]:
    lines = [
        f"{message.queue_id}\t{_human_size(message.size)}\t"
        f"{message.created_at:%Y-%m-%d %H:%M:%S}\t<{message.sender}>"
    ]
    for r in message.recipients:
        error = f"\t{r.last_error}" if r.last_error else ""
        lines.append(
            f"  {r.recipient}\t{r.state}\tattempts={r.attempts}\t"
            f"next={r.next_attempt:%Y-%m-%d %H:%M:%S}{error}"
        )
    return lines


def cmd_queue(args: argparse.Namespace, config: Config) -> None:
    from tidings.queue import store as queue_store  # noqa: PLC0415

    async def act(store: Store) -> None:
        queue_id = getattr(args, "id", None)
        if args.action in ("list", "show"):
            async with store.read() as conn:
                messages = await queue_store.list_messages(conn, queue_id)
                header = ""
                if args.action == "show":
                    if not messages:
                        raise CommandError(f"no message {queue_id} in the queue")
                    header = await queue_store.message_header(conn, messages[0].queue_id)
            if args.json:
                rows = [dataclasses.asdict(m) for m in messages]
                if args.action == "show":
                    rows[0]["header"] = header
                print(json.dumps(rows if args.action == "list" else rows[0], indent=2,
                                 default=_queue_json))  # fmt: skip
                return
            for message in messages:
                print("\n".join(_queue_lines(message)))
            if args.action == "show":
                print()
                print(header, end="")
            elif not messages:
                print("the queue is empty", file=sys.stderr)
            return
        async with store.write() as conn:
            if args.action == "delete":
                count = await queue_store.delete_message(conn, args.id)
            else:
                count = await queue_store.set_state(conn, queue_id, action=args.action, at=now())
        if queue_id is not None and count == 0:
            raise CommandError(f"no message {queue_id} in the queue to {args.action}")
        what = f"message {queue_id}" if queue_id else "the queue"
        print(f"{args.action}: {what}, {count} recipient(s)")

    run_loop(_with_store(config, act))


# --- argument parsing ------------------------------------------------------------------------


def build_parser() -> Parser:
    parser = Parser(prog="tidings", description="Tidings mail server")
    parser.add_argument("--config", help="config file (default: $TIDINGS_CONFIG, ./tidings.toml)")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("TIDINGS_LOG_LEVEL") or None,
        help="DEBUG, INFO, WARNING or ERROR (default: $TIDINGS_LOG_LEVEL, else log.level in "
        "the config, INFO)",
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get("TIDINGS_LOG_FORMAT") or None,
        help="text, or json: one object per line (default: $TIDINGS_LOG_FORMAT, else "
        "log.format in the config, text)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("init", help="write a config file with the embedded defaults")
    p.add_argument("--dir", default=".", help="folder for tidings.toml and its data (default .)")
    p.add_argument("--domain", help="add this mail domain")
    p.add_argument("--hostname", help="this server's host name (default mail.<domain>)")
    p.add_argument(
        "--demo",
        action="store_true",
        help=f"also add a demo user (domain {DEMO_DOMAIN} unless --domain) and print its password",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing tidings.toml")

    sub.add_parser("serve", help="run every listener in the config")

    p = sub.add_parser("domain", help="mail domains")
    dsub = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    dsub.add_parser("add").add_argument("name")
    dsub.add_parser("remove").add_argument("name")
    dsub.add_parser("list").add_argument("--json", action="store_true")

    p = sub.add_parser("user", help="user accounts")
    usub = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    u = usub.add_parser("add")
    u.add_argument("address")
    u.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    u.add_argument("--quota", help="mailbox quota such as 500M or 2G (default: none)")
    u = usub.add_parser("passwd")
    u.add_argument("address")
    u.add_argument("--password-stdin", action="store_true")
    u = usub.add_parser("quota")
    u.add_argument("address")
    u.add_argument("size", help="such as 500M, 2G, or 0 for no quota")
    usub.add_parser("remove").add_argument("address")
    u = usub.add_parser("list")
    u.add_argument("domain", nargs="?")
    u.add_argument("--json", action="store_true")

    p = sub.add_parser("alias", help="aliases and catch-alls (@domain)")
    asub = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    a = asub.add_parser("add")
    a.add_argument("source", help="user@domain, or @domain for a catch-all")
    a.add_argument("targets", nargs="+")
    a = asub.add_parser("remove")
    a.add_argument("source")
    a.add_argument("targets", nargs="*", help="only these targets (default: the whole alias)")
    a = asub.add_parser("list")
    a.add_argument("domain", nargs="?")
    a.add_argument("--json", action="store_true")

    p = sub.add_parser("dkim", help="DKIM keys that sign the domains' outgoing mail")
    ksub = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    k = ksub.add_parser(
        "generate",
        help="make a key for DOMAIN, store it and print its DNS record",
        description="Make a signing key for DOMAIN, keep it in the database and print the DNS "
        "TXT record to publish. Mail from the domain is signed with every key it has (RSA and "
        "Ed25519 together give two signatures).",
    )
    k.add_argument("domain")
    k.add_argument(
        "--selector",
        help="the key's name in DNS (default: t<YYYYMMDD> of today, UTC, then r for RSA or "
        "e for Ed25519, e.g. t20261123r)",
    )
    k.add_argument(
        "--algorithm",
        choices=("rsa", "ed25519"),
        default="rsa",
        help="rsa (2048 bits, understood everywhere; the default) or ed25519 (RFC 8463)",
    )
    k = ksub.add_parser("list", help="the stored keys: domain, selector, algorithm, created")
    k.add_argument("domain", nargs="?")
    k.add_argument("--json", action="store_true")
    k = ksub.add_parser("remove", help="delete a key; mail is no longer signed with it")
    k.add_argument("domain")
    k.add_argument("selector")

    p = sub.add_parser("dns", help="the DNS records a domain needs, and a check of them")
    nsub = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    n = nsub.add_parser("records", help="print the records to publish, in zone-file syntax")
    n.add_argument("domain")
    n.add_argument("--json", action="store_true")
    n = nsub.add_parser("check", help="look the records up; exit 1 if a required one is wrong")
    n.add_argument("domain")
    n.add_argument("--json", action="store_true")
    p = sub.add_parser("queue", help="outbound mail waiting to be relayed")
    qsub = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    q = qsub.add_parser("list", help="every queued message and its recipients")
    q.add_argument("--json", action="store_true")
    q = qsub.add_parser("show", help="one message: recipients, attempts, errors, header")
    q.add_argument("id", help="the queue id (from the 250 reply, the log or queue list)")
    q.add_argument("--json", action="store_true")
    q = qsub.add_parser("retry", help="try now instead of at the next scheduled attempt")
    q.add_argument("id", nargs="?", help="one message (default: all of them)")
    for action, text in (
        ("hold", "keep a message in the queue without trying it"),
        ("release", "let a held message be tried again, now"),
        ("delete", "drop a message without delivering or bouncing it"),
    ):
        qsub.add_parser(action, help=text).add_argument("id")
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace, Config], None]] = {
    "serve": cmd_serve,
    "domain": cmd_domain,
    "user": cmd_user,
    "alias": cmd_alias,
    "dkim": cmd_dkim,
    "queue": cmd_queue,
    "dns": cmd_dns,
}


def main(argv: Sequence[str] | None = None) -> int:
    # Everything Tidings writes — the database with every message and password hash, keys,
    # the config — is for its own user only.
    os.umask(0o077)
    args = build_parser().parse_args(argv)
    given_level = args.log_level
    if args.log_level is not None:
        args.log_level = args.log_level.upper()
    level = logging.getLevelName(args.log_level or "INFO")
    if not isinstance(level, int):
        print(
            f"tidings: --log-level: unknown level {given_level!r} "
            "(use DEBUG, INFO, WARNING or ERROR)",
            file=sys.stderr,
        )
        return 2
    if args.log_format is not None and args.log_format not in FORMATS:
        print(
            f"tidings: --log-format: unknown format {args.log_format!r} (use text or json)",
            file=sys.stderr,
        )
        return 2
    if not logging.root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formatter(args.log_format or "text"))
        logging.root.addHandler(handler)
    logging.root.setLevel(level)
    if args.command != "serve" and level > logging.DEBUG:
        # An admin command answers on stdout and fails with one line on stderr; the migration
        # notes of opening the store belong in the server's log, not on the terminal.
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        if args.command == "init":
            cmd_init(args)
        else:
            config = load_config(find_config_path(args.config))
            COMMANDS[args.command](args, config)
    except (CommandError, ConfigError, AdminError, StoreError) as e:
        print(f"tidings: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
