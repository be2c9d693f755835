"""Two target replicas sharing the work, one of them killed under load, and a SIGTERM that
drains before stopping (last: it stops the service)."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.benchmarks.launcher import ServiceProcess
from tandem.client import AsyncTandemClient, TandemClient, build_request
from tandem.protos import tandem_pb2 as pb
from tests.support.reliability import (
    DEADLINE_S,
    PROMPTS,
    Lane,
    run_lanes,
    tandem_processes,
    wait_for,
)

pytestmark = pytest.mark.slow

RESTART_BOUND_S = 300  # a killed replica serves again within this (a fresh engine loads)


@pytest.fixture(scope="module")
def service(model_path):
    # The model is named by its folder: any local Hugging Face folder works as a target.
    config = {
        "models": {"target": str(model_path)},
        "target": {"replicas": 2, "resources": {"CPU": 1}},
        "speculation": {"enabled": False},  # both CPUs go to the two targets
        "server": {"drain_timeout_s": 60},
        "ray": {"num_cpus": 2},
    }
    with ServiceProcess(config, startup_timeout_s=600) as service:
        yield service


@pytest.fixture(scope="module")
def client(service):
    with TandemClient(service.address, timeout=DEADLINE_S) as c:
        yield c


@pytest.mark.timeout(1200)
def test_a_killed_replica_costs_no_stream_and_comes_back(service, client):
    """Eight greedy streams over two replicas; one replica is stopped mid-stream, given two
    requests that have streamed nothing, then killed: the streams it held continue on the other
    replica from the tokens they had delivered and end exactly as if nothing had happened, the
    two waiting requests are retried there, nothing fails, and the killed replica serves again
    within RESTART_BOUND_S."""
    references = [
        list(client.generate(p, temperature=0, max_tokens=32, ignore_eos=True).token_ids)
        for p in PROMPTS
    ]
    before = client.stats()
    lanes = [Lane(i, mode="off") for i in range(8)]
    retried, stalled = [], []

    async def until(lanes):
        await asyncio.gather(*(lane.started.wait() for lane in lanes))
        victim = tandem_processes(service)["target"][0]
        victim.suspend()  # it takes requests and streams nothing
        streamed = [lane.streamed for lane in lanes]
        async with AsyncTandemClient(service.address, timeout=DEADLINE_S) as aclient:
            waiting = [
                asyncio.create_task(
                    aclient.generate(PROMPTS[i], temperature=0, max_tokens=32, ignore_eos=True)
                )
                for i in range(4)  # fewest outstanding: two of them go to the stopped replica
            ]
            await asyncio.sleep(2)
            # Mid-request on the stopped replica: tokens delivered, none since it stopped.
            stalled.extend(
                lane.index
                for lane, n in zip(lanes, streamed, strict=True)
                if lane.in_flight and lane.streamed == n
            )
            victim.kill()
            retried.extend(await asyncio.gather(*waiting))
        back = await asyncio.to_thread(
            wait_for, lambda: all(r.up for r in client.stats().replicas), RESTART_BOUND_S
        )
        assert back, f"the killed replica was not back within {RESTART_BOUND_S} s"

    asyncio.run(run_lanes(service.address, lanes, until))
    assert stalled, "no stream was mid-request on the killed replica"
    assert [list(r.token_ids) for r in retried] == references[:4]
    assert [e for lane in lanes for e in lane.errors] == []
    for lane in lanes:
        for prompt, ids, _ in lane.done:
            assert ids == references[prompt][:32], (lane.index, prompt)
    stats = client.stats()
    assert stats.requests_failed == before.requests_failed
    assert stats.requests_aborted == before.requests_aborted
    # Both replicas take requests again.
    served = [r.requests_served for r in stats.replicas]
    with TandemClient(service.address, timeout=DEADLINE_S) as other:
        calls = [
            other.stub.Generate.future(build_request(p, max_tokens=4), timeout=DEADLINE_S)
            for p in PROMPTS[:4]
        ]
        assert all(c.result().usage.completion_tokens == 4 for c in calls)
    now = [r.requests_served for r in client.stats().replicas]
    assert all(n > s for n, s in zip(now, served, strict=True)), (served, now)


@pytest.mark.timeout(900)
def test_two_replicas_share_work_and_sigterm_drains(service, client):
    assert client.model_info().replicas == 2
    served = [r.requests_served for r in client.stats().replicas]

    async def four():
        async with AsyncTandemClient(service.address, timeout=DEADLINE_S) as aclient:
            return await asyncio.gather(
                *(aclient.generate(f"Name {n} fruits.", max_tokens=16) for n in range(4))
            )

    asyncio.run(four())
    stats = client.stats()
    assert len(stats.replicas) == 2
    assert [r.requests_served - s for r, s in zip(stats.replicas, served, strict=True)] == [2, 2]
    assert len({r.replica_id for r in stats.replicas}) == 2

    # A request in flight when SIGTERM arrives still completes in full.
    call = client.stub.GenerateStream(
        build_request("Tell a story.", max_tokens=60, ignore_eos=True, temperature=0),
        timeout=DEADLINE_S,
    )
    first = next(call)
    ray_processes = psutil.Process(service.proc.pid).children()
    assert {p.name() for p in ray_processes} >= {"raylet", "gcs_server"}
    service.proc.send_signal(signal.SIGTERM)
    channel = grpc.insecure_channel(service.address)
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # health turns NOT_SERVING while draining
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=30).status
        if status == health_pb2.HealthCheckResponse.NOT_SERVING:
            break
        time.sleep(0.05)
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as info:
        client.generate("late", max_tokens=4)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    rest = list(call)
    channel.close()
    tokens = len(first.token_ids) + sum(len(c.token_ids) for c in rest)
    assert tokens == 60 and rest[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert service.proc.wait(timeout=120) == 0
    # The embedded Ray cluster went down with the service.
    gone, alive = psutil.wait_procs(ray_processes, timeout=30)
    assert not alive
