"""The KubeRay manifests: valid against KubeRay's own CRD schemas (deploy/kuberay/crds), strictly
(an unknown field is an error), admitted by KubeRay's own validation rules, free of deprecated
fields, with ports named as KubeRay's Services expect and KubeRay's health checks kept; their
embedded tandem config loads, is safe to expose, and its pools fit the worker groups.
tests/service/test_kuberay_entrypoints.py runs their commands the way KubeRay runs them."""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

import jsonschema
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from tandem.cluster.config.deployment import TandemConfig
from tests.support import kuberay_rules
from tests.support.kuberay_pods import NODE_HEALTH, effective_probes, serve_backends
from tests.support.kuberay_rules import (
    KUBERAY,
    RAYCLUSTER,
    RAYSERVICES,
    SAMPLES,
    cluster_spec,
    documents,
    pod_templates,
    ray_manifest,
)
from tests.support.layout import REPO

pytestmark = pytest.mark.timeout(120)

SCHEMAS = KUBERAY / "crds" / "kuberay-v1.schema.yaml"
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The kind's v1 openAPIV3Schema, strict like `kubectl apply --validate=strict`: unknown
    fields are errors (the API server would silently drop them) except where the schema says
    x-kubernetes-preserve-unknown-fields."""
    vendored = yaml.load(SCHEMAS.read_text(), Loader)
    schema = {**vendored["kinds"][kind], "definitions": vendored["definitions"]}
    return _strict(copy.deepcopy(schema))


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


def validate(manifest: dict[str, Any]) -> None:
    """The CRD schema (metadata is the API server's own check) and KubeRay's rules."""
    body = {k: v for k, v in manifest.items() if k != "metadata"}
    jsonschema.Draft7Validator(crd_schema(manifest["kind"])).validate(body)
    assert kuberay_rules.errors(manifest) == []


def group_capacity(cluster: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Ray resources each worker group's node advertises, from its rayStartParams."""
    out = {}
    for group in cluster["workerGroupSpecs"]:
        params = group["rayStartParams"]
        resources = json.loads(json.loads(params.get("resources", '"{}"')))
        resources["CPU"] = float(params.get("num-cpus", 0))
        resources["GPU"] = float(params.get("num-gpus", 0))
        out[group["groupName"]] = resources
    return out


def tandem_config(name: str) -> TandemConfig:
    """The tandem config a sample runs: a RayCluster's ConfigMap, a RayService's app args."""
    docs = documents(name)
    if "ConfigMap" in docs:
        return TandemConfig.from_dict(yaml.safe_load(docs["ConfigMap"]["data"]["tandem.yaml"]))
    (app,) = yaml.safe_load(docs["RayService"]["spec"]["serveConfigV2"])["applications"]
    return TandemConfig.from_serve_args(app["args"])


def check_cluster(config: TandemConfig, cluster: dict[str, Any]) -> None:
    capacity = group_capacity(cluster)
    assert set(capacity) == {"targets", "drafters"}
    pools = {"targets": config.target, "drafters": config.speculation.drafters}
    for group, pool in pools.items():
        for resource, amount in pool.resources.items():
            assert capacity[group].get(resource, 0) >= amount, (group, resource)
        # Each pool asks for a resource the other group's nodes lack: targets and drafters
        # never land on each other's nodes.
        (other,) = set(pools) - {group}
        assert any(not capacity[other].get(r) for r in pool.resources), group
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        assert "livenessProbe" not in container  # KubeRay's raylet check
        assert container["resources"]["limits"]
    # Models are baked into the images (deploy/images): no shared volume is needed.
    assert config.models.dir == config.models.dir.__class__("/opt/tandem/models")
    assert config.models.source is None
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert "persistentVolumeClaim" not in json.dumps(cluster)
    ports = {p["name"]: p["containerPort"] for p in head["containers"][0]["ports"]}
    assert ports["metrics"] == 8080  # Ray's own (KubeRay's metrics-export-port default)
    assert ports["tandem-metrics"] == config.server.metrics_port
    config.check_serving(exposed=True)  # a token is set: safe on the network


@pytest.mark.parametrize("name", RAYSERVICES)
def test_rayservice_manifest(name):
    manifest = documents(name)["RayService"]
    validate(manifest)
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    (app,) = serve_config["applications"]
    assert app["import_path"] == "tandem.deploy.serve_app:app_builder"
    config = tandem_config(name)
    assert config.server.auth.token_env == "TANDEM_TOKEN"
    cluster = manifest["spec"]["rayClusterConfig"]
    check_cluster(config, cluster)
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports["serve"] == serve_config["http_options"]["port"]
    assert ports["serve-grpc"] == serve_config["grpc_options"]["port"]
    # KubeRay's Serve health checks (head proxy, app status) and probes stay on.
    assert "readinessProbe" not in head and "livenessProbe" not in head
    assert "command" not in head and "args" not in head  # KubeRay's own `ray start`


def test_raycluster_manifest():
    docs = documents(RAYCLUSTER)
    validate(docs["RayCluster"])
    config = tandem_config(RAYCLUSTER)
    assert config.ray.address == "auto"
    check_cluster(config, docs["RayCluster"]["spec"])
    (head,) = docs["RayCluster"]["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert head["readinessProbe"]["grpc"]["port"] == config.server.port
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports["serve-grpc"] == config.server.port
    assert "exec tandem serve --config /etc/tandem/tandem.yaml" in head["args"][0]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "rayClusterConfig", "headGroupSpec", "rayStartParam"), {}),  # a typo
        (("spec", "rayClusterConfig", "workerGroupSpecs", 0, "replicas"), "two"),
        (("spec", "rayClusterConfig", "workerGroupSpecs", 1, "groupName"), None),
        (("spec", "serviceUnhealthySecondThreshold"), 900),  # deprecated
        (("spec", "rayClusterConfig", "workerGroupSpecs", 0, "minReplicas"), 3),  # > max
        (("spec", "rayClusterConfig", "workerGroupSpecs", 1, "maxReplicas"), None),
        (("metadata", "name"), "Tandem_1"),  # not a DNS-1035 label
    ],
)
def test_validation_catches_mistakes(path, value):
    """The validation has teeth: each of these is refused (by the schema or KubeRay's rules)."""
    manifest = documents(RAYSERVICES[0])["RayService"]
    node = manifest
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    with pytest.raises((jsonschema.ValidationError, AssertionError)):
        validate(manifest)


