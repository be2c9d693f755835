"""The output socket between a target replica's engine thread and a coordinator (real ZMQ
sockets on 127.0.0.1; the service tests run it under the real engine)."""

from __future__ import annotations

import asyncio

import pytest

from tandem.cluster.telemetry.figures import RequestFigures
from tandem.cluster.transport.messages import OutputBatch, RequestError, StepOutput
from tandem.cluster.transport.output_channel import OutputInbox, OutputSink
from tandem.cluster.transport.sockets import Endpoint
from tests.support.services import free_port

BATCH = OutputBatch(
    [
        StepOutput("a#0", [1, 2], " hi", None),
        StepOutput("b#1", [], "", "abort", RequestFigures(mode="ngram", target_steps=3)),
        StepOutput("c#2", [], "", "abort", error=RequestError("INTERNAL", "step failed")),
    ],
    sent_at=123.0,
)


def _receive(inbox: OutputInbox, timeout_s: float) -> OutputBatch | None:
    async def receive() -> OutputBatch | None:
        try:
            return await asyncio.wait_for(inbox.receive(), timeout_s)
        except TimeoutError:
            return None

    return asyncio.run(receive())


@pytest.mark.timeout(60)
def test_a_batch_arrives_whole_and_in_order():
    inbox = OutputInbox("127.0.0.1")
    sink = OutputSink(inbox.endpoint)
    try:
        second = OutputBatch([StepOutput("a#0", [3], "!", "stop")], sent_at=124.0)
        assert sink.send(BATCH) and sink.send(second)

        async def both() -> list[OutputBatch]:
            return [await inbox.receive(), await inbox.receive()]

        first, then = asyncio.run(asyncio.wait_for(both(), 10))
        assert first.outputs[:2] == BATCH.outputs[:2] and first.sent_at == 123.0
        error = first.outputs[2].error
        assert isinstance(error, RequestError) and error.code == "INTERNAL"
        assert then == second
    finally:
        sink.close()
        inbox.close()


@pytest.mark.timeout(60)
def test_a_sender_without_the_password_gets_nothing_in():
    inbox = OutputInbox("127.0.0.1")
    intruder = OutputSink(Endpoint(inbox.endpoint.address, "guessed"))
    try:
        intruder.send(BATCH)
        assert _receive(inbox, 1.0) is None
    finally:
        intruder.close()
        inbox.close()


@pytest.mark.timeout(60)
def test_a_gone_coordinator_never_blocks_the_engine_thread():
    """Nobody reads: batches queue up to ZMQ's high-water mark, then sends fail at once (the
    replica aborts that coordinator's requests); a closed sink refuses too."""
    sink = OutputSink(Endpoint(f"tcp://127.0.0.1:{free_port()}", "x"))
    sent = 0
    while sink.send(BATCH):
        sent += 1
        assert sent < 100_000
    sink.close()
    assert not sink.send(BATCH)
