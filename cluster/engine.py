"""An in-process vLLM engine served to asyncio callers.

vLLM's AsyncLLM always runs its engine core in a child process. tandem keeps the engine inside the
Ray actor's own process instead (the proposer plugin shares the actor's speculation session),
which means driving the synchronous `LLMEngine` ourselves: one thread owns the engine and steps it
while requests are unfinished; asyncio callers talk to it through a command queue and get their
outputs back through `Outbox`es, each engine step's outputs for one outbox in one batch with one
wake-up of the caller's event loop (every wake-up is Python work that competes with the engine
thread for the GIL). vLLM still does all the batching, scheduling, KV-cache management and
sampling; the loop times its steps (tandem.cluster.figures.EngineTimes).
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from tandem.cluster.figures import EngineTimes
from tandem.plugins.timers import StepTimers

# The engine core must live in this process (the proposer reaches the drafters through this
# process's Ray connection, and the session is handed to the worker by reference); vLLM reads
# this when an engine starts.
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

from vllm import SamplingParams  # noqa: E402
from vllm.engine.arg_utils import EngineArgs
from vllm.outputs import RequestOutput
from vllm.v1.engine.llm_engine import LLMEngine


class RequestAborted(Exception):
    """Raised inside `generate` when the request was aborted before it finished."""


class Outbox:
    """What the engine thread hands one asyncio consumer: (request id, output or exception)
    pairs, everything that arrived since the consumer last took, as one batch."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_take: Callable[[float], None] | None = None
    ) -> None:
        self._loop = loop
        self._on_take = on_take  # called with how long the oldest item waited
        self._items: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._since = 0.0

    def put(self, items: list[tuple[str, Any]]) -> None:
        """From the engine thread: wakes the consumer's loop only when it has nothing yet."""
        with self._lock:
            wake = not self._items
            self._items.extend(items)
            if wake:
                self._since = time.perf_counter()
        if wake:
            self._loop.call_soon_threadsafe(self._ready.set)

    async def take(self) -> list[tuple[str, Any]]:
        while True:
            await self._ready.wait()
            with self._lock:
                items, self._items = self._items, []
                self._ready.clear()
                waited = time.perf_counter() - self._since
            if items:
                if self._on_take is not None:
                    self._on_take(waited)
                return items


@dataclass(frozen=True)
class _Add:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    outbox: Outbox
    flush: Callable[[], bool] | None  # True: step once first (drafts it must not meet)


@dataclass(frozen=True)
class _Abort:
    request_id: str


@dataclass(frozen=True)
class _Call:
    fn: Callable[[LLMEngine], Any]
    result: Future


class _Stop:
    pass


class EngineLoop:
    """Owns one `LLMEngine` on a dedicated thread."""

    def __init__(self, engine_args: EngineArgs) -> None:
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._outboxes: dict[str, Outbox] = {}  # by request id
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.engine: LLMEngine | None = None
        self.timers = StepTimers()
        self._steps = self._tokens = 0
        self._step_s = self._between_s = 0.0
        self._last_step_end: float | None = None  # None: idle since
        self._deliveries = 0
        self._handoff_s = 0.0
        self._thread = threading.Thread(
            target=self._run, args=(engine_args,), name="vllm-engine", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    # ---- asyncio side -------------------------------------------------------------------------

    def outbox(self) -> Outbox:
        """An outbox on the running event loop, whose takes are counted as hand-offs."""
        return Outbox(asyncio.get_running_loop(), self._handed_off)

    def _handed_off(self, waited_s: float) -> None:
        self._deliveries += 1
        self._handoff_s += waited_s

    def add(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        outbox: Outbox,
        flush: Callable[[], bool] | None = None,
    ) -> None:
        """Start a request; its outputs (deltas when params ask for them), then a
        RequestAborted if `abort` stops it first, or the exception that failed it, arrive in
        `outbox`. `flush`, if given, is asked before the request joins the engine; if it says
        True the engine steps once first."""
        self._commands.put(_Add(request_id, prompt_token_ids, params, outbox, flush))

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        """One request's outputs until it finishes, through an outbox of its own. Raises
        RequestAborted if `abort` stops it first; a caller that stops iterating early
        (cancellation included) aborts it in the engine."""
        outbox = self.outbox()
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

    def num_unfinished(self) -> int:
        """Requests the engine thread still tracks (added and not yet finished or aborted)."""
        return len(self._outboxes)

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

    def shutdown(self) -> None:
        self._commands.put(_Stop())
        self._thread.join(timeout=30)

    # ---- engine thread ------------------------------------------------------------------------

    def _run(self, engine_args: EngineArgs) -> None:
        try:
            self.engine = LLMEngine.from_engine_args(engine_args)
        except BaseException as exc:  # reported to the constructor's caller
            self._startup_error = exc
            return
        finally:
            self._ready.set()
        self.timers.install(self.engine)
        while True:
            idle = not self.engine.has_unfinished_requests()
            if idle:
                self._last_step_end = None  # waiting for work is not time between steps
            if not self._apply_commands(block=idle):
                return
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
                self._fail_all(RequestAborted("engine shut down"))
                return False
            if isinstance(command, _Add):
                self._add(command)
            elif isinstance(command, _Call):
                try:
                    command.result.set_result(command.fn(self.engine))
                except Exception as exc:
                    command.result.set_exception(exc)
            elif isinstance(command, _Abort) and command.request_id in self._outboxes:
                self.engine.abort_request([command.request_id])
                aborted = RequestAborted(command.request_id)
                self._deliver([(command.request_id, aborted, True)])
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True

    def _add(self, command: _Add) -> None:
        # Drafts proposed in the last step are verified in the next one: one step clears them.
        flush = command.flush is not None and command.flush()
        if flush and self.engine.has_unfinished_requests():
            self._step()
        self._outboxes[command.request_id] = command.outbox
        try:
            engine_input = self.engine.renderer.render_cmpl(
                [{"prompt_token_ids": command.prompt_token_ids}]
            )[0]
            self.engine.add_request(command.request_id, engine_input, command.params)
        except Exception as exc:
            self._deliver([(command.request_id, exc, True)])

    def _step(self) -> None:
        start = time.perf_counter()
        if self._last_step_end is not None:
            self._between_s += start - self._last_step_end
        try:
            outputs = self.engine.step()
        except Exception as exc:
            # A failed step leaves no request in a known state: fail them all, keep serving.
            self._last_step_end = None
            for request_id in list(self._outboxes):
                self.engine.abort_request([request_id])
            self._fail_all(exc)
            return
        end = self._last_step_end = time.perf_counter()
        self._steps += 1
        self._tokens += sum(len(o.outputs[0].token_ids) for o in outputs if o.outputs)
        self._step_s += end - start
        self._deliver((o.request_id, o, o.finished) for o in outputs)

    def _deliver(self, items: Iterable[tuple[str, Any, bool]]) -> None:
        """Hand (request id, output or exception, whether it is the last) on: one batch per
        outbox. After its last item the request is forgotten."""
        batches: dict[Outbox, list[tuple[str, Any]]] = {}
        for request_id, item, last in items:
            outboxes = self._outboxes
            outbox = outboxes.pop(request_id, None) if last else outboxes.get(request_id)
            if outbox is not None:
                batches.setdefault(outbox, []).append((request_id, item))
        for outbox, batch in batches.items():
            outbox.put(batch)

    def _fail_all(self, exc: BaseException) -> None:
        self._deliver([(request_id, exc, True) for request_id in self._outboxes])