def test_grpc_port_name_kuberay_does_not_expose_is_refused():
    manifest = documents(RAYSERVICES[0])["RayService"]
    (head,) = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "containers"
    ]
    head["ports"] = [p for p in head["ports"] if not p["name"].startswith("serve")]
    assert kuberay_rules.errors(manifest) == [
        "Please specify a port named 'serve' (or with the prefix 'serve-')"
    ]


def test_serve_config_file():
    """deploy/serve/local-cpu.yaml is a valid Serve config whose args load as a tandem config
    that sets a token (Serve's gRPC ingress listens on every interface)."""
    serve_config = yaml.safe_load((REPO / "deploy" / "serve" / "local-cpu.yaml").read_text())
    ServeDeploySchema.model_validate(serve_config)
    (app,) = serve_config["applications"]
    config = TandemConfig.from_serve_args(app["args"])
    assert config.server.metrics_port == 9100
    config.check_serving(exposed=True)


# The restricted Pod Security Standard (kubernetes.io/docs/concepts/security/pod-security-standards)
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


@pytest.mark.parametrize("name", SAMPLES)
def test_every_pod_meets_the_restricted_pod_security_level(name):
    """What the restricted level checks of a pod: not root, a seccomp profile, no privilege
    escalation, every capability dropped, no host namespaces, and only its volume types."""
    for pod in pod_templates(name):
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context.get("runAsUser", 1) != 0
        assert context["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost")
        assert not any(pod.get(key) for key in ("hostNetwork", "hostPID", "hostIPC"))
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, volume
        for container in pod["containers"]:
            own = container["securityContext"]
            assert own["allowPrivilegeEscalation"] is False and not own.get("privileged")
            assert own["capabilities"]["drop"] == ["ALL"]
            assert set(own["capabilities"].get("add", [])) <= {"NET_BIND_SERVICE"}
            assert own.get("runAsUser", 1) != 0


