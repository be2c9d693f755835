"""An in-process vLLM engine served to asyncio callers.

vLLM's AsyncLLM always runs its engine core in a child process. tandem keeps the engine inside the
Ray actor's own process instead (so the proposer plugin can reach the drafters through that
actor's Ray connection), which means driving the synchronous `LLMEngine` ourselves: one thread owns
the engine and steps it while requests are unfinished; asyncio callers talk to it through a
command queue and get their outputs back through per-request asyncio queues. vLLM still does all
the batching, scheduling, KV-cache management and sampling.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class _Add:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    sink: asyncio.Queue
    loop: asyncio.AbstractEventLoop
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
        self._sinks: dict[str, tuple[asyncio.Queue, asyncio.AbstractEventLoop]] = {}
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self.engine: LLMEngine | None = None
        self.steps = 0
        self.step_time_s = 0.0  # time spent inside engine.step(), drafting included
        self._thread = threading.Thread(
            target=self._run, args=(engine_args,), name="vllm-engine", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    # ---- asyncio side -------------------------------------------------------------------------

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        flush: Callable[[], bool] | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs (deltas when params ask for them) until it finishes.

        Raises RequestAborted if `abort` stops it first. If the caller stops iterating early
        (cancellation included), the request is aborted in the engine. `flush`, if given, is
        asked before the request joins the engine; if it says True the engine steps once first.
        """
        sink: asyncio.Queue = asyncio.Queue()
        self._commands.put(
            _Add(request_id, prompt_token_ids, params, sink, asyncio.get_running_loop(), flush)
        )
        finished = False
        try:
            while True:
                item = await sink.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
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
        return len(self._sinks)

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
        while True:
            idle = not self.engine.has_unfinished_requests()
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
            elif isinstance(command, _Abort) and command.request_id in self._sinks:
                self.engine.abort_request([command.request_id])
                self._deliver(command.request_id, RequestAborted(command.request_id), last=True)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True

    def _add(self, command: _Add) -> None:
        # Drafts proposed in the last step are verified in the next one: one step clears them.
        flush = command.flush is not None and command.flush()
        if flush and self.engine.has_unfinished_requests():
            self._step()
        self._sinks[command.request_id] = (command.sink, command.loop)
        try:
            engine_input = self.engine.renderer.render_cmpl(
                [{"prompt_token_ids": command.prompt_token_ids}]
            )[0]
            self.engine.add_request(command.request_id, engine_input, command.params)
        except Exception as exc:
            self._deliver(command.request_id, exc, last=True)

    def _step(self) -> None:
        start = time.perf_counter()
        try:
            outputs = self.engine.step()
            self.steps += 1
            self.step_time_s += time.perf_counter() - start
        except Exception as exc:
            # A failed step leaves no request in a known state: fail them all, keep serving.
            for request_id in list(self._sinks):
                self.engine.abort_request([request_id])
            self._fail_all(exc)
            return
        for output in outputs:
            self._deliver(output.request_id, output, last=output.finished)

    def _deliver(self, request_id: str, item: Any, last: bool) -> None:
        entry = self._sinks.pop(request_id, None) if last else self._sinks.get(request_id)
        if entry is not None:
            sink, loop = entry
            loop.call_soon_threadsafe(sink.put_nowait, item)

    def _fail_all(self, exc: BaseException) -> None:
        for request_id in list(self._sinks):
            self._deliver(request_id, exc, last=True)
