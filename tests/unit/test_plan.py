"""The placement planner (cluster/control/placement.py `plan`) as plain logic on described nodes;
the same check on a real multi-node cluster is in tests/service/test_placement.py."""

from __future__ import annotations

import pytest

from tandem.cluster.config.deployment import TandemConfig
from tandem.cluster.control.placement import Node, PlacementError, PoolRequest, plan
from tandem.cluster.control.preview import pool_requests

pytestmark = pytest.mark.timeout(120)

VERIFIER = Node("verifier-node", "10.0.0.1", {"CPU": 4.0, "verifier": 1.0})
ACCEL = Node("accel-node", "10.0.0.2", {"CPU": 2.0, "accelerator": 2.0, "accelerator_type:X": 1.0})


def where(assignments):
    return [(a.pool, a.replica, a.node.node_id) for a in assignments]


def test_dovetail_config_lands_target_on_cpu_and_drafters_on_the_accelerator():
    config = TandemConfig.from_dict(
        {
            "target": {"resources": {"CPU": 2, "verifier": 1}},
            "speculation": {
                "drafters": {
                    "replicas": 2,
                    "resources": {"CPU": 1, "accelerator": 1},
                    "accelerator_type": "X",
                    "strategy": "PACK",  # the old spelling still works
                }
            },
        }
    )
    assert config.speculation.drafters.strategy == "pack"
    assert config.speculation.drafters.bundle()["accelerator_type:X"] == pytest.approx(0.001)
    assert where(plan(pool_requests(config), [VERIFIER, ACCEL])) == [
        ("drafters", 0, "accel-node"),
        ("drafters", 1, "accel-node"),
        ("target", 0, "verifier-node"),
    ]


def test_strategies_choose_nodes():
    nodes = [Node("a", "", {"CPU": 4.0}), Node("b", "", {"CPU": 4.0})]
    spread = PoolRequest("p", {"CPU": 1.0}, 2, "spread")
    pack = PoolRequest("p", {"CPU": 1.0}, 2, "pack")
    assert {a.node.node_id for a in plan([spread], nodes)} == {"a", "b"}
    assert {a.node.node_id for a in plan([pack], nodes)} == {"a"}
    with pytest.raises(PlacementError, match="strict_spread needs 3 nodes"):
        plan([PoolRequest("p", {"CPU": 1.0}, 3, "strict_spread")], nodes)


def test_a_pool_that_does_not_fit_beside_earlier_ones_names_the_resource():
    drafters = PoolRequest("drafters", {"CPU": 1.0, "accelerator": 2.0}, 1, "spread")
    more = PoolRequest("target", {"CPU": 1.0, "accelerator": 1.0}, 1, "pack")
    with pytest.raises(PlacementError, match=r"target: replica 0 of 1 .*accelerator=1"):
        plan([drafters, more], [VERIFIER, ACCEL])
    with pytest.raises(PlacementError, match="needs GPU=1 but the largest node offers 0"):
        plan([PoolRequest("target", {"GPU": 1.0}, 1, "pack")], [VERIFIER])


def test_devices_need_a_matching_accelerator_resource():
    from tandem.cluster.config.errors import ConfigError

    with pytest.raises(ConfigError, match="target: devices=2 needs an accelerator resource"):
        TandemConfig.from_dict({"target": {"devices": 2, "resources": {"CPU": 1}}})
    ok = TandemConfig.from_dict({"target": {"devices": 2, "resources": {"CPU": 1, "GPU": 2}}})
    assert ok.target.devices == 2


def test_plan_describes_the_embedded_node_without_starting_it(capsys, tmp_path):
    from tandem.cli import main

    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert "node embedded (127.0.0.1, not started)" in out
    assert "drafters[0]  on node embedded" in out and "target[0]  on node embedded" in out
    path = tmp_path / "c.yaml"
    path.write_text("ray: {num_cpus: 1}\n")  # two pools of CPU=1 on one CPU
    assert main(["plan", "--config", str(path)]) == 2
    assert "target: replica 0 of 1 does not fit (pack): it needs CPU=1" in capsys.readouterr().err
