"""The KubeRay manifests: valid against KubeRay's own CRD schemas (vendored in
deploy/kuberay/crds), with an embedded tandem config that tandem's loader accepts and whose
pools fit the worker groups the manifest provides."""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

import jsonschema
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from tandem.cluster.config import TandemConfig

from .conftest import REPO

pytestmark = pytest.mark.timeout(120)

KUBERAY = REPO / "deploy" / "kuberay"
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are ~1 MB each


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The CRD's openAPIV3Schema, strict like `kubectl apply --validate=strict`: unknown fields
    are errors (the API server would silently drop them) except where the schema says
    x-kubernetes-preserve-unknown-fields."""
    crd = yaml.load((KUBERAY / "crds" / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))


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


def documents(name: str) -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((KUBERAY / name).read_text())
    return {doc["kind"]: json.loads(json.dumps(doc)) for doc in docs}  # YAML anchors resolved


def validate(manifest: dict[str, Any]) -> None:
    # metadata is checked by the API server itself, not by the CRD schema.
    body = {k: v for k, v in manifest.items() if k != "metadata"}
    jsonschema.Draft7Validator(crd_schema(manifest["kind"])).validate(body)


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


def check_pools_fit(config: TandemConfig, cluster: dict[str, Any]) -> None:
    capacity = group_capacity(cluster)
    assert set(capacity) == {"targets", "drafters"}
    for group, pool in (("targets", config.target), ("drafters", config.speculation.drafters)):
        for resource, amount in pool.resources.items():
            assert capacity[group].get(resource, 0) >= amount, (group, resource)
    # Targets and drafters land on different accelerator kinds, not on each other's nodes.
    assert "verifier" in config.target.resources and "verifier" not in capacity["drafters"]
    assert config.speculation.drafters.resources.get("GPU") and not capacity["targets"]["GPU"]
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        assert container["readinessProbe"] and container["livenessProbe"]
        assert container["resources"]["limits"]


def test_rayservice_manifest():
    manifest = documents("rayservice.yaml")["RayService"]
    validate(manifest)
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    (app,) = serve_config["applications"]
    assert app["import_path"] == "tandem.deploy.serve_app:app_builder"
    config = TandemConfig.from_serve_args(app["args"])
    assert config.server.auth.token_env == "TANDEM_TOKEN"
    assert config.server.metrics_port == 9100
    check_pools_fit(config, manifest["spec"]["rayClusterConfig"])


def test_raycluster_manifest():
    docs = documents("raycluster.yaml")
    validate(docs["RayCluster"])
    config = TandemConfig.from_dict(yaml.safe_load(docs["ConfigMap"]["data"]["tandem.yaml"]))
    assert config.ray.address == "auto"
    head = docs["RayCluster"]["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["readinessProbe"]["grpc"]["port"] == config.server.port
    assert "tandem serve --config /etc/tandem/tandem.yaml" in head["args"][0]
    check_pools_fit(config, docs["RayCluster"]["spec"])


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "rayClusterConfig", "headGroupSpec", "rayStartParam"), {}),  # a typo
        (("spec", "rayClusterConfig", "workerGroupSpecs", 0, "replicas"), "two"),
        (("spec", "rayClusterConfig", "workerGroupSpecs", 1, "groupName"), None),
    ],
)
def test_schema_catches_mistakes(path, value):
    """The validation has teeth: each of these is refused."""
    manifest = documents("rayservice.yaml")["RayService"]
    node = manifest
    for key in path[:-1]:
        node = node[key]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate(manifest)


def test_serve_config_file():
    """deploy/serve/local-cpu.yaml is a valid Serve config whose args load as a tandem config."""
    serve_config = yaml.safe_load((REPO / "deploy" / "serve" / "local-cpu.yaml").read_text())
    ServeDeploySchema.model_validate(serve_config)
    (app,) = serve_config["applications"]
    assert TandemConfig.from_serve_args(app["args"]).server.metrics_port == 9100
