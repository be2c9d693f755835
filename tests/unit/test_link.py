"""The emulated link (tandem.cluster.transport.link): bytes arrive intact and in order, no
sooner than half a round trip each way and the link's rate allow, and ZMQ's password handshake
passes through it. In a process of its own, a stopped relay is an outage that loses nothing."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
import zmq

from tandem.cluster.config.pools import LinkConfig as Link
from tandem.cluster.transport.link import LinkProcess, LinkRelay
from tandem.cluster.transport.sockets import PlainServer, connect

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def echo():
    """A TCP echo server on 127.0.0.1: its address."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=pump, args=(conn,), daemon=True).start()

    def pump(conn):
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def round_trip(address: str, payload: bytes) -> tuple[bytes, float]:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as conn:
        started = time.monotonic()
        conn.sendall(payload)
        received = b""
        while len(received) < len(payload):
            received += conn.recv(65536)
        return received, time.monotonic() - started


def test_bytes_cross_intact_after_a_round_trip(echo):
    relay = LinkRelay("127.0.0.1", echo, Link(rtt_ms=40))
    try:
        payload = os.urandom(300_000)
        received, elapsed = round_trip(relay.address, payload)
        assert received == payload
        assert elapsed >= 0.04  # there and back: half the round trip each way
        small, elapsed = round_trip(relay.address, b"ping")
        assert small == b"ping" and elapsed >= 0.04
    finally:
        relay.close()


def test_the_rate_bounds_each_direction(echo):
    relay = LinkRelay("127.0.0.1", echo, Link(mbps=8))  # 1 MB/s each way
    try:
        received, elapsed = round_trip(relay.address, os.urandom(200_000))
        assert len(received) == 200_000
        assert elapsed >= 0.2  # 0.2 s to serialise it; the echo's way overlaps
    finally:
        relay.close()


def test_zmq_with_its_password_check_passes_through():
    server = PlainServer("127.0.0.1", zmq.REP)
    relay = LinkRelay("127.0.0.1", server.endpoint.address, Link(rtt_ms=10))
    context = zmq.Context()
    try:
        behind = type(server.endpoint)(relay.address, server.endpoint.password)
        client = connect(context, zmq.REQ, behind)
        client.send(b"draft?")
        assert server.socket.poll(5000)
        assert server.socket.recv() == b"draft?"
        server.socket.send(b"draft!")
        assert client.poll(5000) and client.recv() == b"draft!"
        wrong = connect(context, zmq.REQ, type(behind)(relay.address, "not the password"))
        wrong.send(b"draft?")
        assert not server.socket.poll(500)  # refused at the handshake
    finally:
        context.destroy(linger=0)
        relay.close()
        server.close()


def test_a_relay_process_stopped_for_a_while_is_an_outage_that_loses_nothing(echo):
    link = LinkProcess("127.0.0.1", echo, Link(rtt_ms=10))
    host, port = link.address.removeprefix("tcp://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port))) as conn:
            conn.sendall(b"before")
            assert conn.recv(64) == b"before"
            os.kill(link.pid, signal.SIGSTOP)  # the link goes down
            conn.sendall(b"during")
            conn.settimeout(1.0)
            with pytest.raises(TimeoutError):
                conn.recv(64)  # nothing crosses
            os.kill(link.pid, signal.SIGCONT)  # and comes back
            conn.settimeout(10)
            assert conn.recv(64) == b"during"  # held, then delivered, on the same connection
    finally:
        os.kill(link.pid, signal.SIGCONT)
        link.close()
    assert link._process.poll() is not None  # closed: the process is gone
