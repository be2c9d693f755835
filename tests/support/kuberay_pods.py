"""What KubeRay makes of a manifest's pods, where the tests need it: the health probes it injects
(ray-operator/controllers/ray/common/pod.go, initLivenessAndReadinessProbe) and which pods its
serve Service sends traffic to (common/service.go, BuildServeService, with Kubernetes' rule for
a Service's target port), at the commit of the vendored schemas (deploy/kuberay/crds/SOURCE.md).
Modelled for Ray 2.53 and newer (the samples' rayVersion), where KubeRay's node check is one
HTTP endpoint."""

from __future__ import annotations

from typing import Any

from .kuberay_rules import cluster_spec

AGENT_PORT = 52365  # utils.DefaultDashboardAgentListenPort
SERVE_PORT = 8000  # utils.DefaultServingPort, for the container port named `serve`
NODE_HEALTH = "/api/healthz"  # utils.RayNodeHealthPath: the raylet (and, on the head, the GCS)
UNIFIED_CHECK_SINCE = (2, 53)  # supportsUnifiedHealthCheck
WGET = "wget --tries 1 -T {timeout} -q -O- http://localhost:{port}/{path} | grep success"


def _groups(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cluster = cluster_spec(manifest)
    workers = [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]
    return [("head", cluster["headGroupSpec"]), *workers]


def effective_probes(manifest: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Each group's Ray container probes once KubeRay built the pod: {group: {"readinessProbe":
    action, "livenessProbe": action}}, an action being the probe's httpGet or exec. A probe the
    manifest sets is kept; a missing one is KubeRay's node check, and a RayService worker's
    missing readiness probe also asks Serve's proxy (/-/healthz on the `serve` port)."""
    cluster = cluster_spec(manifest)
    version = tuple(int(part) for part in cluster["rayVersion"].split(".")[:2])
    assert version >= UNIFIED_CHECK_SINCE, "modelled for Ray 2.53+ only"
    out = {}
    for name, group in _groups(manifest):
        (container, *_) = group["template"]["spec"]["containers"]
        agent = int(group.get("rayStartParams", {}).get("dashboard-agent-listen-port", AGENT_PORT))
        node_check = {"httpGet": {"path": NODE_HEALTH, "port": agent}}
        probes = {}
        for kind in ("livenessProbe", "readinessProbe"):
            probe = container.get(kind)
            probes[kind] = _action(probe) if probe else node_check
        rayservice_worker = manifest["kind"] == "RayService" and name != "head"
        if rayservice_worker and "readinessProbe" not in container:
            named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
            serve = named.get("serve", SERVE_PORT)
            checks = [
                WGET.format(timeout=2, port=agent, path="api/local_raylet_healthz"),
                WGET.format(timeout=10, port=serve, path="-/healthz"),
            ]
            probes["readinessProbe"] = {"exec": {"command": ["bash", "-c", " && ".join(checks)]}}
        out[name] = probes
    return out


def _action(probe: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in probe.items() if k in ("httpGet", "exec", "grpc", "tcpSocket")}


def serve_backends(manifest: dict[str, Any]) -> dict[str, list[str]]:
    """The groups whose Ready pods a RayService's serve Service sends traffic to, with the
    Service ports each gets. KubeRay labels every RayService worker for that Service (and the
    head while its proxy is healthy); its ports are the head's `serve`/`serve-*` ports, or the
    manifest's serveService ports of the same name. A port without targetPort targets the same
    number on every selected pod; a targetPort that is a name only the pods whose container
    declares a port of that name (Kubernetes leaves the others out of the endpoints)."""
    cluster = cluster_spec(manifest)
    (head, *_) = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    service = manifest["spec"].get("serveService", {}).get("spec", {})
    custom = {p["name"]: p for p in service.get("ports", [])}
    ports = [
        custom.get(p["name"], {"name": p["name"], "port": p["containerPort"]})
        for p in head.get("ports", [])
        if p["name"] == "serve" or p["name"].startswith("serve-")
    ]
    out = {}
    for name, group in _groups(manifest):
        (container, *_) = group["template"]["spec"]["containers"]
        declared = {p.get("name") for p in container.get("ports", [])}
        reached = [
            port["name"]
            for port in ports
            if not isinstance(port.get("targetPort"), str) or port["targetPort"] in declared
        ]
        if reached:
            out[name] = reached
    return out
