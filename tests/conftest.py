"""Options, timeouts and fixtures of both tiers (tests/unit, tests/service): the real default
model, the services that modules share (tests/support/services.py), and a per-module summary of
where the time went."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem.models import DEFAULT_MODEL, resolve_model

from .support.services import ServiceRegistry, config_key, resolve

REGISTRY = pytest.StashKey[ServiceRegistry]()
ORDER = {"first": 0, None: 1, "last": 2}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tandem", "tandem's sampling tests (tests/service/test_sampling.py)")
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
    config.addinivalue_line(
        "markers",
        "uses_service(*configs, order=None): the shared services the module takes from the "
        "`services` fixture (tests/support/services.py); order: 'first' or 'last' among the "
        "modules sharing them",
    )
    config.stash[REGISTRY] = ServiceRegistry()


def pytest_collection_modifyitems(config, items):
    _share_services(config, items)
    _scale_timeouts(config, items)


def _share_services(config, items) -> None:
    """Modules that share a service run next to each other (in collection order otherwise;
    `order` puts a module first or last among them), and each service stops after its last
    declared user."""
    registry = config.stash[REGISTRY]
    modules: dict[str, list] = {}  # module nodeid -> its items, in collection order
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    uses = {}  # module -> ([keys], order)
    for module, its_items in modules.items():
        keys, order = [], None
        for marker in its_items[0].iter_markers("uses_service"):
            keys += [config_key(resolve(c, config)) for c in marker.args]
            order = marker.kwargs.get("order", order)
        uses[module] = keys, order
    first_module: dict[str, int] = {}
    for index, module in enumerate(modules):
        for key in uses[module][0]:
            first_module.setdefault(key, index)

    def place(indexed):
        index, module = indexed
        keys, order = uses[module]
        return (min([first_module[k] for k in keys], default=index), ORDER[order], index)

    ordered = [module for _, module in sorted(enumerate(modules), key=place)]
    items[:] = [item for module in ordered for item in modules[module]]
    for module in ordered:
        for key in uses[module][0]:
            registry.declared.add(key)
            registry.last_user[key] = modules[module][-1].nodeid


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    item.config.stash[REGISTRY].release_after(item.nodeid)


def pytest_sessionfinish(session):
    if REGISTRY in session.config.stash:
        session.config.stash[REGISTRY].stop_all()


@pytest.fixture(scope="session")
def services(request) -> ServiceRegistry:
    """The shared services: `services.get(config)` for a config the module declared with
    pytest.mark.uses_service (tests/support/services.py)."""
    return request.config.stash[REGISTRY]


def _scale_timeouts(config, items) -> None:
    """Timeouts that follow --fuzz-examples and --soak-minutes (plus 10 minutes of set-up)."""
    for item in items:
        if marker := item.get_closest_marker("timeout_per_example"):
            seconds = marker.args[0] * config.getoption("--fuzz-examples")
        elif marker := item.get_closest_marker("timeout_per_soak_minute"):
            seconds = marker.args[0] * config.getoption("--soak-minutes")
        else:
            continue
        item.add_marker(pytest.mark.timeout(int(600 + seconds)))


_module_seconds: dict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    """Adds up set-up, call and tear-down per module (a shared service's start counts in the
    first module that asks for it, its stop in the module whose tear-down stops it)."""
    _module_seconds[report.nodeid.split("::")[0]] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _module_seconds:
        return
    write = terminalreporter.write_line
    terminalreporter.section("seconds per module")
    for module, seconds in sorted(_module_seconds.items(), key=lambda kv: -kv[1]):
        write(f"{seconds:8.1f}  {module}")
    write(f"{sum(_module_seconds.values()):8.1f}  in all")


@pytest.fixture(scope="session")
def soak_minutes(request) -> float:
    return request.config.getoption("--soak-minutes")


@pytest.fixture(scope="session")
def fuzz_examples(request) -> int:
    return request.config.getoption("--fuzz-examples")


@pytest.fixture(scope="module")
def worker_class_restored() -> Iterator[None]:
    """For engines started in pytest's own process: vLLM grafts the worker extension onto the
    worker class itself (appends it to `__bases__`) for the rest of the process, and refuses a
    second, different extension whose methods the first already added
    (tests/support/faulty_worker.py extends tandem's). Take tandem's extensions off again when
    the module is done."""
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
