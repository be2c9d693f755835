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

The drafter runs the relay in a process of its own (`LinkProcess`): its timing is then not held
up by the drafter's work on the same interpreter, and, like a real link, it fails on its own. A
stopped relay (SIGSTOP) is a link that carries nothing until it is continued (SIGCONT), the
connections held open meanwhile, as TCP keeps them through a short outage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import select
import subprocess
import sys
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
        except asyncio.CancelledError:
            pass  # the relay closes: ends as a connection does, not as a cancelled task
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
                await _sleep_until(at)
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


async def _sleep_until(at: float) -> None:
    """Sleep until time.monotonic() reaches `at`, to a fraction of a millisecond: the event
    loop's own timers wake up to a millisecond late (epoll's resolution, rounded up), which
    made a 5 ms link 6.7 ms. The last millisecond is slept outside the loop (a relay carries
    one drafter's traffic: nothing else waits on it meanwhile)."""
    if at - time.monotonic() > 0.001:
        await asyncio.sleep(at - time.monotonic() - 0.001)
    time.sleep(max(0.0, at - time.monotonic()))


class LinkProcess:
    """A `LinkRelay` in a child process (`python -m tandem.cluster.transport.link`), ended by
    `close` or when this process is gone. Its `address` is the relay's, `pid` its process."""

    def __init__(self, host: str, upstream: str, link: LinkConfig) -> None:
        args = [host, upstream, str(link.rtt_ms), str(link.mbps), str(os.getpid())]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tandem.cluster.transport.link", *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self._process.pid
        ready, _, _ = select.select([self._process.stdout], [], [], 60)
        line = self._process.stdout.readline().strip() if ready else ""
        if not line.startswith("tcp://"):
            self.close()
            raise RuntimeError(f"the link relay for {upstream} did not start ({line or 'silent'})")
        self.address = line

    def close(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()  # a stopped relay ignores SIGTERM until continued
            self._process.wait(5)
        if self._process.stdout is not None:
            self._process.stdout.close()


def main() -> None:
    """The relay process: prints its address, relays until its parent is gone."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("upstream")
    parser.add_argument("rtt_ms", type=float)
    parser.add_argument("mbps", type=float)
    parser.add_argument("parent", type=int)
    args = parser.parse_args()
    relay = LinkRelay(args.host, args.upstream, LinkConfig(rtt_ms=args.rtt_ms, mbps=args.mbps))
    print(relay.address, flush=True)
    try:
        while os.getppid() == args.parent:  # re-parented: the drafter died
            time.sleep(0.5)
    finally:
        relay.close()


if __name__ == "__main__":
    main()
