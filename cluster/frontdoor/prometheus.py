"""Prometheus metrics of one front door (the gRPC server or a Serve replica).

Counters are read from the coordinator at scrape time, so there is one source of truth (the
same figures GetStats reports, named in tandem.cluster.telemetry.figure_tables); latency
histograms are observed as requests finish. The
speculation counters carry vLLM's own names (vllm/v1/spec_decode/metrics.py), so dashboards
built for vLLM's in-process speculation read tandem's remote drafting unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import ray
from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from tandem.cluster.frontdoor.auth import authorized
from tandem.cluster.telemetry.figure_tables import (
    DRAFTERS,
    LEARNING,
    SPECULATION,
    metric_values,
)
from tandem.cluster.telemetry.figures import Breakdown, DrafterFigures

if TYPE_CHECKING:
    from tandem.cluster.frontdoor.coordinator import Chunk, Coordinator

log = logging.getLogger("tandem.metrics")

# Generation on the CPU is slow: buckets reach tens of seconds for a first token under load.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TPOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2.5)
REPLICA_STATS_TIMEOUT_S = 2.0


# vLLM's request histograms (vllm/v1/metrics/loggers.py), observed per finished request:
# (name, help, buckets, value of the last chunk). A vLLM Grafana dashboard reads them unchanged.
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
VLLM_HISTOGRAMS = (
    (
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        TTFT_BUCKETS,
        lambda c: c.time_to_first_token_s,
    ),
    (
        "vllm:request_time_per_output_token_seconds",
        "Histogram of time_per_output_token_seconds per request.",
        TPOT_BUCKETS,
        lambda c: c.time_per_output_token_s,
    ),
    (
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        TTFT_BUCKETS,
        lambda c: c.total_s,
    ),
    (
        "vllm:request_prompt_tokens",
        "Number of prefill tokens processed.",
        TOKEN_BUCKETS,
        lambda c: c.prompt_tokens,
    ),
    (
        "vllm:request_generation_tokens",
        "Number of generation tokens processed.",
        TOKEN_BUCKETS,
        lambda c: c.completion_tokens,
    ),
)
# vLLM labels every series with the model and the engine index; tandem's front door is one.
VLLM_LABELS = ("model_name", "engine")
# The metric family of a figure's kind (figure_tables.Figure.kind).
FAMILIES = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}


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
        labels = vllm_labels(coordinator)
        self.vllm = [
            (
                Histogram(name, doc, VLLM_LABELS, buckets=buckets, registry=self.registry).labels(
                    *labels
                ),
                value,
            )
            for name, doc, buckets, value in VLLM_HISTOGRAMS
        ]
        self.registry.register(_CoordinatorCollector(coordinator))

    def observe(self, last: Chunk) -> None:
        """Record a finished request from its last chunk."""
        if last.completion_tokens:
            self.ttft.observe(last.time_to_first_token_s)
            self.latency.observe(last.total_s)
        if last.completion_tokens > 1:
            self.tpot.observe(last.time_per_output_token_s)
        for histogram, value in self.vllm:
            histogram.observe(value(last))

    def serve(self, host: str, port: int, token: str | None = None) -> int:
        """Expose /metrics on host:port in a background thread; returns the bound port. With a
        token, scrapes must send it as a bearer token (else 401)."""
        app = make_wsgi_app(self.registry)
        if token is not None:
            app = _bearer_only(app, token)
        server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        bound = server.server_address[1]
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


def _bearer_only(app: Any, token: str) -> Any:
    """A WSGI app that answers 401 unless the request carries the bearer token."""

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        header = environ.get("HTTP_AUTHORIZATION")  # repeated headers arrive comma-joined
        if authorized([header] if header is not None else [], token):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("WWW-Authenticate", "Bearer")])
        return [b"missing or wrong bearer token (Authorization)\n"]

    return guarded


def vllm_labels(coordinator: Coordinator) -> tuple[str, str]:
    """(model_name, engine) as vLLM's server sets them: the served model's name, engine 0."""
    return coordinator.config.models.target, "0"


def start_metrics(coordinator: Coordinator) -> Metrics:
    """Attach metrics to the coordinator: /metrics on the HTTP port shows them, and so does a
    port of their own when server.metrics_port is set."""
    server = coordinator.config.server
    metrics = Metrics(coordinator)
    coordinator.on_finished.append(metrics.observe)
    if server.metrics_port:
        token = server.auth.token() if server.metrics_auth else None
        metrics.serve(server.metrics_host, server.metrics_port, token)
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
        running = len(self.coordinator.running)
        yield GaugeMetricFamily("tandem_requests_in_flight", "Requests running now.", running)
        yield CounterMetricFamily("tandem_prompt_tokens", "Prompt tokens.", c.prompt_tokens)
        yield CounterMetricFamily(
            "tandem_generation_tokens", "Generated tokens.", c.generated_tokens
        )
        yield from self._vllm_metrics(c, running)
        yield from self._replica_metrics()
        yield from self._learning_metrics()

    def _vllm_metrics(self, c, running: int) -> Iterator[Metric]:
        """The same figures under vLLM's names and labels (model_name, engine)."""
        labels = list(vllm_labels(self.coordinator))
        spec = c.speculation

        def family(kind: type[Metric], name: str, doc: str, value: float) -> Metric:
            metric = kind(name, doc, labels=VLLM_LABELS)
            metric.add_metric(labels, value)
            return metric

        yield family(GaugeMetricFamily, "vllm:num_requests_running", "Requests running.", running)
        yield family(
            CounterMetricFamily, "vllm:prompt_tokens", "Prefill tokens processed.", c.prompt_tokens
        )
        yield family(
            CounterMetricFamily,
            "vllm:generation_tokens",
            "Generation tokens processed.",
            c.generated_tokens,
        )
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*VLLM_LABELS, "finished_reason"],
        )
        for reason in ("stop", "length", "abort"):
            success.add_metric([*labels, reason], c.finished_by_reason.get(reason, 0))
        yield success
        for row, value in metric_values(SPECULATION, spec):
            yield family(FAMILIES[row.kind], row.metric, row.help, value)
        per_pos = CounterMetricFamily(
            "vllm:spec_decode_num_accepted_tokens_per_pos",
            "Draft tokens accepted, by position in the draft.",
            labels=[*VLLM_LABELS, "position"],
        )
        for position, value in enumerate(spec.accepted_per_pos):
            per_pos.add_metric([*labels, str(position)], value)
        yield per_pos
        for name, doc, attr in SOURCE_METRICS:
            by_source = CounterMetricFamily(name, doc, labels=[*VLLM_LABELS, "source"])
            for source, counts in sorted(spec.sources.items()):
                by_source.add_metric([*labels, source], getattr(counts, attr))
            yield by_source

    def _replica_metrics(self) -> Iterator[Metric]:
        """Drafter figures kept by the target replicas' speculation sessions."""
        actors = self.coordinator.actors
        try:
            replicas = ray.get([a.stats.remote() for a in actors], timeout=REPLICA_STATS_TIMEOUT_S)
        except Exception as exc:  # a scrape must not fail because one replica is slow
            log.warning("replica stats unavailable for metrics: %s", exc)
            return
        for row, value in metric_values(DRAFTERS, DrafterFigures.of(replicas)):
            yield FAMILIES[row.kind](row.metric, row.help, value)
        yield from _breakdown_metrics(Breakdown.of(replicas, self.coordinator.counters.delivery))
        yield from _engine_metrics(self.coordinator.config.models.target, replicas)

    def _learning_metrics(self) -> Iterator[Metric]:
        """Each drafter replica's online learning of its head, labelled `drafter`."""
        deployment = self.coordinator.deployment
        if deployment.drafters is None:
            return
        try:
            loads = ray.get(
                [a.stats.remote() for a in deployment.drafters.actors],
                timeout=REPLICA_STATS_TIMEOUT_S,
            )
        except Exception as exc:  # a drafter being restarted has no figures
            log.warning("drafter stats unavailable for metrics: %s", exc)
            return
        names = [info.replica_id for info in deployment.drafter_infos]
        for row in LEARNING:
            family = FAMILIES[row.kind](row.metric, row.help, labels=["drafter"])
            for name, load in zip(names, loads, strict=True):
                family.add_metric([name], getattr(load.learning, row.attr))
            yield family


