"""Log output: plain text or one JSON object per line, written off the event loop.

Lines that follow a message carry its queue id (``id=``, the id in the 250 reply) and its
Message-ID header (``msgid=``), so ``grep`` on either finds every step: the SMTP transaction
that accepted it, the local delivery, each relay attempt, the DSN. With ``--log-format json``
the same facts are fields of the object (passed with ``extra=``), beside ``time``, ``level``,
``logger`` and ``message``.

Nothing here logs a password or a message body, and the callers must not either: log the
account and the sizes, never the SASL exchange or the content.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
MAX_MESSAGE_ID = 250


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the fields
    given with ``extra=``, and the traceback (``exception``) if there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def formatter(name: str) -> logging.Formatter:
    """The formatter for ``--log-format`` ``name`` ("text" or "json")."""
    if name == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)


class RecordQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writing thread with their message rendered (the arguments may
    change after the call) and the traceback as text, keeping the ``extra=`` fields for the
    JSON formatter on the other side.

    The record itself is changed, not a copy (a copy cost a third of a log call): any other
    handler still renders it the same, since the message and the traceback are kept."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg, record.args = record.getMessage(), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        return record


def set_level(level: int) -> None:
    """Set the level of Tidings' log; aiosmtpd's per-command lines stay off (they would
    show every command a client sends, SASL responses' neighbours included)."""
    logging.root.setLevel(level)
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, level))


def header_message_id(content: bytes) -> str:
    """The Message-ID header value of a message, unfolded and cut to a sane length, for logs
    (``""`` when it has none). Only the header section is looked at."""
    end = content.find(b"\r\n\r\n")
    head = content if end < 0 else content[: end + 2]
    m = _MESSAGE_ID.search(head)
    if m is None:
        return ""
    value = b" ".join(m.group(1).split()).decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in value)[:MAX_MESSAGE_ID]
