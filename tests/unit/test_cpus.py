"""Where the target's engine computes (tandem.cluster.config.cpus): vLLM's
VLLM_CPU_OMP_THREADS_BIND read for tandem's in-process engines, and a config naming CPUs that are
no CPU list refused."""

from __future__ import annotations

import contextlib
import os
import threading

import pytest

from tandem.cluster.config.cpus import (
    CoreBinding,
    compute_threads,
    keep_off,
    on_cpus,
    parse_cpu_list,
)
from tandem.cluster.config.deployment import TandemConfig
from tandem.cluster.config.errors import ConfigError

pytestmark = pytest.mark.timeout(30)
NODE = frozenset(range(8))


def test_cpu_lists_in_vllms_syntax():
    assert parse_cpu_list("1") == {1}
    assert parse_cpu_list("2-3,6") == {2, 3, 6}
    for bad in ("", "a", "3-1", "1,,2", "-1"):
        with pytest.raises(ValueError):
            parse_cpu_list(bad)


def test_auto_gives_replicas_the_last_cpus_while_there_are():
    binding = CoreBinding("auto", cpus_per_replica=2, replicas=5)
    assert [binding.engine_cpus(i, NODE) for i in range(5)] == [
        {6, 7},
        {4, 5},
        {2, 3},
        {0, 1},
        None,  # past the node's CPUs: not bound
    ]
    assert binding.engines(NODE) == NODE
    assert CoreBinding("auto").engines(frozenset({0, 1})) == {1}


def test_lists_are_per_replica_and_cut_to_the_node():
    binding = CoreBinding("1|2-3|9", replicas=4)
    assert [binding.engine_cpus(i, NODE) for i in range(4)] == [{1}, {2, 3}, None, {1}]
    assert binding.engines(NODE) == {1, 2, 3}


def test_auto_leaves_an_accelerated_pool_alone_but_a_list_binds_it():
    gpu = TandemConfig.from_dict({"target": {"resources": {"GPU": 1, "CPU": 4}}})
    assert gpu.target.core_binding() == CoreBinding("nobind", cpus_per_replica=4)
    typed = TandemConfig.from_dict({"target": {"accelerator_type": "A100"}})
    assert typed.target.core_binding().spec == "nobind"
    env = {"VLLM_CPU_OMP_THREADS_BIND": "3"}
    listed = TandemConfig.from_dict({"target": {"resources": {"GPU": 1}, "env": env}})
    assert listed.target.core_binding() == CoreBinding("3")


def test_nobind_binds_nothing():
    binding = CoreBinding("nobind", replicas=2)
    assert binding.engine_cpus(0, NODE) is None and binding.engines(NODE) == frozenset()


def test_the_config_names_the_binding_and_a_bad_list_is_refused_naming_the_field():
    assert TandemConfig().target.core_binding() == CoreBinding("auto")
    env = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    config = TandemConfig.from_dict({"target": {"env": env, "replicas": 2}})
    assert config.target.core_binding() == CoreBinding("nobind", cpus_per_replica=1, replicas=2)
    absent = TandemConfig.from_dict({"target": {"env": {}, "resources": {"CPU": 2}}})
    assert absent.target.core_binding() == CoreBinding("auto", cpus_per_replica=2)  # as vLLM
    with pytest.raises(ConfigError, match="target.env: VLLM_CPU_OMP_THREADS_BIND: .*'1-x'"):
        TandemConfig.from_dict({"target": {"env": {"VLLM_CPU_OMP_THREADS_BIND": "1-x"}}})


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="binding needs two CPUs")
def test_keep_off_moves_threads_and_on_cpus_binds_one_for_a_while():
    """In a thread of its own, so that the test process keeps its mask."""
    seen = {}

    def probe():
        node = frozenset(os.sched_getaffinity(0))
        last = max(node)
        keep_off(CoreBinding("auto"))
        seen["off"] = os.sched_getaffinity(0)
        with on_cpus(frozenset({last})):
            seen["on"] = os.sched_getaffinity(0)
        seen["after"] = os.sched_getaffinity(0)
        seen["node"], seen["last"] = node, last

    before = {t: os.sched_getaffinity(t) for t in map(int, os.listdir("/proc/self/task"))}
    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    for tid, mask in before.items():  # keep_off moved the whole process: put it back
        with contextlib.suppress(OSError):  # a thread that has ended
            os.sched_setaffinity(tid, mask)
    assert seen["off"] == seen["node"] - {seen["last"]}
    assert seen["on"] == {seen["last"]}
    assert seen["after"] == seen["off"]


def test_compute_threads_are_the_ray_cpus_at_most_the_cpus_allowed():
    """In a thread of its own bound to one CPU; torch's count is put back."""
    import torch

    seen = {}
    before = torch.get_num_threads()

    def probe():
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        seen["one cpu"] = compute_threads(4), torch.get_num_threads()
        seen["fraction"] = compute_threads(0.5)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    torch.set_num_threads(before)
    assert seen == {"one cpu": (1, 1), "fraction": 1}
