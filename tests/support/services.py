"""Real tandem services for the tests: `tandem serve` child processes on loopback.

A module either starts a service of its own (`start_service`: it kills, stops, drains or
otherwise changes the service in ways another module would see), or declares the configurations
it uses with `pytest.mark.uses_service(config, ...)` and takes them from the session's
`ServiceRegistry` (the `services` fixture of tests/service/conftest.py): one service per distinct
configuration, started when a module first asks for it, shared by every module that asks for an
equal one, and stopped after the last test that declared it (tests/conftest.py orders the modules
that share a configuration next to each other, so few services are up at once: each holds 2-3
GiB).

A declared configuration is a dict, or a callable that takes pytest's config and returns one
when a command-line option shapes it (declare it with `uses_service.with_args(callable)`: a
mark called with a lone callable decorates it). `uses_service(config, order="first")` runs the
module before every other user of that configuration (it counts what the service has done since
it started); `order="last"` after them (it changes the service). FREE_PORT as a value stands for a
TCP port free on loopback when the service starts; `service.config` holds the port it got.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from tandem.benchmarks.launcher import ServiceProcess

FREE_PORT = "<free port>"
STARTUP_TIMEOUT_S = 600  # a loaded 2-core machine is slow

Config = dict[str, Any]


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_stopping: list[threading.Thread] = []


def stop_later(service: ServiceProcess) -> None:
    """Stop a service on a thread of its own: a stop is seconds of waiting with little to
    compute (the drain, Ray's shutdown), so the next module need not wait for it to end.
    `wait_for_stops` (at the session's end) joins them."""
    thread = threading.Thread(target=service.stop, name="stop-service", daemon=True)
    thread.start()
    _stopping.append(thread)


def wait_for_stops() -> None:
    while _stopping:
        _stopping.pop().join()


def start_service(config: Config) -> Iterator[ServiceProcess]:
    """A service of the caller's own, stopped (in the background) when the generator is
    closed."""
    service = ServiceProcess(config, startup_timeout_s=STARTUP_TIMEOUT_S)
    service.start()
    try:
        yield service
    finally:
        stop_later(service)


def config_key(config: Config) -> str:
    return json.dumps(config, sort_keys=True)


def resolve(config: Config | Callable[[Any], Config], pytest_config: Any) -> Config:
    return config(pytest_config) if callable(config) else config


def _with_ports(value: Any) -> Any:
    if value == FREE_PORT:
        return free_port()
    if isinstance(value, dict):
        return {k: _with_ports(v) for k, v in value.items()}
    return copy.deepcopy(value)


class ServiceRegistry:
    """The session's shared services, one per configuration (see the module's docstring)."""

    def __init__(self) -> None:
        self._services: dict[str, ServiceProcess] = {}
        self.declared: set[str] = set()  # configurations some collected test declared
        self.last_user: dict[str, str] = {}  # configuration -> nodeid of its last test
        self.started: list[str] = []  # configurations in the order their services started

    def get(self, config: Config) -> ServiceProcess:
        key = config_key(config)
        if key not in self.declared:
            raise LookupError(
                f"no collected test declares pytest.mark.uses_service({key}): declare it, so "
                "that the service is stopped after its last user"
            )
        service = self._services.get(key)
        if service is not None and service.proc.poll() is not None:
            raise RuntimeError(
                f"the shared service {key} exited ({service.proc.returncode}): a module that "
                "kills or stops its service must start its own (start_service)"
            )
        if service is None:
            service = ServiceProcess(_with_ports(config), startup_timeout_s=STARTUP_TIMEOUT_S)
            self._services[key] = service
            self.started.append(key)
            service.start()
        return service

    def release_after(self, nodeid: str) -> None:
        """Stop the services whose last declared user was this test."""
        for key, last in self.last_user.items():
            if last == nodeid and key in self._services:
                stop_later(self._services.pop(key))

    def stop_all(self) -> None:
        while self._services:
            _, service = self._services.popitem()
            stop_later(service)
        wait_for_stops()


# The configurations modules share. Each keeps what its users assert; where two modules asked for
# nearly equal ones, the union of their settings serves both (docs/development.md, Tests).

# One shared service (a service start is half a minute of this machine's two cores), with every
# part that touches drafts on, so that greedy and sampled requests are checked with all of them
# (tests/service/test_speculation.py, test_mirror.py, test_sampling.py, test_eagle_service.py):
# the speculation cache (on by default), the Mirror-SD channel, the model drafter's SpecDec++
# stop. Drafts in batches of any size (the default policy stops drafting above 2 requests), and
# never late: on a loaded machine the drafter may miss the default step budget and be skipped.
# The front door's limits as tests/service/test_service.py checks them, and a metrics port
# (tests/service/test_metrics.py); tests/service/test_cpu_binding.py checks the default CPU
# binding on it.
SPECULATING: Config = {
    "server": {
        "max_inflight": 64,
        "max_tokens": 1024,
        "default_max_tokens": 48,
        "metrics_port": FREE_PORT,
    },
    "speculation": {
        "mirror": {"enabled": True, "layer": 20, "top_k": 4},
        # Online learning on, with updates every few requests: every module on this service
        # checks its outputs while head versions are trained, judged and swapped.
        "drafters": {
            "stop_below": 0.3,
            "online": {
                "enabled": True,
                "update_tokens": 256,
                "steps_per_update": 4,
                "heldout_every": 2,
                "heldout_requests": 2,
            },
        },
        "draft_length": {"full_until_batch": 64, "off_above_batch": 64},
        "step_timeout_ms": 30000,
        "sampler": {"kind": "tandem"},
    },
}


def speculating(pytest_config: Any) -> Config:
    """SPECULATING on the sampler --sampler names (tests/service/test_sampling.py)."""
    config = copy.deepcopy(SPECULATING)
    config["speculation"]["sampler"] = {"kind": pytest_config.getoption("--sampler")}
    return config
