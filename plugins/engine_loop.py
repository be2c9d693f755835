"""An in-process vLLM engine served to asyncio callers.

vLLM's AsyncLLM always runs its engine core in a child process, which dies with any step that
raises. tandem keeps the engine core (its scheduler and output processing) inside the Ray actor's
own process instead, and by default the forward too (`distributed_executor_backend: mp` gives the
forward a worker process of its own, as `vllm serve` runs it; tandem.plugins.engine_setup), which
means driving the synchronous `LLMEngine` ourselves: one thread owns the engine and steps it while
requests are unfinished; callers talk to it through a command queue and get their outputs back
through a `Consumer` each: after every step the engine thread hands each consumer that step's
outputs for it in one batch. tandem's target replica sends them straight onto a socket from this
thread (tandem.cluster.transport.output_channel); asyncio callers (`generate`) take them from an
`Outbox`, with one wake-up of their event loop per step (Python work that competes with the engine
thread for the GIL, which is why the replica does not use one). vLLM still does all the batching,
scheduling, KV-cache management and sampling; the loop times its steps
(tandem.plugins.timers.EngineTimes).

A step that raises costs as little as possible (`_recover`): the engine's state is unknown, so
every request in it is aborted there, but only the request that broke the step fails. The others
rejoin as continuations (their prompt followed by the tokens they already delivered, with what is
left of max_tokens), so their callers see one unbroken stream. The culprit is a request that
joined since the last good step; when several did (or none), the suspects rejoin one per step
until one of them breaks a step on its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from tandem.plugins.engine_gauges import GaugeKeeper
from tandem.plugins.timers import EngineTimes, StepTimers
from tandem.plugins.vllm_io import refusal

# The engine core (scheduler, outputs) lives in this process, stepped by this loop: a failed
# step costs one request (`_recover`), where vLLM's own core process would die with it. The
# worker, which runs the forward, may have a process of its own (tandem.plugins.engine_setup).
# vLLM reads this when an engine starts.
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

from vllm import SamplingParams  # noqa: E402
from vllm.engine.arg_utils import EngineArgs
from vllm.outputs import RequestOutput
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.llm_engine import LLMEngine

log = logging.getLogger("tandem.engine")

# Failed steps a request may be caught in (with no newcomer to blame) before it fails itself:
# bounds the retries when the engine fails whatever it runs.
MAX_STRIKES = 3


class RequestAborted(Exception):
    """Raised inside `generate` when the request was aborted before it finished."""


class StepFailed(RuntimeError):
    """Raised inside `generate` for the request that made an engine step fail."""


class Consumer(Protocol):
    """Where the engine thread hands a caller's outputs: (request id, RequestOutput or the
    exception that ended it) pairs, one call per step. Runs on the engine thread, so it must
    not block; False means the caller is gone (its requests are aborted, outputs dropped)."""

    def put(self, items: list[tuple[str, Any]]) -> bool: ...


class Outbox:
    """A consumer on an asyncio loop: everything that arrived since it last took, as one
    batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._ready = asyncio.Event()

    def put(self, items: list[tuple[str, Any]]) -> bool:
        """Wakes the consumer's loop only when it has nothing yet; False if that loop has
        closed."""
        with self._lock:
            wake = not self._items
            self._items.extend(items)
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._ready.set)
            except RuntimeError:
                return False
        return True

    async def take(self) -> list[tuple[str, Any]]:
        while True:
            await self._ready.wait()
            with self._lock:
                items, self._items = self._items, []
                self._ready.clear()
            if items:
                return items


