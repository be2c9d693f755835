"""An emulated network link in front of a drafter's socket: a TCP relay that delivers every byte
half a round trip late each way, at a bounded rate.

The machines tandem is developed on have no netem (the kernel's delay and rate emulation), and a
second Ray node on the same machine reaches the first over loopback in microseconds. To measure
what a link between a target and its drafters costs (and how much of it pipelining hides), the
drafter pool's `link` setting puts this relay between them: the drafter publishes the relay's
address instead of its socket's, so every message of the data plane crosses it, and nothing
else (Ray's control plane stays direct). It forwards bytes, not messages, so ZMQ's handshake
and password check pass through unchanged.

Each direction is one queue: a chunk read at time t leaves the sender side once the link has
serialised everything before it (size / rate) and reaches the other end rtt / 2 later.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from tandem.cluster.config.pools import LinkConfig

CHUNK = 64 * 1024


class LinkRelay:
    """Listens on `host` (a random port) and relays each connection to `upstream`
    ("tcp://host:port") over an emulated `link`, on a thread of its own."""

    def __init__(self, host: str, upstream: str, link: LinkConfig) -> None:
        self.link = link
        self._upstream = upstream.removeprefix("tcp://").rsplit(":", 1)
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()  # both ends of every connection
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(host,), daemon=True, name="link")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"the link relay for {upstream} did not start listening on {host}")
        self.address = f"tcp://{host}:{self._port}"

    def _run(self, host: str) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, host, 0))
        self._port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self._upstream
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._direction(reader, up_writer), self._direction(up_reader, writer)
            )
        finally:
            self._writers -= {writer, up_writer}

    async def _direction(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Bytes from `reader` to `writer` over the link, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._deliver(queue, writer))
        free_at = 0.0  # when the link has serialised everything queued so far
        try:
            while chunk := await reader.read(CHUNK):
                now = time.monotonic()
                serialise = len(chunk) * 8 / (self.link.mbps * 1e6) if self.link.mbps else 0.0
                free_at = max(now, free_at) + serialise
                await queue.put((free_at + self.link.rtt_ms / 2000, chunk))
        except ConnectionError:
            pass
        finally:
            await queue.put((0.0, b""))  # the end: close the other side once delivered
            await sender

    async def _deliver(self, queue: asyncio.Queue, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                at, chunk = await queue.get()
                if not chunk:
                    break
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                writer.write(chunk)
                await writer.drain()
        writer.close()

    async def _shutdown(self) -> None:
        """Stop listening, close every connection, and let its tasks finish."""
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        if self._loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
