"""The throwaway servers themselves: real round trips through RabbitMQ and PostgreSQL, and restarts."""

from __future__ import annotations

import socket
import uuid

import kombu
import pytest
import sqlalchemy as sa

from .servers import PostgresServer, RabbitMQServer, ServerDir, ServerError, _tree


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_rabbitmq_publish_and_consume_with_kombu(rabbitmq: RabbitMQServer) -> None:
    name = f"harness-{uuid.uuid4()}"
    exchange = kombu.Exchange(name, type="direct", durable=False)
    queue = kombu.Queue(name, exchange, routing_key=name, durable=False, auto_delete=True)
    with kombu.Connection(rabbitmq.url, connect_timeout=5) as connection:
        with connection.Producer() as producer:
            producer.publish({"n": 1, "text": "héllo"}, exchange=exchange, routing_key=name, declare=[queue],
                             serializer="json")
        with connection.SimpleQueue(queue) as simple:
            message = simple.get(block=True, timeout=10)
            message.ack()
    assert message.payload == {"n": 1, "text": "héllo"}


def test_rabbitmq_listens_on_loopback_only_and_keeps_durable_data_across_a_restart(rabbitmq: RabbitMQServer) -> None:
    listeners = rabbitmq.ctl("eval", "rabbit_networking:active_listeners().")
    assert "{127,0,0,1}" in listeners and "{0,0,0,0}" not in listeners
    name = f"durable-{uuid.uuid4()}"
    queue = kombu.Queue(name, kombu.Exchange(name, type="direct"), routing_key=name, durable=True)
    with kombu.Connection(rabbitmq.url, connect_timeout=5) as connection, connection.Producer() as producer:
        producer.publish({"kept": True}, exchange=queue.exchange, routing_key=name, declare=[queue],
                         delivery_mode=2, serializer="json")
    rabbitmq.stop()
    assert not rabbitmq.running and not _listening(rabbitmq.port)
    rabbitmq.start()
    with kombu.Connection(rabbitmq.url, connect_timeout=5) as connection, connection.SimpleQueue(queue) as simple:
        message = simple.get(block=True, timeout=10)
        message.ack()
    assert message.payload == {"kept": True}


def test_postgres_sql_through_sqlalchemy_and_a_restart(postgres: PostgresServer) -> None:
    engine = sa.create_engine(postgres.url, poolclass=sa.pool.NullPool)
    table = f"harness_{uuid.uuid4().hex}"
    try:
        with engine.begin() as db:
            db.execute(sa.text(f"CREATE TABLE {table} (id text PRIMARY KEY, n integer)"))
            db.execute(sa.text(f"INSERT INTO {table} VALUES ('a', 1) ON CONFLICT (id) DO NOTHING"))
            db.execute(sa.text(f"INSERT INTO {table} VALUES ('a', 2) ON CONFLICT (id) DO NOTHING"))
            assert db.execute(sa.text("SELECT current_user")).scalar() == postgres.user
        postgres.stop()
        assert not postgres.running and not _listening(postgres.port)
        postgres.start()
        with engine.begin() as db:
            assert db.execute(sa.text(f"SELECT id, n FROM {table}")).all() == [("a", 1)]
            db.execute(sa.text(f"DROP TABLE {table}"))
    finally:
        engine.dispose()


def test_a_closed_server_leaves_no_process_and_no_directory() -> None:
    where = ServerDir("importhooks-postgres-")
    try:
        server = PostgresServer(where.path)
        try:
            server.start()
            assert server._process is not None
            tree = _tree(server._process.pid)
            assert len(tree) > 1  # the postmaster and its helpers
        finally:
            server.close()
    finally:
        where.remove()
    assert not any(_tree(pid) for pid in tree)
    assert not where.path.exists() and not _listening(server.port)


def test_a_node_that_cannot_boot_is_an_error_with_its_log_not_a_hang() -> None:
    """A bad config ends rabbitmq-server with rc 0 before the node is up: that is a failure, and nothing stays."""
    where = ServerDir("importhooks-rabbitmq-")
    try:
        server = RabbitMQServer(where.path, name="broken")
        (where.path / "rabbitmq.conf").write_text("consumer_timeout = 0\n")  # RabbitMQ refuses a zero timeout
        try:
            with pytest.raises(ServerError, match="exited before it was ready") as raised:
                server.start()
            assert "consumer_timeout" in str(raised.value)  # the end of its log says why
            assert not server.running and not _listening(server.port)
        finally:
            server.close()
    finally:
        where.remove()
