"""Timers on an in-process vLLM engine's step: how long its scheduler and its model (forward,
sampling, and the speculative proposer, which vLLM calls after sampling) take, summed.

Installed on the target actor's engine and on the bench's in-process engines alike, so both
report the same parts of the same step (tandem.cluster.figures.Breakdown). They wrap the engine
core's own `schedule`, `execute_model` and `sample_tokens` on the instance; nothing else changes.
With a synchronous executor (vLLM's CPU platform, and any engine with a `custom_class` proposer,
which switches async scheduling off) the model's calls return when its work is done; with async
scheduling they only launch it, and the wait shows up under the rest of the step instead.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("tandem.timers")


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
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                setattr(self, total, getattr(self, total) + time.perf_counter() - start)

        return timed
