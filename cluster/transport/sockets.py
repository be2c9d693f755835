"""ZMQ sockets with a password: tandem's data planes (drafter messages, target outputs).

Ray places the actors and hands out where a socket listens (the control plane); the per-step
data travels on ZMQ sockets of its own, which cost a fraction of a Ray call. The side that binds
checks ZMQ's PLAIN mechanism against a random password that only travels over Ray inside an
`Endpoint`, so nobody without an actor handle (or the coordinator's word) can talk to it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import zmq
from zmq.auth.thread import ThreadAuthenticator

USER = b"tandem"


@dataclass(frozen=True)
class Endpoint:
    address: str  # tcp://host:port
    password: str


class PlainServer:
    """A context of its own, its password check, and one socket of `kind` bound on `host`."""

    def __init__(self, host: str, kind: int) -> None:
        self.context = zmq.Context()
        self._auth = ThreadAuthenticator(self.context)
        self._auth.start()
        password = secrets.token_urlsafe(16)
        self._auth.configure_plain(domain="*", passwords={USER.decode(): password})
        self.socket = self.context.socket(kind)
        self.socket.plain_server = True
        self.socket.linger = 0
        port = self.socket.bind_to_random_port(f"tcp://{host}")
        self.endpoint = Endpoint(f"tcp://{host}:{port}", password)

    def close(self) -> None:
        self._auth.stop()
        self.context.destroy(linger=0)


def connect(context: zmq.Context, kind: int, endpoint: Endpoint) -> zmq.Socket:
    """A socket of `kind` connected to a `PlainServer`'s endpoint with its password."""
    socket = context.socket(kind)
    socket.plain_username = USER
    socket.plain_password = endpoint.password.encode()
    socket.linger = 0
    socket.connect(endpoint.address)
    return socket
