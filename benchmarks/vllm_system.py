"""vLLM in-process: the baseline (target alone) and vLLM's own speculative decoding.

Each system owns one synchronous `LLMEngine` in the bench process and steps it itself, so its
times contain the engine and nothing else. The bench configures the process (threads, vLLM
environment) before the first engine is built; see `process_setup.configure_process`. Its
steps are timed like a tandem target's (tandem.plugins.timers), so the bench shows both engines'
steps part by part side by side.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from tandem.benchmarks.records import ConcurrencyRun, GenerationParams, RequestRecord, Trace
from tandem.benchmarks.workload import Prompt
from tandem.cluster.config.cpus import on_cpus
from tandem.cluster.telemetry.figures import Breakdown
from tandem.plugins.timers import EngineTimes, StepTimers


def _spec_counter() -> Any:
    """A stat logger of this engine's own spec-decode counters.

    Not `get_metrics()`: its Prometheus registry is process-wide, and each engine that logs
    stats re-registers it, so with two speculative engines in one process the first one's
    counters vanish from it.
    """
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SpecCounter(StatLoggerBase):
        def __init__(self, vllm_config: Any = None, engine_index: int = 0) -> None:
            self.drafts = self.draft_tokens = self.accepted_tokens = 0

        def record(self, scheduler_stats: Any, iteration_stats: Any, *args, **kw) -> None:
            stats = scheduler_stats.spec_decoding_stats if scheduler_stats else None
            if stats is not None:
                self.drafts += stats.num_drafts
                self.draft_tokens += stats.num_draft_tokens
                self.accepted_tokens += stats.num_accepted_tokens

        def log_engine_initialized(self) -> None:
            pass

    return SpecCounter()


class VllmSystem:
    """One in-process vLLM engine; `speculative_config` None means the target alone."""

    kind = "vLLM in-process"

    def __init__(
        self,
        name: str,
        model_path: str,
        engine_args: dict[str, Any],
        speculative_config: dict[str, Any] | None = None,
        description: str = "",
        cpus: frozenset[int] | None = None,
    ) -> None:
        """`cpus`: where the engine computes (tandem.cluster.config.cpus); the bench's thread runs
        there while it steps this engine."""
        from vllm.engine.arg_utils import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        self.name = name
        self.cpus = cpus
        self.description = description
        self.speculative_config = speculative_config
        self.engine_args = dict(engine_args)
        # Stat logging only where it is read: the draft and acceptance counts of speculation.
        args = EngineArgs(
            model=model_path,
            speculative_config=speculative_config,
            disable_log_stats=speculative_config is None,
            **engine_args,
        )
        self._counter = _spec_counter() if speculative_config is not None else None
        loggers = [lambda config, index: self._counter] if self._counter else None
        with on_cpus(cpus):
            self.engine = LLMEngine.from_engine_args(args, stat_loggers=loggers)
        self._ids = itertools.count()
        self._timers = StepTimers()
        self._timers.install(self.engine)
        self._steps = self._tokens = 0
        self._step_s = self._between_s = 0.0

    @property
    def speculative(self) -> bool:
        return self.speculative_config is not None

    @property
    def num_speculative_tokens(self) -> int:
        return int(self.speculative_config["num_speculative_tokens"]) if self.speculative else 0

    @property
    def block_size(self) -> int:
        return self.engine.vllm_config.cache_config.block_size

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "engine_args": self.engine_args,
            "speculative_config": self.speculative_config,
            "prefix_caching": self.engine.vllm_config.cache_config.enable_prefix_caching,
            "async_scheduling": self.engine.vllm_config.scheduler_config.async_scheduling,
        }

    # ---- requests -----------------------------------------------------------------------------

    def warmup(self, prompts: Sequence[Prompt], params: GenerationParams) -> None:
        self._serve(prompts, 1, params)

    def run(self, prompt: Prompt, params: GenerationParams) -> RequestRecord:
        before = self._spec_counters()
        traces, _ = self._serve([prompt], 1, params)
        record = traces[0].record(self.name)
        if self.speculative:
            after = self._spec_counters()
            record.drafts, record.draft_tokens, record.accepted_tokens = (
                a - b for a, b in zip(after, before, strict=True)
            )
        return record

    def run_concurrent(
        self, prompts: Sequence[Prompt], concurrency: int, params: GenerationParams
    ) -> ConcurrencyRun:
        traces, wall = self._serve(prompts, concurrency, params)
        return ConcurrencyRun(self.name, concurrency, wall, [t.record(self.name) for t in traces])

    def forward_once(self, token_ids: Sequence[int]) -> tuple[float, int]:
        """Time one request with max_tokens=1 (a single forward over the uncached tokens);
        returns (seconds, prompt tokens served from the prefix cache)."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=1)
        engine_input = self.engine.renderer.render_cmpl([{"prompt_token_ids": list(token_ids)}])
        request_id = f"{self.name}-cost-{next(self._ids)}"
        with on_cpus(self.cpus):
            start = time.perf_counter()
            self.engine.add_request(request_id, engine_input[0], params)
            cached = 0
            while self.engine.has_unfinished_requests():
                for output in self.engine.step():
                    cached = output.num_cached_tokens or 0
            return time.perf_counter() - start, cached

    def breakdown(self) -> Breakdown:
        """The engine's step, part by part, summed so far (what tandem's GetStats reports)."""
        engine = EngineTimes(
            steps=self._steps,
            tokens=self._tokens,
            step_s=self._step_s,
            schedule_s=self._timers.schedule_s,
            model_s=self._timers.model_s,
            between_s=self._between_s,
        )
        return Breakdown.from_engine(engine)

    def close(self) -> None:
        self.engine = None

    # ---- the engine loop ----------------------------------------------------------------------

    def _serve(
        self, prompts: Sequence[Prompt], concurrency: int, params: GenerationParams
    ) -> tuple[list[Trace], float]:
        """Run prompts with at most `concurrency` in the engine at once (a closed loop);
        returns their traces in prompt order and the wall time of the whole batch."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampling = SamplingParams(
            temperature=params.temperature,
            seed=params.seed,
            max_tokens=params.max_new_tokens,
            output_kind=RequestOutputKind.DELTA,
        )
        render = self.engine.renderer.render_cmpl
        inputs = deque((p, render([{"prompt_token_ids": list(p.token_ids)}])[0]) for p in prompts)
        with on_cpus(self.cpus):  # the thread runs on the engine's CPUs while it steps it
            traces: list[Trace] = []
            live: dict[str, Trace] = {}
            start = step_end = time.perf_counter()
            while inputs or live:
                while inputs and len(live) < concurrency:
                    prompt, engine_input = inputs.popleft()
                    request_id = f"{self.name}-{next(self._ids)}"
                    trace = Trace(prompt, time.perf_counter())
                    self.engine.add_request(request_id, engine_input, sampling)
                    traces.append(trace)
                    live[request_id] = trace
                step_start = time.perf_counter()
                outputs = self.engine.step()
                now = time.perf_counter()
                self._between_s += step_start - step_end
                self._step_s += now - step_start
                self._steps += 1
                step_end = now
                for output in outputs:
                    trace = live.get(output.request_id)
                    if trace is None:
                        continue
                    completion = output.outputs[0]
                    self._tokens += len(completion.token_ids)
                    trace.observe(completion.token_ids, now)
                    if output.finished:
                        trace.finish(completion.finish_reason, now)
                        del live[output.request_id]
            return traces, time.perf_counter() - start

    def _spec_counters(self) -> tuple[int, int, int]:
        """This engine's spec-decode counters so far: drafts, draft tokens, accepted tokens."""
        c = self._counter
        return (c.drafts, c.draft_tokens, c.accepted_tokens) if c else (0, 0, 0)
