"""Heterogeneous placement on a real multi-node Ray cluster (several raylets on this machine):
the Dovetail layout (the target verifies on a CPU-only node, the drafter runs on an accelerator
node, here an EasySpec model drafter), `tandem plan` against that cluster, and drafter faults: a
drafter killed mid-stream never fails a request."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
import ray
import yaml
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from tandem.benchmarks.launcher import ServiceProcess
from tandem.client import AsyncTandemClient, TandemClient
from tests.support.prompts import spec_bench_prompts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


ACCELERATOR_TYPE = "STAND-IN"  # Ray's accelerator_type:<X> node resource, as a GPU node has


@pytest.fixture(scope="module")
def cluster():
    """Two nodes: a CPU-only verifier node, and an "accelerator" node whose custom resources
    stand in for an accelerator and its type."""
    cluster = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={"num_cpus": 1, "resources": {"verifier": 1}},
    )
    cluster.add_node(
        num_cpus=1, resources={"accelerator": 1, f"accelerator_type:{ACCELERATOR_TYPE}": 1}
    )
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def dovetail(address: str, accelerators: int = 1) -> dict:
    """The Dovetail layout: target on the CPU verifier node, an EasySpec drafter (layer groups
    of 2) on the accelerator node."""
    return {
        "ray": {"address": address},
        "target": {"resources": {"CPU": 1, "verifier": 1}, "strategy": "pack"},
        "speculation": {
            "drafters": {
                "resources": {"CPU": 1, "accelerator": accelerators},
                "accelerator_type": ACCELERATOR_TYPE,
                "strategy": "strict_spread",
                "layer_groups": 2,
            },
            # The crash test needs drafts with eight streams: the draft-length policy stays out.
            "draft_length": {"full_until_batch": 8, "off_above_batch": 8},
        },
    }


@pytest.fixture(scope="module")
def service(cluster):
    with ServiceProcess(dovetail(cluster.address)) as service:
        yield service


def tandem_plan(config: dict, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "tandem.cli", "plan", "--config", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def node_ids(resource: str) -> list[str]:
    return [n["NodeID"] for n in ray.nodes() if n["Alive"] and resource in n["Resources"]]


def test_plan_places_the_dovetail_layout(cluster, tmp_path):
    result = tandem_plan(dovetail(cluster.address), tmp_path)
    assert result.returncode == 0, result.stderr
    actors = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    (verifier,) = node_ids("verifier")
    (accelerator,) = node_ids("accelerator")
    assert f"node {accelerator[:12]}" in actors["drafters[0]"]
    assert f"accelerator_type:{ACCELERATOR_TYPE}=0.001" in actors["drafters[0]"]
    assert f"node {verifier[:12]}" in actors["target[0]"]


def test_plan_refuses_what_the_cluster_lacks_and_names_it(cluster, tmp_path):
    result = tandem_plan(dovetail(cluster.address, accelerators=2), tmp_path)
    assert result.returncode == 2
    assert "drafters: a replica needs accelerator=2 but the largest node offers 1" in result.stderr
    assert result.stdout == ""


def alive(class_name: str) -> list:
    return [
        a
        for a in list_actors(filters=[("class_name", "=", class_name)], detail=True)
        if a.state == "ALIVE"
    ]


def test_dovetail_target_and_drafter_land_on_their_own_kinds(cluster, service):
    nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    (target,) = alive("TargetReplica")
    (drafter,) = alive("DrafterReplica")
    assert "verifier" in nodes[target.node_id] and "accelerator" not in nodes[target.node_id]
    assert "accelerator" in nodes[drafter.node_id] and "verifier" not in nodes[drafter.node_id]
    with TandemClient(service.address, timeout=300) as client:
        result = client.generate("Repeat: one two, one two, one two.", temperature=0, max_tokens=24)
        assert result.speculation.mode == "auto" and result.speculation.draft_tokens > 0
        stats = client.stats()
        assert stats.drafters[0].node_id == drafter.node_id
        assert stats.replicas[0].node_id == target.node_id


def test_dovetail_easyspec_greedy_equals_target_only(service):
    """Lossless end to end: mode model with an EasySpec drafter (layer groups of 2) through gRPC
    gives the target-only greedy output token for token."""
    drafted = 0
    with TandemClient(service.address, timeout=300) as client:
        for category in ("writing", "coding", "qa"):
            (prompt,) = spec_bench_prompts(1, (category,))
            expected = client.generate(prompt, temperature=0, max_tokens=48, speculation="off")
            result = client.generate(prompt, temperature=0, max_tokens=48, speculation="model")
            assert list(result.token_ids) == list(expected.token_ids), prompt
            spec = result.speculation
            assert spec.mode == "model"
            assert spec.target_steps + spec.accepted_tokens == len(expected.token_ids)
            drafted += spec.draft_tokens
    assert drafted > 0


def test_killed_drafter_fails_no_request_and_speculation_resumes(service):
    prompts = spec_bench_prompts(8, ("writing", "coding", "qa", "summarization"))
    with TandemClient(service.address, timeout=300) as client:
        expected = [
            list(client.generate(p, temperature=0, max_tokens=64, speculation="off").token_ids)
            for p in prompts
        ]
    (drafter,) = alive("DrafterReplica")

    async def eight_streams_and_a_crash():
        async with AsyncTandemClient(service.address, timeout=300) as aclient:
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
    with TandemClient(service.address, timeout=300) as client:
        # The kill shows as a failed call, or a late one (Ray holds calls while it restarts).
        stats = client.stats()
        assert stats.drafter_failures + stats.drafter_timeouts >= 1
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
