"""Where each drafter replica listens: asked by the engine's worker, answered through Ray.

The speculation session runs in the target engine's worker, a process vLLM starts, which is no
Ray worker; a drafter that Ray restarts listens on a new socket, and only Ray knows which. The
target actor therefore serves a small directory on a socket of its own (`DirectoryServer`, the
drafter channel's server with one message kind, LOCATE), and the session's transport asks it the
way it asked Ray before: without blocking, one question per replica at a time
(`Directory.ask`). An answer not known yet (a restarting or stopped drafter) is None, as an
unready Ray call was; an actor that died answers with the error.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Sequence
from typing import Any

from tandem.cluster.transport.draft_channel import ChannelFull, DraftChannel, DraftServer
from tandem.cluster.transport.sockets import Endpoint
from tandem.speculation.wire import Kind

# How long the directory waits on Ray for one answer before saying "not known yet": short, so
# a question about a hung drafter never holds the answers about the others for long.
LOCATE_WAIT_S = 1.0


class DirectoryServer:
    """The target actor's end: answers LOCATE with where Ray says drafter `replica` listens."""

    def __init__(self, drafters: Sequence[Any], host: str = "127.0.0.1") -> None:
        self._drafters = list(drafters)
        self._server = DraftServer(host, self._locate)
        self.endpoint = self._server.endpoint

    def _locate(self, kind: Kind, replica: int) -> list[str] | None:
        """On the server's thread. A future rather than `ray.get`, which Ray refuses to see in
        an async actor (it warns that the event loop blocks, though this thread is not it)."""
        if kind != Kind.LOCATE:
            raise ValueError(f"the drafter directory does not take {kind.name} messages")
        answer = self._drafters[replica].endpoint.remote().future()
        try:
            endpoint = answer.result(timeout=LOCATE_WAIT_S)
        except concurrent.futures.TimeoutError:
            return None  # restarting, or stopped: ask again later
        return [endpoint.address, endpoint.password]

    def close(self) -> None:
        self._server.close()


class Directory:
    """The session's end, on the engine's thread: questions that never block it."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._channel = DraftChannel(endpoint)
        self._asked: dict[tuple[str, int], int] = {}  # (purpose, replica) -> seq of its question

    def ask(self, purpose: str, replica: int) -> Endpoint | Exception | None:
        """Where the replica listens once the answer came (an exception if its actor died),
        None until then; asks again after an answer of "not known yet". One open question per
        purpose and replica (a late drafter's watch, a down one's probe)."""
        key = (purpose, replica)
        seq = self._asked.get(key)
        if seq is None:
            with contextlib.suppress(ChannelFull):
                self._asked[key] = self._channel.send(Kind.LOCATE, replica)
            return None
        answered, reply = self._channel.poll(seq)
        if not answered:
            return None
        del self._asked[key]
        return _endpoint(reply)

    def locate(self, replica: int, timeout_s: float) -> Endpoint | Exception | None:
        """Blocking: where the replica listens, within timeout_s (start-up only)."""
        return _endpoint(self._channel.call(Kind.LOCATE, replica, timeout_s))

    def forget(self, purpose: str, replica: int) -> None:
        """Drop the open question, if any (its answer will be dropped)."""
        seq = self._asked.pop((purpose, replica), None)
        if seq is not None:
            self._channel.forget(seq)

    def close(self) -> None:
        self._channel.close()


def _endpoint(reply: Any) -> Endpoint | Exception | None:
    """A LOCATE reply as the transport takes it: an Endpoint, None (not known yet) or the error."""
    if reply is None or isinstance(reply, Exception):
        return reply
    return Endpoint(*reply)
