"""Log output: the JSON formatter, the hand-over to the writing thread, Message-IDs for logs."""

from __future__ import annotations

import json
import logging
import queue
import sys

from tidings.logs import JsonFormatter, RecordQueueHandler, formatter, header_message_id


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("tidings.test", logging.INFO, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_line_has_time_level_logger_message_and_extra_fields() -> None:
    line = JsonFormatter().format(record("sent %s", "x", queue_id="Q1", to=["a@b.example"]))
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "INFO" and data["logger"] == "tidings.test"
    assert data["message"] == "sent x"
    assert data["queue_id"] == "Q1" and data["to"] == ["a@b.example"]
    assert data["time"].endswith("+00:00") and "T" in data["time"]
    assert not {"args", "msg", "levelno", "pathname", "thread"} & data.keys()


def test_json_line_keeps_a_traceback_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_queue_handler_hands_over_message_extras_and_traceback() -> None:
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = RecordQueueHandler(records)
    try:
        raise KeyError("k")
    except KeyError:
        rec = logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "id=%s %r", ("Q2", [1]), sys.exc_info()
        )
    rec.queue_id = "Q2"
    handler.handle(rec)
    sent = records.get_nowait()
    assert sent.getMessage() == "id=Q2 [1]" and sent.args is None and sent.exc_info is None
    data = json.loads(JsonFormatter().format(sent))
    assert data["queue_id"] == "Q2" and "KeyError" in data["exception"]
    text = formatter("text").format(sent)
    assert "ERROR t: id=Q2 [1]" in text and "KeyError: 'k'" in text


def test_header_message_id() -> None:
    message = b"From: a@b\r\nMessage-ID: <one@example.org>\r\n\r\nMessage-ID: <body@x>\r\n"
    assert header_message_id(message) == "<one@example.org>"
    folded = b"Subject: s\r\nmessage-id:\r\n  <two@example.org>\r\n\r\nbody\r\n"
    assert header_message_id(folded) == "<two@example.org>"
    assert header_message_id(b"From: a@b\r\n\r\nMessage-ID: <in-body@x>\r\n") == ""
    assert header_message_id(b"Message-ID: <a\x1b[31m@b>\r\n\r\n") == "<a?[31m@b>"
    assert len(header_message_id(b"Message-ID: <" + b"x" * 2000 + b">\r\n\r\n")) == 250
