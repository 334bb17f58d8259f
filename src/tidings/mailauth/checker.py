"""The inbound checks (DKIM, ARC, DMARC: :func:`verdict.judge`) in a process of their own.

The server's event loop holds the GIL, so every check it runs itself is time no SMTP, IMAP or
POP3 session gets; on a machine with a second core the checks can run there instead, as
OpenDKIM and OpenDMARC run beside Postfix. The server writes each message to a check process
over a pipe and reads the verdict back; the process has its own resolver and DNS cache.

Mail never waits on the check process or is lost to it: when it is not running, dies, or does
not answer in time, the message is judged in the server's own process (as with
``mailauth.check_process = false``) and the process is started again for the next one. Messages
over :data:`verdict.INLINE_BYTES` are judged in the server's process too, where their work goes
to threads a piece at a time; copying them through a pipe would cost the loop more.

The pipe carries frames: a 4-byte length, then a pickle. Both ends are this program, started
by the server itself; nothing else writes to the pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import signal
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from tidings import metrics
from tidings.dns import Resolver
from tidings.mailauth import dmarc as dmarc_
from tidings.mailauth import spf as spf_
from tidings.mailauth import verdict as verdict_

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
# A process that died is started again at most this often; meanwhile the server judges.
RESTART_SECONDS = 5.0
# The check process's read buffer limit: a frame holds a message of up to INLINE_BYTES.
_PIPE_LIMIT = 4 * verdict_.INLINE_BYTES


@dataclass(frozen=True)
class Settings:
    """What a check process needs to know, sent as its first frame."""

    nameservers: tuple[str, ...]
    dns_timeout: float
    authserv_id: str
    ceiling: dmarc_.Policy
    trusted_arc_sealers: tuple[str, ...]


class _NotJudged(Exception):
    """The check process could not judge a message (and said so)."""


class _Pipe(asyncio.SubprocessProtocol):
    """One check process as the server's loop sees it: verdicts are read from its output as
    it arrives, without a task or a stream in between (each costs the loop per message)."""

    def __init__(self, on_gone: Callable[[_Pipe], None]) -> None:
        self.on_gone = on_gone
        self.transport: asyncio.SubprocessTransport | None = None
        self.waiting: dict[int, asyncio.Future[tuple[Any, ...] | None]] = {}
        self.gone = False  # its output ended: dead, or of no use
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()

    @property
    def pid(self) -> int | None:
        return None if self.gone or self.transport is None else self.transport.get_pid()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.SubprocessTransport, transport)

    def send(self, value: object) -> None:
        pipe = self.transport.get_pipe_transport(0) if self.transport is not None else None
        if self.gone or pipe is None or pipe.is_closing():
            raise ConnectionError("the check process is gone")
        cast(asyncio.WriteTransport, pipe).write(_frame(value))

    def end_input(self) -> None:
        """Let the process finish what it has and exit."""
        pipe = self.transport.get_pipe_transport(0) if self.transport is not None else None
        if pipe is not None:
            pipe.close()

    def kill(self) -> None:
        if self.transport is not None and self.transport.get_returncode() is None:
            with contextlib.suppress(ProcessLookupError):
                self.transport.kill()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        self._buffer += cast(bytes, data)
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                return
            frame = bytes(self._buffer[_LENGTH.size : end])
            del self._buffer[:end]
            try:
                request_id, answer = pickle.loads(frame)  # noqa: S301 - our own process
            except (pickle.PickleError, ValueError, TypeError, EOFError) as e:
                log.error("mailauth: unreadable answer from the check process: %s", e)
                self.kill()
                return
            future = self.waiting.pop(request_id, None)
            if future is not None and not future.done():
                future.set_result(answer)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:  # every answer it wrote has been read
            self._end()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        if not self.finished.done():
            self.finished.set_result(None)

    def _end(self) -> None:
        if self.gone:
            return
        self.gone = True
        self.kill()
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(EOFError("the check process ended"))
        self.waiting.clear()
        self.on_gone(self)


class Checker:
    """The server's side: hands messages to a check process (with ``separate``; else the
    server judges every message itself) and returns the verdicts."""

    def __init__(self, settings: Settings, resolver: Resolver, *, separate: bool = True) -> None:
        self.settings = settings
        self.resolver = resolver  # for the messages judged here
        self.separate = separate
        # A verdict takes at most a few DNS timeouts (SPF's lookups are done before).
        self.deadline = 4 * settings.dns_timeout + 5.0
        self._pipe: _Pipe | None = None
        self._ids = itertools.count(1)
        self._starting: asyncio.Task[bool] | None = None
        self._last_start = -RESTART_SECONDS
        self._closed = False
        self._restart: asyncio.TimerHandle | None = None

    @property
    def pid(self) -> int | None:
        """The running check process, if any."""
        return self._pipe.pid if self._pipe is not None else None

    async def start(self) -> None:
        """Start the process now (else the first message does), so a fault shows at startup."""
        await self._ensure_started()

    async def judge(self, message: bytes, spf: spf_.SPFResult) -> verdict_.Verdict:
        """The verdict on ``message``: from the check process, or judged here if need be."""
        if len(message) <= verdict_.INLINE_BYTES and await self._ensure_started():
            try:
                return await self._ask(message, spf)
            except _NotJudged:
                pass  # the process had an error with this message: try it here
            except (ConnectionError, TimeoutError, EOFError, pickle.PickleError) as e:
                log.warning("mailauth: check process failed (%s); judging here", e or repr(e))
                self._stop_process()
        return await verdict_.judge(
            self.resolver,
            message,
            spf,
            authserv_id=self.settings.authserv_id,
            ceiling=self.settings.ceiling,
            trusted_arc_sealers=self.settings.trusted_arc_sealers,
        )

    async def close(self, grace: float = 5.0) -> None:
        """Let the process finish what it has (its input ends), then make sure it is gone."""
        self._closed = True
        if self._restart is not None:
            self._restart.cancel()
        pipe, self._pipe = self._pipe, None
        if pipe is None:
            return
        pipe.end_input()
        try:
            await asyncio.wait_for(asyncio.shield(pipe.finished), grace)
        except TimeoutError:
            pipe.kill()
            await pipe.finished

    # --- the pipe ------------------------------------------------------------------------------

    async def _ask(self, message: bytes, spf: spf_.SPFResult) -> verdict_.Verdict:
        pipe = self._pipe
        if pipe is None:
            raise ConnectionError("no check process")
        request_id = next(self._ids)
        future: asyncio.Future[tuple[Any, ...] | None] = asyncio.get_running_loop().create_future()
        pipe.waiting[request_id] = future
        try:
            pipe.send((request_id, message, spf))
            async with asyncio.timeout(self.deadline):
                answer = await future
        finally:
            pipe.waiting.pop(request_id, None)
        if answer is None:
            raise _NotJudged
        changed, header, disposition, refusal, results = answer
        metrics.mailauth_results(*results)
        return verdict_.Verdict(
            message if changed is None else changed, header, disposition, refusal, results
        )

    def _gone(self, pipe: _Pipe) -> None:
        if self._pipe is pipe:
            self._pipe = None
        if not self._closed:
            # Its successor is ready before the next message needs it (at most one start per
            # RESTART_SECONDS, so a process that cannot start does not spin).
            delay = max(0.0, self._last_start + RESTART_SECONDS - time.monotonic())
            self._restart = asyncio.get_running_loop().call_later(delay, self._start_again)

    def _start_again(self) -> None:
        # Not through _ensure_started: the timer already kept the pace (and may fire a hair
        # before the monotonic clock says RESTART_SECONDS have passed).
        if not self._closed and self.pid is None:
            self._spawn_once()

    async def _ensure_started(self) -> bool:
        """Whether a check process is running, starting one if it is time to."""
        if self.pid is not None:
            return True
        if not self.separate or self._closed:
            return False
        if time.monotonic() - self._last_start < RESTART_SECONDS:
            return False
        return await asyncio.shield(self._spawn_once())

    def _spawn_once(self) -> asyncio.Task[bool]:
        """The start in progress, or a new one: callers at the same moment share one."""
        if self._starting is None or self._starting.done():
            self._starting = asyncio.create_task(self._spawn())
        return self._starting

    async def _spawn(self) -> bool:
        self._last_start = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            _, pipe = await loop.subprocess_exec(
                lambda: _Pipe(self._gone),
                sys.executable,
                "-m",
                "tidings.mailauth.checker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,
            )
            pipe.send(self.settings)
        except (OSError, ValueError) as e:
            log.error("mailauth: cannot start a check process (%s); checking in the server", e)
            return False
        if self._closed:  # the server stopped meanwhile
            pipe.end_input()
            return False
        self._pipe = pipe
        log.info("mailauth: check process %s started", pipe.pid)
        return True

    def _stop_process(self) -> None:
        """A process that failed a request is not trusted with the next: end it."""
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.kill()


def _frame(value: object) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def _write_frame(writer: asyncio.StreamWriter, value: object) -> None:
    writer.write(_frame(value))


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return pickle.loads(await reader.readexactly(length))  # noqa: S301 - our own process


# --- the check process -----------------------------------------------------------------------


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    settings: Settings = await _read_frame(reader)
    resolver = Resolver(list(settings.nameservers), settings.dns_timeout)
    pending: set[asyncio.Task[None]] = set()

    async def judge(request_id: int, message: bytes, spf: spf_.SPFResult) -> None:
        try:
            verdict = await verdict_.judge(
                resolver,
                message,
                spf,
                authserv_id=settings.authserv_id,
                ceiling=settings.ceiling,
                trusted_arc_sealers=settings.trusted_arc_sealers,
                count=False,
            )
        except Exception:
            # The server judges this one itself (and logs what goes wrong there).
            log.exception("mailauth check process: cannot judge a message")
            _write_frame(writer, (request_id, None))
            return
        changed = None if verdict.message is message else verdict.message
        answer = (changed, verdict.header, verdict.disposition, verdict.refusal, verdict.results)
        _write_frame(writer, (request_id, answer))

    while True:
        try:
            request_id, message, spf = await _read_frame(reader)
        except asyncio.IncompleteReadError:
            break  # the server closed the pipe, or is gone
        task = asyncio.create_task(judge(request_id, message, spf))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)
    with contextlib.suppress(ConnectionError):
        await writer.drain()


async def _main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_PIPE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, sys.stdout
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    await _serve(reader, writer)


def main() -> None:
    """``python -m tidings.mailauth.checker``: what :class:`Checker` starts. It ends when its
    input does. Ctrl-C in a terminal reaches the whole process group, and systemd's stop sends
    SIGTERM to every process of the service: both are left to the server, which closes that
    input once the messages in progress are judged (a SIGKILL still ends it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format=f"%(asctime)s %(levelname)s "
        f"%(name)s[{os.getpid()}]: %(message)s",
    )  # fmt: skip
    try:
        import uvloop  # noqa: PLC0415 - as the server; not tidings.cli, which loads far more
    except ImportError:  # pragma: no cover
        asyncio.run(_main())
        return
    uvloop.run(_main())


if __name__ == "__main__":
    main()
