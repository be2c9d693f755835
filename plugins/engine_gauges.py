"""What vLLM's scheduler knows and tandem's front door does not: the KV cache's use, the requests
waiting, preemptions and the prefix cache's hits, read from the engine's own stat records.

vLLM's LLMEngine hands every step's SchedulerStats and IterationStats to its stat loggers (the
ones behind `vllm serve`'s `vllm:kv_cache_usage_perc` and `vllm:num_requests_waiting`); tandem
adds one that keeps the latest state and the running counts, as plain values that cross Ray to
the coordinator (GetStats' ReplicaStats, and Prometheus under vLLM's names).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EngineGauges:
    """A target engine's scheduler after its last step, and its counts since it started."""

    kv_cache_usage: float = 0.0  # fraction of the KV cache's blocks in use, 0..1
    requests_waiting: int = 0  # admitted to the engine, not yet scheduled
    preemptions: int = 0  # requests preempted (their KV cache freed, recomputed later)
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of which found there


class GaugeKeeper:
    """Collects EngineGauges from the stat logger it makes (`logger_class`), which vLLM calls
    on the engine thread; `latest()` may be read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gauges = EngineGauges()

    def latest(self) -> EngineGauges:
        with self._lock:
            return self._gauges

    def record(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        with self._lock:
            g = self._gauges
            usage, waiting = g.kv_cache_usage, g.requests_waiting
            queries, hits = g.prefix_cache_queries, g.prefix_cache_hits
            if scheduler_stats is not None:
                usage = scheduler_stats.kv_cache_usage
                waiting = scheduler_stats.num_waiting_reqs
                queries += scheduler_stats.prefix_cache_stats.queries
                hits += scheduler_stats.prefix_cache_stats.hits
            preempted = iteration_stats.num_preempted_reqs if iteration_stats is not None else 0
            self._gauges = EngineGauges(usage, waiting, g.preemptions + preempted, queries, hits)

    def logger_class(self) -> type:
        """A vLLM StatLoggerBase class (LLMEngine's `stat_loggers` takes classes) that reports
        to this keeper."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        keeper = self

        class TandemGauges(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(
                self,
                scheduler_stats: Any,
                iteration_stats: Any,
                mm_cache_stats: Any = None,
                engine_idx: int = 0,
            ) -> None:
                keeper.record(scheduler_stats, iteration_stats)

            def log_engine_initialized(self) -> None:
                pass

        return TandemGauges