# vLLM's scheduler figures (EngineGauges) under the names `vllm serve` gives them, per target
# replica (label `engine`: the replica's index, as vLLM labels its data-parallel engines).
ENGINE_METRICS = (
    (GaugeMetricFamily, "vllm:kv_cache_usage_perc", "KV-cache usage, 1 is full.", "kv_cache_usage"),
    (
        GaugeMetricFamily,
        "vllm:num_requests_waiting",
        "Requests waiting to be scheduled.",
        "requests_waiting",
    ),
    (CounterMetricFamily, "vllm:num_preemptions", "Preempted requests.", "preemptions"),
    (
        CounterMetricFamily,
        "vllm:prefix_cache_queries",
        "Prefix cache queries, in tokens.",
        "prefix_cache_queries",
    ),
    (
        CounterMetricFamily,
        "vllm:prefix_cache_hits",
        "Prefix cache hits, in tokens.",
        "prefix_cache_hits",
    ),
)


def _engine_metrics(model: str, replicas: list) -> Iterator[Metric]:
    for kind, name, doc, attr in ENGINE_METRICS:
        family = kind(name, doc, labels=VLLM_LABELS)
        for index, replica in enumerate(replicas):
            family.add_metric([model, str(index)], getattr(replica.gauges, attr))
        yield family


# Per draft source (a mode's own; in mode auto, each source it chose), labelled `source`.
SOURCE_METRICS = (
    ("tandem_source_draft_tokens", "Draft tokens verified, by draft source.", "draft_tokens"),
    (
        "tandem_source_accepted_tokens",
        "Draft tokens accepted, by draft source.",
        "accepted_tokens",
    ),
)
WIRE = {"drafter_messages", "drafter_bytes_sent", "drafter_bytes_received"}


def _breakdown_metrics(breakdown: Breakdown) -> Iterator[Metric]:
    """GetStats' breakdown: seconds by part of the serving path, and what they divide by."""
    seconds = CounterMetricFamily(
        "tandem_serving_seconds",
        "Time by part of the serving path (GetStats breakdown): step is vLLM's engine step, "
        "made of schedule, forward, proposer (which includes drafter_rtt and predraft_wait) "
        "and output; then between_steps, handoff, stream, coordinator.",
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
