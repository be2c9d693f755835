"""Heterogeneous placement on a real multi-node Ray cluster (several raylets on this machine),
and drafter faults: a drafter killed mid-stream never fails a request."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from tandem.client import AsyncTandemClient, TandemClient
from tandem.cluster.launcher import ServiceProcess

from .conftest import spec_bench_prompts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """Two nodes with different custom resources: one for targets, one for drafters."""
    cluster = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={"num_cpus": 1, "resources": {"verifier": 1}},
    )
    cluster.add_node(num_cpus=1, resources={"accelerator": 1})
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def service(cluster):
    config = {
        "ray": {"address": cluster.address},
        "target": {"resources": {"CPU": 1, "verifier": 1}},
        "speculation": {
            "drafters": {"resources": {"CPU": 1, "accelerator": 1}, "derive_layers": 0}
        },
    }
    with ServiceProcess(config) as service:
        yield service


def alive(class_name: str) -> list:
    return [
        a
        for a in list_actors(filters=[("class_name", "=", class_name)], detail=True)
        if a.state == "ALIVE"
    ]


def test_target_and_drafters_land_on_their_own_kinds(cluster, service):
    nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    (target,) = alive("TargetReplica")
    (drafter,) = alive("DrafterReplica")
    assert "verifier" in nodes[target.node_id] and "accelerator" not in nodes[target.node_id]
    assert "accelerator" in nodes[drafter.node_id] and "verifier" not in nodes[drafter.node_id]
    with TandemClient(service.address) as client:
        result = client.generate("Repeat: one two, one two, one two.", temperature=0, max_tokens=24)
        assert result.speculation.mode == "ngram" and result.speculation.draft_tokens > 0
        stats = client.stats()
        assert stats.drafters[0].node_id == drafter.node_id
        assert stats.replicas[0].node_id == target.node_id


def test_killed_drafter_fails_no_request_and_speculation_resumes(service):
    prompts = spec_bench_prompts(8, ("writing", "coding", "qa", "summarization"))
    with TandemClient(service.address) as client:
        expected = [
            list(client.generate(p, temperature=0, max_tokens=64, speculation="off").token_ids)
            for p in prompts
        ]
    (drafter,) = alive("DrafterReplica")

    async def eight_streams_and_a_crash():
        async with AsyncTandemClient(service.address) as aclient:
            started = asyncio.Event()
            counter = {"first": 0}

            async def one(prompt):
                ids = []
                async for chunk in aclient.stream(prompt, temperature=0, max_tokens=64):
                    if not ids and chunk.token_ids:
                        counter["first"] += 1
                        if counter["first"] == len(prompts):
                            started.set()
                    ids += chunk.token_ids
                return ids, chunk.speculation

            tasks = [asyncio.create_task(one(p)) for p in prompts]
            await started.wait()
            os.kill(drafter.pid, signal.SIGKILL)  # a real crash, mid-stream
            return await asyncio.gather(*tasks)

    results = asyncio.run(eight_streams_and_a_crash())
    assert [ids for ids, _ in results] == expected
    with TandemClient(service.address) as client:
        assert client.stats().drafter_failures >= 1
        # Ray restarts the drafter; once it answers, requests get drafts again.
        deadline = time.monotonic() + 120
        while True:
            result = client.generate(prompts[0], temperature=0, max_tokens=32)
            if result.speculation.draft_tokens > 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert result.speculation.draft_tokens > 0
        assert list(result.token_ids) == expected[0][:32]
        assert client.stats().drafters_down == 0
    (restarted,) = alive("DrafterReplica")
    assert restarted.pid != drafter.pid
