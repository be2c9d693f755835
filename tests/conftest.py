"""Shared fixtures: the real default model, and real tandem services on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem.benchmarks.launcher import ServiceProcess
from tandem.models import DEFAULT_MODEL, resolve_model

REPO = Path(__file__).resolve().parents[1]
SPEC_BENCH = REPO / "benchmarks" / "data" / "spec_bench" / "question.jsonl"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tandem", "tandem's sampling tests (tests/test_sampling.py)")
    group.addoption(
        "--sampler",
        choices=("tandem", "vllm"),
        default="tandem",
        help="speculation.sampler.kind of their server: vllm runs them on vLLM's own rejection "
        "sampler, which they catch (tandem)",
    )
    group.addoption(
        "--sampling-samples",
        type=int,
        default=300,
        help="samples per setting and arm of the distribution test (300; make test-sampling: 2000)",
    )
    group = parser.getgroup("tandem reliability (make soak sets these high)")
    group.addoption(
        "--soak-minutes", type=float, default=2.0, help="length of the soak test (default 2)"
    )
    group.addoption(
        "--fuzz-examples",
        type=int,
        default=100,
        help="hypothesis examples per fuzz test; one gRPC example is a batch of 1-4 requests "
        "(default 100)",
    )
    group.addoption("--soak-report", default="", help="write the soak's figures (JSON) here")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "timeout_per_example(s): the fuzz test's timeout, s per --fuzz-examples"
    )
    config.addinivalue_line(
        "markers", "timeout_per_soak_minute(s): the soak's timeout, s per --soak-minutes"
    )


def pytest_collection_modifyitems(config, items):
    """Timeouts that follow --fuzz-examples and --soak-minutes (plus 10 minutes of set-up)."""
    for item in items:
        if marker := item.get_closest_marker("timeout_per_example"):
            seconds = marker.args[0] * config.getoption("--fuzz-examples")
        elif marker := item.get_closest_marker("timeout_per_soak_minute"):
            seconds = marker.args[0] * config.getoption("--soak-minutes")
        else:
            continue
        item.add_marker(pytest.mark.timeout(int(600 + seconds)))


@pytest.fixture(scope="session")
def soak_minutes(request) -> float:
    return request.config.getoption("--soak-minutes")


@pytest.fixture(scope="session")
def fuzz_examples(request) -> int:
    return request.config.getoption("--fuzz-examples")


def spec_bench_prompts(n: int, categories: tuple[str, ...] = ()) -> list[str]:
    """First turns of the first n Spec-Bench prompts (optionally of some categories only)."""
    rows = [json.loads(line) for line in SPEC_BENCH.read_text().splitlines() if line.strip()]
    if categories:
        rows = [r for r in rows if r["category"] in categories]
    return [r["turns"][0] for r in rows[:n]]


@pytest.fixture(scope="module")
def worker_class_restored() -> Iterator[None]:
    """For engines started in pytest's own process: vLLM grafts the worker extension onto the
    worker class itself (appends it to `__bases__`) for the rest of the process, and refuses a
    second, different extension whose methods the first already added (tests/faulty_worker.py
    extends tandem's). Take tandem's extensions off again when the module is done."""
    yield
    from vllm.v1.worker.worker_base import WorkerBase

    from tandem.plugins.worker import TandemWorkerExtension

    stack = [WorkerBase]
    while stack:
        cls = stack.pop()
        stack += cls.__subclasses__()
        bases = tuple(b for b in cls.__bases__ if not issubclass(b, TandemWorkerExtension))
        if bases != cls.__bases__:
            cls.__bases__ = bases


@pytest.fixture(scope="session")
def model_path() -> Path:
    return resolve_model(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tokenizer(model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def start_service(config: dict) -> Iterator[ServiceProcess]:
    service = ServiceProcess(config, startup_timeout_s=600)  # a loaded 2-core machine is slow
    service.start()
    try:
        yield service
    finally:
        service.stop()


def free_port() -> int:
    """A TCP port free on loopback right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
