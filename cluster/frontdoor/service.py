"""Starting and stopping the whole service: Ray, the target pool, the gRPC and HTTP doors."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

import ray
from ray._private import ray_constants

from tandem.cluster.config.cpus import keep_off
from tandem.cluster.config.deployment import RayConfig, TandemConfig
from tandem.cluster.frontdoor.coordinator import Coordinator
from tandem.cluster.frontdoor.grpc_server import Server
from tandem.cluster.frontdoor.http_server import HTTPServer
from tandem.cluster.frontdoor.prometheus import start_metrics

log = logging.getLogger("tandem")

# Ray's switch for single-machine clusters (ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR): with it
# off, the node IP is loopback.
_LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def connect_ray(config: RayConfig) -> bool:
    """Join the configured cluster, or start an embedded one; True when we started it.

    The embedded cluster serves this process only, so every Ray process of it (GCS, raylet,
    workers, agents) listens on loopback: Ray binds its servers to the node's IP, and takes
    loopback as that IP where it runs single-machine only, as on Windows and macOS."""
    if ray.is_initialized():
        return False
    if config.address:
        ray.init(address=config.address)
        return False
    # Read by this process (already imported ray) and by every Ray process it starts.
    os.environ[_LOOPBACK_ONLY] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(
        # "local": always a new cluster. Without it ray.init joins whatever cluster the machine
        # last started (/tmp/ray/ray_current_cluster), e.g. another process's test cluster.
        address="local",
        num_cpus=config.num_cpus,
        resources=config.resources or None,
        include_dashboard=False,
        configure_logging=False,
    )
    return True


@dataclass
class Doors:
    """Where a started service listens: gRPC, and the OpenAI API unless server.http_port is
    None."""

    grpc: Server
    http: HTTPServer | None


def run_service(config: TandemConfig, on_ready: Callable[[Doors], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; then drain, stop the actors and an embedded Ray cluster."""
    config.check_serving()  # no token on a network address: refused before anything starts
    # Off the target engines' CPUs before Ray starts: an embedded cluster's daemons inherit it.
    keep_off(config.target.core_binding())
    embedded = connect_ray(config.ray)
    coordinator = None
    try:
        coordinator = Coordinator.start(config)
        asyncio.run(_serve(coordinator, on_ready))
    finally:
        if coordinator is not None:
            coordinator.shutdown()
        if embedded:
            ray.shutdown()


def announcer(config: TandemConfig) -> Callable[[Doors], None]:
    """`run_service`'s on_ready for a terminal: where it listens, and a first command to try
    (tandem's launcher, benchmarks/launcher.py, reads these lines)."""

    def announce(doors: Doors) -> None:
        address = doors.grpc.address
        print(f"tandem listening on {address} (model {config.models.target})", flush=True)
        if doors.http is not None:
            print(f"OpenAI API on {doors.http.url}/v1", flush=True)
        print(f'try: tandem generate "Tell me about Ray." --address {address}', flush=True)

    return announce


async def _serve(coordinator: Coordinator, on_ready: Callable[[Doors], None] | None) -> None:
    """Serve until SIGTERM or SIGINT; then refuse new requests, drain the running ones for
    server.drain_timeout_s (Server.stop) and close both doors."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = start_metrics(coordinator)
    server = coordinator.config.server
    doors = Doors(Server(coordinator), None)
    if server.http_port is not None:
        doors.http = HTTPServer(coordinator, metrics)
    await doors.grpc.start()
    if doors.http is not None:
        await doors.http.start()
    if on_ready is not None:
        on_ready(doors)
    await stop.wait()
    await doors.grpc.stop()
    if doors.http is not None:
        await doors.http.stop()
