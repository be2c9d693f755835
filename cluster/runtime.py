"""Starting and stopping the whole service: Ray, the target pool, the gRPC server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import ray

from tandem.cluster.config import RayConfig, TandemConfig
from tandem.cluster.coordinator import Coordinator
from tandem.cluster.server import Server, serve_until_signal

log = logging.getLogger("tandem")


def connect_ray(config: RayConfig) -> bool:
    """Join the configured cluster, or start an embedded one; True when we started it."""
    if ray.is_initialized():
        return False
    if config.address:
        ray.init(address=config.address)
        return False
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


def run_service(config: TandemConfig, on_ready: Callable[[Server], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT; then drain, stop the actors and an embedded Ray cluster."""
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


async def _serve(coordinator: Coordinator, on_ready) -> None:
    await serve_until_signal(Server(coordinator), on_ready)
