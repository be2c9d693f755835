"""Two target replicas sharing the work, and a SIGTERM that drains before stopping."""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.client import AsyncTandemClient, TandemClient, build_request
from tandem.cluster.launcher import ServiceProcess
from tandem.protos import tandem_pb2 as pb

pytestmark = pytest.mark.slow


def test_two_replicas_share_work_and_sigterm_drains(model_path):
    # The model is named by its folder: any local Hugging Face folder works as a target.
    config = {
        "models": {"target": str(model_path)},
        "target": {"replicas": 2, "resources": {"CPU": 1}},
        "speculation": {"enabled": False},  # both CPUs go to the two targets
        "server": {"drain_timeout_s": 60},
        "ray": {"num_cpus": 2},
    }
    service = ServiceProcess(config)
    service.start()
    try:
        with TandemClient(service.address) as client:
            assert client.model_info().replicas == 2

            async def four():
                async with AsyncTandemClient(service.address) as aclient:
                    return await asyncio.gather(
                        *(aclient.generate(f"Name {n} fruits.", max_tokens=16) for n in range(4))
                    )

            asyncio.run(four())
            stats = client.stats()
            assert len(stats.replicas) == 2
            assert [r.requests_served for r in stats.replicas] == [2, 2]
            assert len({r.replica_id for r in stats.replicas}) == 2

            # A request in flight when SIGTERM arrives still completes in full.
            call = client.stub.GenerateStream(
                build_request("Tell a story.", max_tokens=60, ignore_eos=True, temperature=0)
            )
            first = next(call)
            ray_processes = psutil.Process(service.proc.pid).children()
            assert {p.name() for p in ray_processes} >= {"raylet", "gcs_server"}
            service.proc.send_signal(signal.SIGTERM)
            channel = grpc.insecure_channel(service.address)
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # health turns NOT_SERVING while draining
                status = health.Check(health_pb2.HealthCheckRequest()).status
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
    finally:
        service.stop()
