"""The coordinator's end of a target replica's outputs: one subscription per replica and event
loop (`ReplicaStream`), which hands each request's outputs to its own queue.

Outputs travel on a socket of the coordinator's (tandem.cluster.transport.output_channel) that the
replica's engine thread sends to, one batch per engine step, so no other thread of the replica
wakes per step; the replica's Ray stream `outputs` only says when the replica dies.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import ray

from tandem.cluster.telemetry.figures import Counters, DeliveryTimes
from tandem.cluster.transport.messages import OutputBatch
from tandem.cluster.transport.output_channel import OutputInbox
from tandem.cluster.transport.sockets import Endpoint


class ReplicaStream:
    """One target replica's outputs for this coordinator: a subscription (a socket of this
    coordinator's that the replica's engine thread sends to,
    tandem.cluster.transport.output_channel), read by a task that hands each request's outputs to
    its queue (with when the batch arrived), and the replica's Ray stream `outputs`, which yields
    nothing but breaks when the replica dies: then every waiting request gets the error, and the
    next request subscribes anew."""

    def __init__(self, actor: Any, counters: Counters) -> None:
        self.actor = actor
        self.counters = counters
        self.queues: dict[str, asyncio.Queue] = {}
        self.subscriber = ""
        self.endpoint: Endpoint | None = None  # where the replica sends them
        self._task: asyncio.Task | None = None

    def open(self, request_id: str) -> asyncio.Queue:
        """A queue for a request's outputs; subscribes if nobody reads on this loop."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            inbox = OutputInbox(ray.util.get_node_ip_address())
            self.subscriber, self.endpoint = uuid.uuid4().hex, inbox.endpoint
            self._task = loop.create_task(self._read(inbox, self.subscriber))
        queue = self.queues[request_id] = asyncio.Queue()
        return queue

    async def _read(self, inbox: OutputInbox, subscriber: str) -> None:
        stream = self.actor.outputs.remote(subscriber)
        watching = asyncio.ensure_future(self._watch(stream))
        receiving = asyncio.ensure_future(self._receive(inbox))
        try:  # whichever ends first ends the subscription: a dead replica, a broken socket
            done, _ = await asyncio.wait((watching, receiving), return_when=asyncio.FIRST_COMPLETED)
            error = done.pop().exception() or RuntimeError("the replica closed its output stream")
        finally:
            ray.cancel(stream)
            watching.cancel()
            receiving.cancel()
            inbox.close()
        for queue in self.queues.values():  # fail what waits on the subscription
            queue.put_nowait(error)

    @staticmethod
    async def _watch(stream: Any) -> None:
        async for ref in stream:  # nothing comes but, when the replica dies, its error
            await ref

    async def _receive(self, inbox: OutputInbox) -> None:
        while True:
            batch: OutputBatch = await inbox.receive()
            arrived = time.perf_counter()
            delay = max(0.0, time.time() - batch.sent_at)
            self.counters.delivery += DeliveryTimes(batches=1, stream_s=delay)
            for step in batch.outputs:
                queue = self.queues.get(step.request_id)
                if queue is not None:
                    queue.put_nowait((step, arrived))
