"""KubeRay's own admission rules that can be checked without a cluster, from
ray-operator/controllers/ray/utils/validation.go and common/service.go at the commit of the
vendored schemas (deploy/kuberay/crds/SOURCE.md), plus the fields its API types mark
`// Deprecated:`. Each rule returns KubeRay's message, so a failure reads like the operator's."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from .layout import REPO

KUBERAY = REPO / "deploy" / "kuberay"
# Each sample in a folder of its own with its kustomization (kustomize loads only files under it).
RAYCLUSTER = "raycluster/raycluster.yaml"
RAYSERVICES = ("rayservice/rayservice.yaml", "rayservice-gpu/rayservice-gpu.yaml")
SAMPLES = (RAYCLUSTER, *RAYSERVICES)


def documents(name: str) -> dict[str, dict[str, Any]]:
    """The manifests of deploy/kuberay/<name>, by kind."""
    docs = yaml.safe_load_all((KUBERAY / name).read_text())
    return {doc["kind"]: json.loads(json.dumps(doc)) for doc in docs}  # YAML anchors resolved


def ray_manifest(name: str) -> dict[str, Any]:
    """deploy/kuberay/<name>'s RayCluster or RayService."""
    return next(d for d in documents(name).values() if d["kind"].startswith("Ray"))


def cluster_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    """The RayCluster spec of a RayCluster or RayService manifest."""
    return manifest["spec"].get("rayClusterConfig", manifest["spec"])


def pod_templates(name: str) -> list[dict[str, Any]]:
    """The pod specs of deploy/kuberay/<name>'s Ray cluster: the head's first, then each worker
    group's (a RayService's come from its rayClusterConfig)."""
    cluster = cluster_spec(ray_manifest(name))
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [group["template"]["spec"] for group in groups]


MAX_NAME_LENGTH = {"RayCluster": 63, "RayService": 63}  # utils.MaxRay{Cluster,Service}NameLength
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DEPRECATED = {  # ray-operator/apis/ray/v1/rayservice_types.go
    "RayService": ("serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"),
}
RAY_START_RESOURCES = ("num-cpus", "num-gpus", "memory", "resources")
RAYSERVICE_UPGRADES = ("NewClusterWithIncrementalUpgrade", "NewCluster", "None")


def errors(manifest: dict[str, Any]) -> list[str]:
    """KubeRay's refusals of a RayCluster or RayService manifest (empty: it admits it)."""
    kind, spec = manifest["kind"], manifest["spec"]
    out = _metadata(kind, manifest.get("metadata", {}))
    out += [f"spec.{f} is deprecated" for f in DEPRECATED.get(kind, ()) if f in spec]
    if kind == "RayService":
        cluster = spec["rayClusterConfig"]
        out += cluster_spec_errors(cluster)
        if cluster["headGroupSpec"].get("headService", {}).get("metadata", {}).get("name"):
            out.append(
                "spec.rayClusterConfig.headGroupSpec.headService.metadata.name should not be set"
            )
        upgrade = spec.get("upgradeStrategy", {}).get("type")
        if upgrade is not None and upgrade not in RAYSERVICE_UPGRADES:
            out.append(f"Spec.UpgradeStrategy.Type value {upgrade} is invalid")
        if spec.get("rayClusterDeletionDelaySeconds", 0) < 0:
            out.append("Spec.RayClusterDeletionDelaySeconds should be a non-negative integer")
        out += _serve_ports(cluster)
    else:
        out += cluster_spec_errors(spec)
    return out


def _metadata(kind: str, metadata: dict[str, Any]) -> list[str]:
    name = metadata.get("name", "")
    out = []
    if len(name) > MAX_NAME_LENGTH[kind]:
        out.append(f"{kind} name should be no more than {MAX_NAME_LENGTH[kind]} characters")
    if not DNS1035.match(name):
        out.append(f"{kind} name should be a valid DNS1035 label")
    return out


def cluster_spec_errors(spec: dict[str, Any]) -> list[str]:
    """ValidateRayClusterSpec, the rules that need no feature gate or cluster state."""
    head = spec["headGroupSpec"]
    out = []
    if not head["template"]["spec"].get("containers"):
        out.append("headGroupSpec should have at least one container")
    out += _group("Head", head)
    autoscaling = spec.get("enableInTreeAutoscaling", False)
    names = [g.get("groupName") for g in spec.get("workerGroupSpecs", [])]
    if len(set(names)) != len(names):
        out.append("worker group names must be unique")
    for group in spec.get("workerGroupSpecs", []):
        name = group.get("groupName")
        if not group["template"]["spec"].get("containers"):
            out.append("workerGroupSpec should have at least one container")
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (low is None or high is None):
            out.append(f"worker group {name} must set both minReplicas and maxReplicas")
        if low is not None and low < 0 or high is not None and high < 0:
            out.append(f"worker group {name} has negative minReplicas or maxReplicas")
        if low is not None and high is not None and low > high:
            out.append(f"worker group {name} has minReplicas {low} greater than maxReplicas {high}")
        out += _group(name, group)
    return out


def _group(name: str, group: dict[str, Any]) -> list[str]:
    params = group.get("rayStartParams", {})
    out = []
    if any(params.get(k) for k in RAY_START_RESOURCES) and group.get("resources"):
        out.append(
            "resource fields should not be set in both rayStartParams and Resources "
            f"for {name} group"
        )
    if "labels" in params:
        out.append(f"rayStartParams['labels'] is not supported for {name} group")
    for key, value in group.get("labels", {}).items():
        if not LABEL_KEY.match(key) or not LABEL_VALUE.match(str(value)):
            out.append(f"invalid label {key}={value} for {name} group")
    return out


def _serve_ports(cluster: dict[str, Any]) -> list[str]:
    """BuildServeService: the serve Service exposes head ports named `serve` or `serve-*`."""
    (head, *_) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    names = [p.get("name", "") for p in head.get("ports", [])]
    if not any(n == "serve" or n.startswith("serve-") for n in names):
        return ["Please specify a port named 'serve' (or with the prefix 'serve-')"]
    return []
