"""`tandem serve`'s HTTP door: the OpenAI app (openai_app.py) under uvicorn, in the gRPC
server's event loop, on server.host and server.http_port with the same TLS (mutual TLS with a
client CA) as gRPC.

The socket is bound here, before uvicorn starts, so a port in use is a ConfigError naming the
key (uvicorn would exit the process), and port 0 gives a port this process can announce.
Signals stay with the service (service.py): it drains both doors on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl

import uvicorn

from tandem.cluster.config.errors import ConfigError
from tandem.cluster.frontdoor import openai_app
from tandem.cluster.frontdoor.coordinator import Coordinator
from tandem.cluster.frontdoor.prometheus import Metrics

log = logging.getLogger("tandem.server")


class _Embedded(uvicorn.Server):
    """uvicorn without its signal handlers: the service owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class HTTPServer:
    """The OpenAI API on server.http_port; `url` is where it listens once started."""

    def __init__(self, coordinator: Coordinator, metrics: Metrics) -> None:
        server = coordinator.config.server
        family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((server.host.strip("[]"), server.http_port))
        except OSError as exc:
            self.socket.close()
            where = f"{server.host}:{server.http_port}"
            raise ConfigError(f"server.http_port: cannot bind {where}: {exc.strerror}") from None
        tls = server.tls
        config = uvicorn.Config(
            openai_app.build(coordinator, metrics),
            log_level="warning",
            access_log=False,
            lifespan="off",
            ssl_certfile=tls.cert if tls else None,
            ssl_keyfile=tls.key if tls else None,
            ssl_ca_certs=tls.client_ca if tls and tls.client_ca else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.client_ca else ssl.CERT_NONE,
        )
        self.uvicorn = _Embedded(config)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://{server.host}:{self.socket.getsockname()[1]}"
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.uvicorn.serve(sockets=[self.socket]))
        while not self.uvicorn.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.02)
        log.info("OpenAI API on %s/v1", self.url)

    async def stop(self) -> None:
        """Stop listening and close open connections (the coordinator drained them first)."""
        if self._task is None:
            return
        self.uvicorn.should_exit = True
        await self._task
        self.socket.close()