def test_the_raycluster_heads_startup_probe_outlasts_the_wait_for_nodes():
    """tandem serve may wait ray.wait_for_nodes_s for the worker pods and then load models: the
    startup probe gives that time plus 5 minutes, and liveness only starts after it."""
    docs = documents(RAYCLUSTER)
    config = yaml.safe_load(docs["ConfigMap"]["data"]["tandem.yaml"])
    (head,) = docs["RayCluster"]["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    startup = head["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= config["ray"]["wait_for_nodes_s"] + 300
    assert startup["grpc"] == head["livenessProbe"]["grpc"]  # the server answering at all


@pytest.mark.parametrize("name", SAMPLES)
def test_pods_are_placed_by_what_the_manifests_declare(name):
    """No node selector on a label no manifest or doc sets (such pods stay Pending): targets
    land by the `verifier` Ray resource their group advertises, drafters by the GPU they
    request (tolerating the GPU taint)."""
    for pod in pod_templates(name):
        assert "nodeSelector" not in pod and "affinity" not in pod


@pytest.mark.parametrize("name", SAMPLES)
def test_every_worker_is_ready_when_its_raylet_is_healthy(name):
    """Targets and drafters pods host no Serve replica, so Serve runs no proxy there, and the
    readiness probe KubeRay injects into RayService workers asks that proxy too: they would never
    be Ready (nor the RayCluster `Ready`). Each worker's readiness, as KubeRay builds the pod, is
    the raylet's health: the same check as its liveness probe, which KubeRay injects."""
    for group, probes in effective_probes(ray_manifest(name)).items():
        if group != "head":
            assert probes["readinessProbe"] == probes["livenessProbe"], group
            assert probes["readinessProbe"]["httpGet"]["path"] == NODE_HEALTH, group


def test_without_its_probe_a_rayservice_worker_waits_for_a_serve_proxy():
    """What the probes above replace: KubeRay's own for RayService workers checks Serve's proxy."""
    manifest = ray_manifest(RAYSERVICES[0])
    for group in cluster_spec(manifest)["workerGroupSpecs"]:
        del group["template"]["spec"]["containers"][0]["readinessProbe"]
    for group, probes in effective_probes(manifest).items():
        assert ("-/healthz" in json.dumps(probes["readinessProbe"])) == (group != "head"), group


@pytest.mark.parametrize("name", RAYSERVICES)
def test_serve_traffic_reaches_only_the_heads_proxy(name):
    """Ready workers get no Serve traffic: KubeRay's serve Service selects every RayService
    worker, but its ports target the head's by name, which no worker declares. Serve runs its
    proxy on the head only (HeadOnly), not on the node that happens to hold the app's replica."""
    manifest = ray_manifest(name)
    assert serve_backends(manifest) == {"head": ["serve", "serve-grpc"]}
    assert yaml.safe_load(manifest["spec"]["serveConfigV2"])["proxy_location"] == "HeadOnly"
    del manifest["spec"]["serveService"]  # KubeRay's own ports target numbers: every pod
    assert set(serve_backends(manifest)) == {"head", "targets", "drafters"}


@pytest.mark.parametrize("name", SAMPLES)
def test_each_group_runs_the_image_and_gpus_its_pool_needs(name):
    """Targets that ask for GPUs run the CUDA vLLM image (tandem-gpu), CPU targets vLLM's CPU
    build (tandem-cpu, as the head), drafters the drafter image; a pod gets as many GPUs from
    Kubernetes as its raylet advertises to Ray."""
    config = tandem_config(name)
    target_image = "tandem-gpu" if config.target.resources.get("GPU") else "tandem-cpu"
    expected = {"targets": target_image, "drafters": "tandem-drafter"}
    cluster = cluster_spec(ray_manifest(name))
    (head,) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert head["image"].split(":")[0] == "tandem-cpu"
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"].split(":")[0] == expected[group["groupName"]]
        gpus = container["resources"]["limits"].get("nvidia.com/gpu", "0")
        assert float(gpus) == float(group["rayStartParams"].get("num-gpus", 0))


@pytest.mark.parametrize("name", RAYSERVICES)
def test_the_front_door_stays_one_serve_replica(name):
    """Each TandemDeployment replica places target and drafter pools of its own (serve_app.py):
    more replicas, or Serve autoscaling, would multiply the pools, not the front door. No sample
    overrides the deployment's options (docs/deployment.md, "KubeRay": what scaling the
    front door needs first)."""
    (app,) = yaml.safe_load(ray_manifest(name)["spec"]["serveConfigV2"])["applications"]
    assert "deployments" not in app  # serve_app.py's num_replicas=1 stands
