"""CPU binding on the real service (embedded Ray, a vLLM target, a drafter, gRPC on loopback) as the
built-in default config sets it (`VLLM_CPU_OMP_THREADS_BIND: auto`, tandem.cluster.config.cpus):
where every thread runs, and greedy output still equal to the target alone's."""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict

import psutil
import pytest

from tandem.client import TandemClient
from tandem.cluster.config.cpus import node_cpus
from tests.support.reliability import DEADLINE_S, PROMPTS, tandem_processes
from tests.support.services import SPECULATING

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.uses_service(SPECULATING)]


@pytest.fixture(scope="module")
def service(services):
    return services.get(SPECULATING)  # the default CPU binding


def test_the_target_replica_computes_on_a_core_of_its_own(service):
    """The target actor's process on the node's last CPU, every other process of the service
    (server, Ray's daemons, the drafter) on the rest; GetStats says which CPU."""
    node = node_cpus()
    last = max(node)
    with TandemClient(service.address, timeout=DEADLINE_S) as client:
        assert list(client.stats().replicas[0].engine_cpus) == [last]
    masks = defaultdict(set)  # role -> the CPU sets its threads may run on
    root = psutil.Process(service.proc.pid)
    targets = {p.pid for p in tandem_processes(service)["target"]}
    assert targets
    for process in [root, *root.children(recursive=True)]:
        role = "target" if process.pid in targets else "other"
        for thread in process.threads():
            with contextlib.suppress(OSError):  # a thread that has just ended
                masks[role].add(frozenset(os.sched_getaffinity(thread.id)))
    assert masks["target"] == {frozenset({last})}
    assert masks["other"] == {node - {last} or node}  # one CPU: nothing to keep off


def test_bound_greedy_output_equals_the_target_alone(service):
    with TandemClient(service.address, timeout=DEADLINE_S) as client:
        drafted = 0
        for prompt in PROMPTS[:3]:
            alone = client.generate(prompt, temperature=0, max_tokens=32, speculation="off")
            spec = client.generate(prompt, temperature=0, max_tokens=32, speculation="ngram")
            assert list(spec.token_ids) == list(alone.token_ids)
            drafted += spec.speculation.draft_tokens
        assert drafted > 0
