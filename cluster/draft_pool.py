"""The Transport of a speculation session: drafter replicas reached over their sockets
(tandem.cluster.draft_channel), found and revived through Ray, with a time budget per call."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import ray

from tandem.cluster.draft_channel import ChannelFull, DraftChannel, Endpoint, wait
from tandem.cluster.figures import WireTraffic
from tandem.speculation.protocol import (
    DraftItem,
    DraftReply,
    Hint,
    PredraftPlan,
    PredraftReply,
)
from tandem.speculation.wire import Kind

CONNECT_TIMEOUT_S = 30.0


class DrafterUnreachable(RuntimeError):
    pass


class SocketTransport:
    def __init__(self, drafters: Sequence[Any]) -> None:
        self.drafters = list(drafters)
        self.replicas = len(self.drafters)
        endpoints = ray.get([d.endpoint.remote() for d in self.drafters], timeout=CONNECT_TIMEOUT_S)
        self.channels = [DraftChannel(e) for e in endpoints]
        self._closed = WireTraffic()  # traffic of channels replaced after a drafter restart
        self._probes: dict[int, Any] = {}
        for replica, channel in enumerate(self.channels):
            seq = channel.send(Kind.PING, None)
            result = wait({replica: (channel, seq)}, CONNECT_TIMEOUT_S)[replica]
            if isinstance(result, Exception):
                raise DrafterUnreachable(
                    f"drafter {replica} does not answer on {channel.endpoint.address} from this "
                    f"target's node ({result}): open that port range between the nodes"
                )

    def draft(
        self, batches: dict[int, list[DraftItem]], timeout_s: float
    ) -> dict[int, list[DraftReply] | Exception]:
        return self.collect(self._send(Kind.DRAFT, batches), timeout_s)

    def predraft(self, batches: dict[int, list[DraftItem]], plan: PredraftPlan) -> Any:
        return self._send(Kind.PREDRAFT, {r: (items, plan) for r, items in batches.items()})

    def collect(
        self, handle: dict[int, Any], timeout_s: float
    ) -> dict[int, list[PredraftReply] | Exception]:
        return wait(handle, timeout_s)

    def _send(self, kind: Kind, bodies: dict[int, Any]) -> dict[int, Any]:
        """Each replica's (channel, seq) to wait for, or the exception that stopped the send."""
        sent: dict[int, Any] = {}
        for replica, body in bodies.items():
            channel = self.channels[replica]
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
        """Non-blocking: True once Ray says the drafter answers again; it may have restarted on
        a new address, so its channel is replaced."""
        probe = self._probes.get(replica)
        if probe is None:
            self._probes[replica] = self.drafters[replica].endpoint.remote()
            return False
        ready, _ = ray.wait([probe], timeout=0)
        if not ready:
            return False
        del self._probes[replica]
        try:
            endpoint: Endpoint = ray.get(probe)
        except Exception:  # still dead (or restarting): probe again next step
            return False
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
