"""The database goes away under a running server: temporary failures, then service resumes."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator

import psycopg
import pytest

from helpers import TidingsServer, add_users, stored_messages, write_config
from pg import PostgresServer
from tidings.delivery import DIRECTORY_POLL_SECONDS

ALICE = "alice@example.org"
MESSAGE = b"Subject: during an outage\r\n\r\nhello\r\n"


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    with postgres.database() as url:
        yield url


def set_connections(postgres: PostgresServer, dbname: str, allowed: bool) -> None:
    with psycopg.connect(
        host=postgres.host, port=postgres.port, user="postgres", dbname="postgres", autocommit=True
    ) as admin:
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (dbname,),
            )


async def test_postgres_outage_gives_451_and_service_resumes(
    tmp_path, postgres: PostgresServer, pg_url: str
) -> None:
    await add_users(pg_url, ALICE)
    server = TidingsServer(write_config(tmp_path, pg_url)).start()
    dbname = pg_url.rpartition("/")[2]
    try:
        with smtplib.SMTP(*server.smtp) as client:
            assert client.sendmail("s@sender.example", [ALICE], MESSAGE) == {}
        set_connections(postgres, dbname, allowed=False)
        time.sleep(DIRECTORY_POLL_SECONDS + 0.1)
        with smtplib.SMTP(*server.smtp) as client:
            client.ehlo("c.example")
            client.mail("s@sender.example")
            code, reply = client.rcpt(ALICE)
            assert code == 451 and reply.startswith(b"4.3.0"), (code, reply)
        set_connections(postgres, dbname, allowed=True)
        with smtplib.SMTP(*server.smtp) as client:
            assert client.sendmail("s@sender.example", [ALICE], MESSAGE) == {}
            # The database goes away between RCPT and the end of DATA: no 250, a 451.
            client.mail("s@sender.example")
            assert client.rcpt(ALICE)[0] == 250
            set_connections(postgres, dbname, allowed=False)
            code, reply = client.data(MESSAGE)
            assert code == 451 and reply.startswith(b"4.3.0"), (code, reply)
        set_connections(postgres, dbname, allowed=True)
        with smtplib.SMTP(*server.smtp) as client:
            assert client.sendmail("s@sender.example", [ALICE], MESSAGE) == {}
    finally:
        set_connections(postgres, dbname, allowed=True)
        server.stop()
    assert len(await stored_messages(pg_url, ALICE)) == 3