@dataclass(eq=False)  # compared by identity
class _Request:
    """One submission, as the engine thread tracks it across retries."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    consumer: Consumer
    delivered: list[int] = field(default_factory=list)  # output tokens its caller has
    in_engine: bool = False
    strikes: int = 0  # failed steps it was a suspect of


@dataclass(frozen=True)
class _Abort:
    request_id: str


@dataclass(frozen=True)
class _Call:
    fn: Callable[[LLMEngine], Any]
    result: Future


@dataclass(frozen=True)
class _Stop:
    last: Callable[[LLMEngine], Any] | None = None


class EngineLoop:
    """Owns one `LLMEngine` on a dedicated thread."""

    def __init__(self, engine_args: EngineArgs) -> None:
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._requests: dict[str, _Request] = {}  # unfinished, in the engine or waiting
        self._newcomers: set[str] = set()  # joined since the last good step
        self._probation: deque[_Request] = deque()  # to join one per step, after a failure
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.engine: LLMEngine | None = None
        self.timers = StepTimers()
        self.gauges = GaugeKeeper()  # vLLM's scheduler state, from its stat records
        self._steps = self._tokens = 0
        self._step_s = self._between_s = 0.0
        self._last_step_end: float | None = None  # None: idle since
        self._deliveries = 0
        self._handoff_s = 0.0
        self.failed_steps = 0
        self._thread = threading.Thread(
            target=self._run, args=(engine_args,), name="vllm-engine", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    # ---- callers' side -------------------------------------------------------------------------

    def add(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        consumer: Consumer,
    ) -> None:
        """Start a request; its outputs (deltas), then a RequestAborted if `abort` stops it
        first, a StepFailed if it broke an engine step, or the exception that failed it,
        go to `consumer`. `request_id` must be unique among running requests; outputs must
        be deltas (RequestOutputKind.DELTA), which is what a retry continues."""
        if params.output_kind != RequestOutputKind.DELTA:
            raise ValueError("EngineLoop needs RequestOutputKind.DELTA outputs")
        self._commands.put(_Request(request_id, prompt_token_ids, params, consumer))

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        """One request's outputs until it finishes, through an outbox of its own. Raises
        RequestAborted if `abort` stops it first, StepFailed if it broke an engine step; a
        caller that stops iterating early (cancellation included) aborts it in the engine."""
        outbox = Outbox(asyncio.get_running_loop())
        self.add(request_id, prompt_token_ids, params, outbox)
        finished = False
        try:
            while not finished:
                for _, item in await outbox.take():
                    if isinstance(item, BaseException):
                        finished = True
                        raise item
                    finished = item.finished
                    yield item
        finally:
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._commands.put(_Abort(request_id))

    def call(self, fn: Callable[[LLMEngine], Any]) -> Any:
        """Run fn(engine) on the engine thread, between steps, and return its result."""
        result: Future = Future()
        self._commands.put(_Call(fn, result))
        return result.result()

    def later(self, fn: Callable[[LLMEngine], Any]) -> None:
        """Run fn(engine) on the engine thread, between steps, after the commands already
        queued; returns at once."""
        self._commands.put(_Call(fn, Future()))

    def num_unfinished(self) -> int:
        """Requests the engine thread still tracks (added and not yet finished or aborted)."""
        return len(self._requests)

    def times(self) -> EngineTimes:
        return EngineTimes(
            steps=self._steps,
            tokens=self._tokens,
            step_s=self._step_s,
            schedule_s=self.timers.schedule_s,
            model_s=self.timers.model_s,
            between_s=self._between_s,
            deliveries=self._deliveries,
            handoff_s=self._handoff_s,
        )

    def shutdown(self, last: Callable[[LLMEngine], Any] | None = None) -> None:
        """Abort what is left, run last(engine) on the engine thread (after the aborted
        requests' consumers heard of it), then shut the engine down."""
        self._commands.put(_Stop(last))
        self._thread.join(timeout=30)

    # ---- engine thread ------------------------------------------------------------------------

    def _run(self, engine_args: EngineArgs) -> None:
        try:
            self.engine = LLMEngine.from_engine_args(
                engine_args, stat_loggers=[self.gauges.logger_class()]
            )
        except BaseException as exc:  # reported to the constructor's caller
            self._startup_error = exc
            return
        finally:
            self._ready.set()
        self.timers.install(self.engine)
        while True:
            idle = not self.engine.has_unfinished_requests() and not self._probation
            if idle:
                self._last_step_end = None  # waiting for work is not time between steps
            if not self._apply_commands(block=idle):
                return
            if self._probation:
                self._join(self._probation.popleft())
            if self.engine.has_unfinished_requests():
                self._step()

    def _apply_commands(self, block: bool) -> bool:
        """Apply queued commands (waiting for one when idle); False once asked to stop."""
        try:
            command = self._commands.get(block=block)
        except queue.Empty:
            return True
        while True:
            if isinstance(command, _Stop):
                for request in list(self._requests.values()):
                    self._finish(request, RequestAborted("engine shut down"))
                if command.last is not None:
                    command.last(self.engine)
                self.engine.engine_core.shutdown()  # and a worker process of its own with it
                return False
            if isinstance(command, _Request):
                self._requests[command.request_id] = command
                if self._probation:  # joins after the suspects, so that blame stays exact
                    self._probation.append(command)
                else:
                    self._join(command)
            elif isinstance(command, _Call):
                try:
                    command.result.set_result(command.fn(self.engine))
                except Exception as exc:
                    command.result.set_exception(exc)
            elif isinstance(command, _Abort) and command.request_id in self._requests:
                request = self._requests[command.request_id]
                if request.in_engine:
                    self.engine.abort_request([request.request_id])
                elif request in self._probation:
                    self._probation.remove(request)
                self._finish(request, RequestAborted(request.request_id))
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True

    def _join(self, request: _Request, proven: bool = False) -> None:
        """Add the request to the engine (again, as a continuation, after a failed step).
        `proven`: it ran in the last good step, so a failure is not blamed on its joining."""
        try:
            engine_input = self.engine.renderer.render_cmpl(
                [{"prompt_token_ids": request.prompt_token_ids + request.delivered}]
            )[0]
            self.engine.add_request(request.request_id, engine_input, _remaining(request))
        except Exception as exc:
            self._finish(request, refusal(exc))
            return
        request.in_engine = True
        if not proven:
            self._newcomers.add(request.request_id)

    def _step(self) -> None:
        start = time.perf_counter()
        if self._last_step_end is not None:
            self._between_s += start - self._last_step_end
        try:
            outputs = self.engine.step()
        except Exception as exc:
            self._last_step_end = None
            self._recover(exc)
            return
        end = self._last_step_end = time.perf_counter()
        self._steps += 1
        self._tokens += sum(len(o.outputs[0].token_ids) for o in outputs if o.outputs)
        self._step_s += end - start
        self._newcomers.clear()
        batches: dict[Consumer, list[tuple[str, Any]]] = {}
        for output in outputs:
            request = self._requests.get(output.request_id)
            if request is None:
                continue
            request.delivered += output.outputs[0].token_ids
            if output.finished:
                request.in_engine = False
                del self._requests[request.request_id]
            batches.setdefault(request.consumer, []).append((request.request_id, output))
        for consumer, batch in batches.items():  # one batch per consumer
            start = time.perf_counter()
            delivered = consumer.put(batch)
            self._deliveries += 1
            self._handoff_s += time.perf_counter() - start
            if not delivered:  # its consumer is gone: stop its requests
                for request_id, _ in batch:
                    request = self._requests.pop(request_id, None)
                    if request is not None and request.in_engine:
                        self.engine.abort_request([request_id])

    def _recover(self, exc: Exception) -> None:
        """After a failed step: fail its culprit, give the other requests another go."""
        self.failed_steps += 1
        batch = [r for r in self._requests.values() if r.in_engine]
        for request in batch:  # what the engine holds of them is unknown now
            self.engine.abort_request([request.request_id])
            request.in_engine = False
        newcomers = [r for r in batch if r.request_id in self._newcomers]
        self._newcomers.clear()
        suspects = newcomers or batch
        if len(suspects) == 1:
            culprits = suspects
        else:
            for request in suspects:
                request.strikes += 1
            culprits = [r for r in suspects if r.strikes >= MAX_STRIKES]
        log.error(
            "engine step failed with %d requests (%s); failing %s, retrying the rest",
            len(batch),
            ", ".join(r.request_id for r in batch),
            ", ".join(r.request_id for r in culprits) or "none",
            exc_info=exc,
        )
        for request in culprits:
            self._finish(request, StepFailed(f"an engine step failed with {request.request_id}"))
        retried = [r for r in suspects if r not in culprits]
        self._probation.extendleft(reversed(retried))  # before requests that came meanwhile
        for request in batch:
            if request not in suspects:
                self._join(request, proven=True)

    def _finish(self, request: _Request, exc: BaseException) -> None:
        """End a request with an exception raised in its caller."""
        if self._requests.pop(request.request_id, None) is not None:
            request.consumer.put([(request.request_id, exc)])


def _remaining(request: _Request) -> SamplingParams:
    """The request's sampling parameters, less what it has already delivered."""
    if not request.delivered:
        return request.params
    if request.params.structured_outputs is not None:  # vLLM starts a grammar at the output's start
        raise StepFailed(f"{request.request_id}: a structured output cannot resume mid-way")
    params = request.params.clone()
    done = len(request.delivered)
    if params.max_tokens is not None:
        params.max_tokens -= done
    params.min_tokens = max(0, request.params.min_tokens - done)
    return params
