"""The data plane from a target replica to a coordinator: one ZMQ socket per subscription.

Each engine step's outputs for one coordinator leave the replica as one message, sent by the
engine thread itself right after the step: no other Python thread of the replica's process
wakes per step, so nothing takes the interpreter from the engine's next forward (see
docs/benchmarks/2026-12-02-gil-in-target-actor.md: the event loop and Ray's serializer thread that
carried a Ray stream per step did). The coordinator binds a PULL socket behind a password
(tandem.cluster.transport.sockets) and reads it on its event loop; the replica connects a PUSH
socket to it. Ray still carries the control plane: the subscription and the replica's liveness.

The messages are pickles of `OutputBatch` (C pickle, protocol 5), as Ray's own objects were:
both ends are tandem, and only a holder of the password can send one.
"""

from __future__ import annotations

import pickle
from typing import Any

import zmq
import zmq.asyncio

from tandem.cluster.transport.sockets import Endpoint, PlainServer, connect


class OutputSink:
    """The replica's end, used by the engine thread only."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._socket = connect(zmq.Context.instance(), zmq.PUSH, endpoint)

    def send(self, batch: Any) -> bool:
        """Send one batch without blocking; False if the coordinator has stopped reading
        (its queue is full) or the sink is closed."""
        if self._socket.closed:
            return False
        try:
            self._socket.send(pickle.dumps(batch, protocol=5), zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        return True

    def close(self) -> None:
        self._socket.close(linger=0)


class OutputInbox:
    """The coordinator's end, read on one event loop."""

    def __init__(self, host: str) -> None:
        self._server = PlainServer(host, zmq.PULL)
        self.endpoint = self._server.endpoint
        self._socket = zmq.asyncio.Socket.from_socket(self._server.socket)

    async def receive(self) -> Any:
        return pickle.loads(await self._socket.recv(copy=False))

    def close(self) -> None:
        self._socket.close(linger=0)  # cancels a pending receive first
        self._server.close()
