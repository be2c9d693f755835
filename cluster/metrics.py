"""Prometheus metrics of one front door (the gRPC server or a Serve replica).

Counters are read from the coordinator at scrape time, so there is one source of truth (the
same figures GetStats reports); latency histograms are observed as requests finish. The
speculation counters carry vLLM's own names (vllm/v1/spec_decode/metrics.py), so dashboards
built for vLLM's in-process speculation read tandem's remote drafting unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import ray
from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tandem.cluster.figures import Breakdown, DrafterFigures

if TYPE_CHECKING:
    from tandem.cluster.coordinator import Chunk, Coordinator

log = logging.getLogger("tandem.metrics")

# Generation on the CPU is slow: buckets reach tens of seconds for a first token under load.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TPOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2.5)
REPLICA_STATS_TIMEOUT_S = 2.0


class Metrics:
    """A registry with tandem's metrics, fed by `observe` and by a collector over `coordinator`."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.registry = CollectorRegistry()
        self.ttft = Histogram(
            "tandem_time_to_first_token_seconds",
            "Time from admission to the first output token.",
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.tpot = Histogram(
            "tandem_time_per_output_token_seconds",
            "Mean time per output token after the first, per request.",
            buckets=TPOT_BUCKETS,
            registry=self.registry,
        )
        self.latency = Histogram(
            "tandem_request_latency_seconds",
            "Time from admission to the last token.",
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_CoordinatorCollector(coordinator))

    def observe(self, last: Chunk) -> None:
        """Record a finished request from its last chunk."""
        if last.completion_tokens:
            self.ttft.observe(last.time_to_first_token_s)
            self.latency.observe(last.total_s)
        if last.completion_tokens > 1:
            self.tpot.observe(last.time_per_output_token_s)

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics on host:port in a background thread; returns the bound port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        bound = server.server_address[1]
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound


def start_metrics(coordinator: Coordinator) -> Metrics | None:
    """Attach metrics to the coordinator and serve them, when server.metrics_port is set."""
    server = coordinator.config.server
    if not server.metrics_port:
        return None
    metrics = Metrics(coordinator)
    coordinator.on_finished.append(metrics.observe)
    metrics.serve(server.metrics_host, server.metrics_port)
    return metrics


class _CoordinatorCollector(Collector):
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    def collect(self) -> Iterator[Metric]:
        c = self.coordinator.counters
        requests = CounterMetricFamily(
            "tandem_requests", "Requests by outcome.", labels=["outcome"]
        )
        for outcome, value in (
            ("started", c.requests_total),
            ("finished", c.requests_finished),
            ("aborted", c.requests_aborted),
            ("failed", c.requests_failed),
            ("rejected", c.requests_rejected),
        ):
            requests.add_metric([outcome], value)
        yield requests
        yield GaugeMetricFamily(
            "tandem_requests_in_flight", "Requests running now.", len(self.coordinator.running)
        )
        yield CounterMetricFamily("tandem_prompt_tokens", "Prompt tokens.", c.prompt_tokens)
        yield CounterMetricFamily(
            "tandem_generation_tokens", "Generated tokens.", c.generated_tokens
        )
        spec = c.speculation
        yield CounterMetricFamily(
            "vllm:spec_decode_num_drafts", "Verification rounds that carried a draft.", spec.drafts
        )
        yield CounterMetricFamily(
            "vllm:spec_decode_num_draft_tokens", "Draft tokens verified.", spec.draft_tokens
        )
        yield CounterMetricFamily(
            "vllm:spec_decode_num_accepted_tokens", "Draft tokens accepted.", spec.accepted_tokens
        )
        per_pos = CounterMetricFamily(
            "vllm:spec_decode_num_accepted_tokens_per_pos",
            "Draft tokens accepted, by position in the draft.",
            labels=["position"],
        )
        for position, value in enumerate(spec.accepted_per_pos):
            per_pos.add_metric([str(position)], value)
        yield per_pos
        yield from self._replica_metrics()

    def _replica_metrics(self) -> Iterator[Metric]:
        """Drafter figures kept by the target replicas' speculation sessions."""
        actors = self.coordinator.actors
        try:
            replicas = ray.get([a.stats.remote() for a in actors], timeout=REPLICA_STATS_TIMEOUT_S)
        except Exception as exc:  # a scrape must not fail because one replica is slow
            log.warning("replica stats unavailable for metrics: %s", exc)
            return
        drafters = DrafterFigures.of(replicas)
        yield CounterMetricFamily(
            "tandem_drafter_round_trips", "Engine steps that called a drafter.", drafters.steps
        )
        yield CounterMetricFamily(
            "tandem_drafter_round_trip_seconds",
            "Drafter round-trip time, summed.",
            drafters.rtt_total_s,
        )
        yield CounterMetricFamily(
            "tandem_drafter_failures",
            "Steps whose drafter failed or missed its time budget.",
            drafters.failures,
        )
        yield CounterMetricFamily(
            "tandem_spec_cache_hits",
            "Drafts served from the speculation cache.",
            drafters.cache_hits,
        )
        yield from _breakdown_metrics(Breakdown.of(replicas, self.coordinator.counters.delivery))


WIRE = {"drafter_messages", "drafter_bytes_sent", "drafter_bytes_received"}


def _breakdown_metrics(breakdown: Breakdown) -> Iterator[Metric]:
    """GetStats' breakdown: seconds by part of the serving path, and what they divide by."""
    seconds = CounterMetricFamily(
        "tandem_serving_seconds",
        "Time by part of the serving path (GetStats breakdown): step is vLLM's engine step, "
        "made of schedule, forward, proposer (which includes drafter_rtt and predraft_wait) "
        "and output; then between_steps, handoff, ray_stream, coordinator.",
        labels=["part"],
    )
    events = CounterMetricFamily(
        "tandem_serving_events",
        "What the serving times divide by: engine steps, tokens, output deliveries, batches, "
        "chunks.",
        labels=["event"],
    )
    for name, value in dataclasses.asdict(breakdown).items():
        if name.endswith("_s"):
            seconds.add_metric([name.removesuffix("_s")], value)
        elif name not in WIRE:
            events.add_metric([name], value)
    yield seconds
    yield events
    yield CounterMetricFamily(
        "tandem_drafter_wire_messages",
        "Messages the proposers sent their drafters (wire format).",
        breakdown.drafter_messages,
    )
    wire = CounterMetricFamily(
        "tandem_drafter_wire_bytes",
        "Bytes of the proposer-drafter messages, by direction.",
        labels=["direction"],
    )
    wire.add_metric(["sent"], breakdown.drafter_bytes_sent)
    wire.add_metric(["received"], breakdown.drafter_bytes_received)
    yield wire
