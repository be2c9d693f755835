"""The Transport of a speculation session: drafter replicas reached over their sockets
(tandem.cluster.transport.draft_channel), found and revived through the target actor's directory
of them (tandem.cluster.transport.directory, which asks Ray), with a time budget per call. It runs
in the engine's worker, with the session.

A call that misses its budget is not a fault (a loaded drafter is late, not broken): its reply
is dropped when it comes, and the replica is `busy` until then, so the session sends it nothing
new and no step waits for it meanwhile. A hung replica (a stopped process) costs one budget,
then nothing, and drafts again as soon as it answers. A socket cannot tell late from dead, so
while a replica is busy the directory is asked, one question at a time, whether its actor is
still the one behind the socket: if it died or restarted (on a new socket) the replica stops
being busy and its next call fails, which marks it down until a probe finds the new socket.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from tandem.cluster.telemetry.figures import WireTraffic
from tandem.cluster.transport.directory import Directory
from tandem.cluster.transport.draft_channel import (
    ChannelFull,
    ChannelTimeout,
    DraftChannel,
    wait,
)
from tandem.cluster.transport.sockets import Endpoint
from tandem.speculation.protocol import (
    DraftItem,
    DraftReply,
    Hint,
    PredraftPlan,
    PredraftReply,
)
from tandem.speculation.session import SpeculationSession
from tandem.speculation.settings import SpeculationConfig
from tandem.speculation.wire import Kind

CONNECT_TIMEOUT_S = 30.0
# How long a target waits at start for a drafter starting beside it (a large draft model loads
# for minutes); a drafter whose actor fails to start is reported at once.
DRAFTER_START_TIMEOUT_S = 900.0


class DrafterUnreachable(RuntimeError):
    pass


class DrafterGone(ConnectionError):
    """The drafter behind a channel died or restarted while a call to it was late."""


class SocketTransport:
    def __init__(self, replicas: int, directory: Directory) -> None:
        """Finds each of the `replicas` drafters through the directory (they start beside the
        target, so the first answers may be "not known yet") and pings it once."""
        self.directory = directory
        self.replicas = replicas
        self.channels = [self._connect(replica) for replica in range(replicas)]
        self._closed = WireTraffic()  # traffic of channels replaced after a drafter restart
        self._late: dict[int, int] = {}  # replica -> seq of its call that missed the budget
        self._gone: set[int] = set()  # replicas whose drafter went away while late

    def _connect(self, replica: int) -> DraftChannel:
        deadline = time.monotonic() + DRAFTER_START_TIMEOUT_S
        endpoint = None
        while endpoint is None and time.monotonic() < deadline:
            endpoint = self.directory.locate(replica, CONNECT_TIMEOUT_S)
        if not isinstance(endpoint, Endpoint):
            raise DrafterUnreachable(
                f"drafter {replica} did not come up within {DRAFTER_START_TIMEOUT_S:.0f}s "
                f"({endpoint or 'still starting'})"
            )
        channel = DraftChannel(endpoint)
        result = channel.call(Kind.PING, None, CONNECT_TIMEOUT_S)
        if isinstance(result, Exception):
            channel.close()
            raise DrafterUnreachable(
                f"drafter {replica} does not answer on {endpoint.address} from this target's "
                f"node ({result}): open that port range between the nodes"
            )
        return channel

    def busy(self, replica: int) -> bool:
        """True while the replica's late call has not returned (and its actor is still the one
        behind the socket). Non-blocking."""
        seq = self._late.get(replica)
        if seq is None:
            return False
        if self.channels[replica].answered(seq):  # the late reply came: dropped
            self._end_late(replica)
            return False
        if self._went_away(replica):
            self._end_late(replica)
            self._gone.add(replica)
            return False
        return True

    def _went_away(self, replica: int) -> bool:
        """Whether the directory says the late replica's actor died or restarted on a new
        socket; a stopped or loaded one keeps the question open (the next check asks again)."""
        answer = self.directory.ask("watch", replica)
        if answer is None:
            return False
        return isinstance(answer, Exception) or answer != self.channels[replica].endpoint

    def _end_late(self, replica: int) -> None:
        seq = self._late.pop(replica, None)
        if seq is not None:
            self.channels[replica].forget(seq)
        self.directory.forget("watch", replica)

    def draft(
        self, batches: dict[int, list[DraftItem]], timeout_s: float
    ) -> dict[int, list[DraftReply] | Exception]:
        return self.collect(self._send(Kind.DRAFT, batches), timeout_s)

    def predraft(self, batches: dict[int, list[DraftItem]], plan: PredraftPlan) -> Any:
        return self._send(Kind.PREDRAFT, {r: (items, plan) for r, items in batches.items()})

    def collect(
        self, handle: dict[int, Any], timeout_s: float
    ) -> dict[int, list[PredraftReply] | Exception]:
        """Each replica's reply, or the exception standing for its failure or lateness; a late
        call's seq stays pending, and its replica busy until the reply comes."""
        results = wait(handle, timeout_s, forget=False)
        for replica, result in results.items():
            if isinstance(result, ChannelTimeout):
                self._end_late(replica)  # replies come in order: this one is the last
                self._late[replica] = handle[replica][1]
        return results

    def _send(self, kind: Kind, bodies: dict[int, Any]) -> dict[int, Any]:
        """Each replica's (channel, seq) to wait for, or the exception that stopped the send."""
        sent: dict[int, Any] = {}
        for replica, body in bodies.items():
            channel = self.channels[replica]
            if replica in self._gone:
                sent[replica] = DrafterGone(f"drafter {replica} went away while late")
                continue
            try:
                sent[replica] = (channel, channel.send(kind, body))
            except ChannelFull as exc:
                sent[replica] = exc
        return sent

    def hint(self, replica: int, hints: dict[str, Hint]) -> None:
        with contextlib.suppress(ChannelFull):  # a hint is only advice
            self.channels[replica].send(Kind.HINT, hints)

    def free(self, replica: int, request_ids: list[str]) -> None:
        self.channels[replica].post(Kind.FREE, request_ids)

    def probe(self, replica: int) -> bool:
        """Non-blocking: True once the directory says the drafter answers again; it may have
        restarted on a new address, so its channel is replaced."""
        endpoint = self.directory.ask("probe", replica)
        if endpoint is None or isinstance(endpoint, Exception):  # still dead, or restarting
            return False
        self._end_late(replica)
        self._gone.discard(replica)
        old = self.channels[replica]
        self._closed = self._add(self._closed, old)
        old.close()
        self.channels[replica] = DraftChannel(endpoint)
        return True

    def traffic(self) -> WireTraffic:
        total = self._closed
        for channel in self.channels:
            total = self._add(total, channel)
        return total

    @staticmethod
    def _add(total: WireTraffic, channel: DraftChannel) -> WireTraffic:
        return WireTraffic(
            total.messages + channel.messages,
            total.bytes_sent + channel.bytes_sent,
            total.bytes_received + channel.bytes_received,
        )

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.directory.close()


@dataclass(frozen=True)
class RemoteSession:
    """What the engine's worker builds its speculation session from (vLLM pickles the
    arguments of `collective_rpc` into the worker): the speculation settings, how many drafter
    replicas there are, and the target actor's directory of them."""

    settings: SpeculationConfig
    replicas: int
    directory: Endpoint

    def __call__(self) -> SpeculationSession:
        transport = SocketTransport(self.replicas, Directory(self.directory))
        return SpeculationSession(transport, self.settings)
