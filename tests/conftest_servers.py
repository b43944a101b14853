"""Session fixtures: one throwaway RabbitMQ and one PostgreSQL per test session, started on first use.

A test that asks for ``rabbitmq`` or ``postgres`` gets the running server (it is
started again if a fault test left it stopped); the session's end stops both and
removes their directories. Nothing starts for a session whose tests need neither.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .servers import PostgresServer, RabbitMQServer, ServerDir


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitMQServer]:
    where = ServerDir("importhooks-rabbitmq-")
    server = RabbitMQServer(where.path)
    try:
        server.start()
        yield server
    finally:
        try:
            server.close()
        finally:
            where.remove()


@pytest.fixture
def rabbitmq(rabbitmq_server: RabbitMQServer) -> RabbitMQServer:
    """The session's RabbitMQ node, running."""
    rabbitmq_server.start()
    return rabbitmq_server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    where = ServerDir("importhooks-postgres-")
    try:
        server = PostgresServer(where.path)
        try:
            server.start()
            yield server
        finally:
            server.close()
    finally:
        where.remove()


@pytest.fixture
def postgres(postgres_server: PostgresServer) -> PostgresServer:
    """The session's PostgreSQL cluster, running."""
    postgres_server.start()
    return postgres_server
