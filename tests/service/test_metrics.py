"""Prometheus metrics of the real service, scraped over HTTP after a few requests with
speculation on: request and token counters, latency histograms, vLLM's spec-decode counters."""

from __future__ import annotations

import grpc
import pytest

from tandem.client import TandemClient
from tests.support.prometheus import scrape
from tests.support.services import SPECULATING

# On the shared service, after other modules' requests: every figure is the change across this
# test's own requests (pytest runs one test at a time).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), pytest.mark.uses_service(SPECULATING)]

# Repetitive text gives the n-gram drafter matches, so drafts are accepted.
PROMPT = "Repeat exactly, five times: red green blue red green blue red green blue."


def metrics_at(port: int) -> dict[tuple[str, tuple], float]:
    return scrape(f"http://127.0.0.1:{port}/metrics")


def change(before: dict, after: dict) -> dict[tuple[str, tuple], float]:
    """How much each sample moved (a sample first seen afterwards moved from 0)."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def test_metrics_move_with_requests(services):
    service = services.get(SPECULATING)  # mode auto by default
    port = service.config["server"]["metrics_port"]
    before = metrics_at(port)
    with TandemClient(service.address, timeout=120) as client:
        results = [
            client.generate(PROMPT, temperature=0, max_tokens=40, ignore_eos=True) for _ in range(2)
        ]
        with pytest.raises(grpc.RpcError):  # a refusal is counted too
            client.generate(PROMPT, max_tokens=10**6)
    m = change(before, metrics_at(port))

    generated = sum(r.usage.completion_tokens for r in results)
    drafted = sum(r.speculation.draft_tokens for r in results)
    accepted = sum(r.speculation.accepted_tokens for r in results)
    assert m[("tandem_requests_total", (("outcome", "finished"),))] == 2
    assert m[("tandem_requests_total", (("outcome", "rejected"),))] == 1
    assert m[("tandem_generation_tokens_total", ())] == generated == 80
    assert m[("tandem_prompt_tokens_total", ())] == sum(r.usage.prompt_tokens for r in results)
    assert m[("tandem_time_to_first_token_seconds_count", ())] == 2
    assert m[("tandem_time_per_output_token_seconds_count", ())] == 2
    ttft = m[("tandem_time_to_first_token_seconds_sum", ())]
    assert 0 < ttft <= m[("tandem_request_latency_seconds_sum", ())]
    assert m[("tandem_request_latency_seconds_count", ())] == 2

    assert accepted > 0, "the drafters found nothing to accept"
    vllm = (("engine", "0"), ("model_name", "smollm2-135m-instruct"))  # vLLM's labels
    assert m[("vllm:spec_decode_num_draft_tokens_total", vllm)] == drafted
    assert m[("vllm:spec_decode_num_accepted_tokens_total", vllm)] == accepted
    assert 0 < m[("vllm:spec_decode_num_drafts_total", vllm)] <= drafted
    assert m[("vllm:generation_tokens_total", vllm)] == generated
    reason = (vllm[0], ("finished_reason", "length"), vllm[1])
    assert m[("vllm:request_success_total", reason)] == 2
    per_pos = [
        m[("vllm:spec_decode_num_accepted_tokens_per_pos_total", (*vllm, ("position", str(p))))]
        for p in range(4)
    ]
    assert sum(per_pos) == accepted
    # by draft source: the requests' own per-source figures, summed
    for name, field in (("draft", "draft_tokens"), ("accepted", "accepted_tokens")):
        exported = {
            dict(labels)["source"]: value
            for (metric, labels), value in m.items()
            if metric == f"tandem_source_{name}_tokens_total" and value
        }
        reported = {}
        for result in results:
            for source, counts in result.speculation.sources.items():
                if getattr(counts, field):
                    reported[source] = reported.get(source, 0) + getattr(counts, field)
        assert exported == reported and sum(exported.values()) > 0
        if field == "draft_tokens":
            assert sum(reported.values()) == drafted
    assert per_pos == sorted(per_pos, reverse=True)  # position p needs p-1 accepted before it
    assert m[("tandem_drafter_round_trips_total", ())] > 0
    assert m[("tandem_drafter_round_trip_seconds_total", ())] > 0
    assert m[("tandem_drafter_failures_total", ())] == 0
    hits = sum(r.speculation.cache_hits for r in results)
    assert m[("tandem_spec_cache_hits_total", ())] == hits > 0  # pipelined by default


def test_the_grafana_dashboard_names_only_metrics_the_service_exports(services):
    """Every metric a panel of deploy/monitoring/grafana-dashboard.json queries is one this
    service's /metrics shows (a histogram's _bucket series included)."""
    import json
    import re

    from tests.support.layout import REPO

    service = services.get(SPECULATING)
    exported = {name for name, _ in metrics_at(service.config["server"]["metrics_port"])}
    dashboard = json.loads((REPO / "deploy" / "monitoring" / "grafana-dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(?:tandem_|vllm:)[A-Za-z0-9_:]+", target["expr"])
    }
    assert len(queried) >= 12 and queried <= exported, sorted(queried - exported)


def test_vllms_scheduler_figures_per_replica(services):
    """The engine's own stat records reach GetStats (ReplicaStats) and Prometheus under vLLM's
    names, per replica: the KV cache's use, the queue, preemptions, the prefix cache."""
    service = services.get(SPECULATING)
    with TandemClient(service.address, timeout=120) as client:
        for _ in range(2):  # the same prompt twice: its full blocks (128 tokens on CPU) are cached
            client.generate(PROMPT * 12, temperature=0, max_tokens=4)
        (replica,) = client.stats().replicas
    assert 0 <= replica.kv_cache_usage <= 1 and replica.requests_waiting == 0
    assert replica.prefix_cache_queries > 0 and replica.prefix_cache_hits > 0
    assert replica.preemptions >= 0
    m = metrics_at(service.config["server"]["metrics_port"])
    labels = (("engine", "0"), ("model_name", "smollm2-135m-instruct"))
    assert m[("vllm:prefix_cache_queries_total", labels)] == replica.prefix_cache_queries
    assert m[("vllm:prefix_cache_hits_total", labels)] == replica.prefix_cache_hits
    assert m[("vllm:num_preemptions_total", labels)] == replica.preemptions
    assert m[("vllm:num_requests_waiting", labels)] == 0
    assert 0 <= m[("vllm:kv_cache_usage_perc", labels)] <= 1
