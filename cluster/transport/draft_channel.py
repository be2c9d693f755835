"""The data plane between a target's proposer and a drafter replica: one ZMQ socket pair.

Ray places the drafters, restarts them and tells the proposer where a (re)started one listens
(the control plane); the per-step messages travel on a socket of their own, in the wire format
of tandem.speculation.wire. Measured side by side
(docs/benchmarks/2026-12-01-lean-serving-path-eagle3.md, "The drafter exchange alone"), a round
trip this way costs a fraction of a Ray actor call's, and of a Ray Compiled Graph's.

The drafter binds a ROUTER socket on its node's address behind a password
(tandem.cluster.transport.sockets), so nobody without the actor handle talks to a drafter. Its
`DraftServer` reads messages on one thread and runs them on another, in order, except the kinds it
is told to run at once (Mirror-SD hints, which must land while a pre-draft runs). The target's
`DraftChannel` sends from the engine thread and matches replies by sequence number; `free` may come
from any thread and has a socket of its own.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import zmq

from tandem.cluster.transport.sockets import Endpoint, PlainServer, connect
from tandem.speculation.wire import CODEC, Kind, WireError

log = logging.getLogger("tandem.draft_channel")


class DrafterError(RuntimeError):
    """The drafter answered a message with an error."""


class ChannelTimeout(TimeoutError):
    """No reply within the time budget."""


class ChannelFull(ConnectionError):
    """The drafter has stopped reading (dead, or hung): its queue is full."""


class DraftServer:
    """The drafter's end: `dispatch(kind, body)` answers each message (None for no reply)."""

    def __init__(
        self, host: str, dispatch: Callable[[Kind, Any], Any], inline: Collection[Kind] = ()
    ) -> None:
        self._dispatch = dispatch
        self._inline = frozenset(inline)
        self._server = PlainServer(host, zmq.ROUTER)
        self._context, self._socket = self._server.context, self._server.socket
        self.endpoint = self._server.endpoint
        self._replies = f"inproc://tandem-replies-{os.getpid()}-{id(self)}"
        self._replies_in = self._context.socket(zmq.PULL)
        self._replies_in.bind(self._replies)
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._route, name="draft-server-io", daemon=True),
            threading.Thread(target=self._run, name="draft-server-work", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _route(self) -> None:
        """Read requests (running inline kinds at once) and send the worker's replies."""
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._replies_in, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _ in poller.poll(100):
                if sock is self._replies_in:
                    self._socket.send_multipart(self._replies_in.recv_multipart(copy=False))
                    continue
                ident, data = self._socket.recv_multipart()
                try:
                    kind, seq, body = CODEC.decode(data)
                    kind = Kind(kind)
                except (WireError, ValueError) as exc:
                    log.warning("dropped a message this drafter cannot read: %s", exc)
                    continue
                if kind in self._inline:
                    self._answer(kind, seq, body)
                else:
                    self._work.put((ident, kind, seq, body))

    def _run(self) -> None:
        """Answer the queued messages one at a time, in order."""
        out = self._context.socket(zmq.PUSH)
        out.linger = 0
        out.connect(self._replies)
        while True:
            ident, kind, seq, body = self._work.get()
            if ident is None:
                break
            reply = self._answer(kind, seq, body)
            if kind.answered:
                out.send_multipart([ident, reply])
        out.close()

    def _answer(self, kind: Kind, seq: int, body: Any) -> bytes:
        try:
            return CODEC.encode(kind, seq, self._dispatch(kind, body))
        except Exception as exc:  # reported to the proposer, which skips this drafter
            log.exception("drafter failed a %s message", kind.name)
            return CODEC.encode(Kind.ERROR, seq, f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        self._stop.set()
        self._work.put((None, None, None, None))
        for thread in self._threads:
            thread.join(timeout=5)
        self._server.close()


class DraftChannel:
    """The target's end of one drafter replica's socket."""

    def __init__(self, endpoint: Endpoint) -> None:
        context = zmq.Context.instance()
        self.endpoint = endpoint
        self.socket = connect(context, zmq.DEALER, endpoint)  # the engine thread's
        self._control = connect(context, zmq.DEALER, endpoint)  # any thread's, under the lock
        self._control_lock = threading.Lock()
        self._seq = itertools.count(1)
        self._pending: set[int] = set()
        self._replies: dict[int, Any] = {}  # arrived while waiting for another
        self.messages = self.bytes_sent = self.bytes_received = 0

    def send(self, kind: Kind, body: Any) -> int:
        """Send a message from the engine thread; returns its seq (wait for answered kinds).
        Never blocks: raises ChannelFull when a drafter that stopped reading has a full queue."""
        seq = next(self._seq)
        data = CODEC.encode(kind, seq, body)
        try:
            self.socket.send(data, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            raise ChannelFull(f"{self.endpoint.address} takes no more messages") from None
        self._count(len(data))
        if kind.answered:
            self._pending.add(seq)
        return seq

    def post(self, kind: Kind, body: Any) -> None:
        """Send a message that gets no reply, from any thread; dropped if the drafter's queue
        is full (a dead drafter forgets everything anyway)."""
        data = CODEC.encode(kind, 0, body)
        with self._control_lock:
            try:
                self._control.send(data, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._count(len(data))

    def _count(self, sent: int) -> None:
        self.messages += 1
        self.bytes_sent += sent

    def _receive(self) -> None:
        """Read every reply that has arrived; replies nobody waits for any more are dropped."""
        while True:
            try:
                data = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.bytes_received += len(data)
            kind, seq, body = CODEC.decode(data)
            if seq in self._pending:
                self._replies[seq] = DrafterError(body) if kind == Kind.ERROR else body

    def take(self, seq: int) -> Any:
        """The reply to `seq` if it has arrived (an exception if the drafter failed it)."""
        self._receive()
        if seq not in self._replies:
            return _MISSING
        self._pending.discard(seq)
        return self._replies.pop(seq)

    def answered(self, seq: int) -> bool:
        """Whether the reply to a pending `seq` has arrived (it is dropped then)."""
        return self.take(seq) is not _MISSING

    def poll(self, seq: int) -> tuple[bool, Any]:
        """(True, the reply) once the reply to a pending `seq` has arrived, else (False, None)."""
        reply = self.take(seq)
        return (False, None) if reply is _MISSING else (True, reply)

    def call(self, kind: Kind, body: Any, timeout_s: float) -> Any:
        """Send one message and wait for its reply: the reply, or the exception standing for
        the failure or lateness (blocking; start-up checks and tools, not the engine's step)."""
        return wait({0: (self, self.send(kind, body))}, timeout_s)[0]

    def forget(self, seq: int) -> None:
        """Stop waiting for `seq` (its reply will be dropped)."""
        self._pending.discard(seq)
        self._replies.pop(seq, None)

    def close(self) -> None:
        self.socket.close(linger=0)
        with self._control_lock:
            self._control.close(linger=0)


_MISSING = object()


def wait(
    waits: Mapping[int, tuple[DraftChannel, int] | Exception],
    timeout_s: float,
    forget: bool = True,
) -> dict[int, Any]:
    """Each key's reply to its (channel, seq), or the exception standing for its failure or
    lateness (a key given an exception keeps it), waiting at most timeout_s for all. A late
    seq is forgotten (its reply dropped when it comes) unless `forget` is False: then it stays
    pending, for `DraftChannel.answered`."""
    deadline = time.perf_counter() + timeout_s
    results = {key: w for key, w in waits.items() if isinstance(w, Exception)}
    left = {key: w for key, w in waits.items() if not isinstance(w, Exception)}
    while True:
        for key, (channel, seq) in list(left.items()):
            reply = channel.take(seq)
            if reply is not _MISSING:
                results[key] = reply
                del left[key]
        remaining = deadline - time.perf_counter()
        if not left or remaining <= 0:
            break
        poller = zmq.Poller()
        for channel, _ in left.values():
            poller.register(channel.socket, zmq.POLLIN)
        poller.poll(max(1, int(remaining * 1000)))
    for key, (channel, seq) in left.items():
        if forget:
            channel.forget(seq)
        results[key] = ChannelTimeout(f"drafter {key} missed {timeout_s * 1e3:.0f} ms")
    return results
