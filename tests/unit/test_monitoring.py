"""deploy/monitoring: the PodMonitor finds the pods that serve tandem's metrics in every KubeRay
sample. (The Grafana dashboard's queries are checked against a live scrape:
tests/service/test_metrics.py.)"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.support.kuberay_rules import KUBERAY, SAMPLES, pod_templates
from tests.support.layout import REPO

pytestmark = pytest.mark.timeout(60)

MONITORING = REPO / "deploy" / "monitoring"


def test_the_podmonitor_scrapes_the_head_pods_tandem_metrics_port():
    monitor = yaml.safe_load((MONITORING / "podmonitor.yaml").read_text())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    # KubeRay labels head pods ray.io/node-type: head (ray-operator utils.RayNodeTypeLabelKey).
    assert monitor["spec"]["selector"] == {"matchLabels": {"ray.io/node-type": "head"}}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    for name in SAMPLES:
        (head,) = pod_templates(name)[0]["containers"]
        ports = {p["name"]: p["containerPort"] for p in head["ports"]}
        assert endpoint["port"] in ports, name
        # tandem's config in the manifest (inline, or a ConfigMap's YAML) listens there
        text = (KUBERAY / name).read_text()
        assert f"metrics_port: {ports[endpoint['port']]}" in text, name


def test_the_dashboard_is_a_grafana_dashboard_on_a_prometheus_variable():
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]
    (variable,) = dashboard["templating"]["list"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
