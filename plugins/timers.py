"""Timers on an in-process vLLM engine's step: how long its scheduler and its model (forward,
sampling, and the speculative proposer, which vLLM calls after sampling) take, summed.

Installed on the target actor's engine and on the bench's in-process engines alike, so both
report the same parts of the same step (tandem.cluster.telemetry.figures.Breakdown). They wrap the
engine core's own `schedule`, `execute_model` and `sample_tokens` on the instance; nothing else
changes. With a synchronous executor (vLLM's CPU platform, and any engine with a `custom_class`
proposer, which switches async scheduling off) the model's calls return when its work is done; with
async scheduling they only launch it, and the wait shows up under the rest of the step instead.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Self

log = logging.getLogger("tandem.timers")


class Sums:
    """Figures that only add up (counts and seconds): `b - a` is what happened between two
    reads `a` and `b` of the same counters."""

    def _combine(self, other: Self, sign: int) -> Self:
        return type(self)(
            **{
                f.name: getattr(self, f.name) + sign * getattr(other, f.name)
                for f in dataclasses.fields(self)  # type: ignore[arg-type]
            }
        )

    def __add__(self, other: Self) -> Self:
        return self._combine(other, 1)

    def __sub__(self, other: Self) -> Self:
        return self._combine(other, -1)


@dataclass(frozen=True)
class EngineTimes(Sums):
    """A target engine's time, summed since it started (tandem.plugins.engine_loop.EngineLoop)."""

    steps: int = 0  # engine steps that ran the model
    tokens: int = 0  # tokens those steps produced, every request's
    step_s: float = 0.0  # inside vLLM's engine step
    schedule_s: float = 0.0  # of which its scheduler
    model_s: float = 0.0  # of which the model: forward, sampling and the proposer
    between_s: float = 0.0  # the engine thread between steps (hand-offs, commands)
    deliveries: int = 0  # output batches the engine thread handed on (sent)
    handoff_s: float = 0.0  # of between_s: handing them on (encoding and sending)


class StepTimers:
    def __init__(self) -> None:
        self.schedule_s = 0.0
        self.model_s = 0.0

    def install(self, engine: Any) -> bool:
        """Time an `LLMEngine` whose core runs in this process; False (and no timers) if it
        does not (vLLM's multiprocess engine)."""
        core = getattr(engine.engine_core, "engine_core", None)
        if core is None:
            log.warning("the engine core runs in another process: its step is not broken down")
            return False
        scheduler, executor = core.scheduler, core.model_executor
        scheduler.schedule = self._timed(scheduler.schedule, "schedule_s")
        executor.execute_model = self._timed(executor.execute_model, "model_s")
        executor.sample_tokens = self._timed(executor.sample_tokens, "model_s")
        return True

    def _timed(self, method: Callable[..., Any], total: str) -> Callable[..., Any]:
        """`method` timed into `total`. A call that returns a Future (the multiprocess
        executor's, whose worker runs the model meanwhile) counts until its result is taken."""

        def add(start: float) -> None:
            setattr(self, total, getattr(self, total) + time.perf_counter() - start)

        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                result = method(*args, **kwargs)
            except BaseException:
                add(start)
                raise
            if not isinstance(result, Future):
                add(start)
                return result
            wait = result.result

            def result_timed(*a: Any, **kw: Any) -> Any:
                try:
                    return wait(*a, **kw)
                finally:
                    add(start)

            result.result = result_timed  # type: ignore[method-assign]
            return result

        return timed
