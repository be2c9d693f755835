"""The target-drafter exchange alone: a round trip's time and size, by way of carrying it.

    python -m tandem.benchmarks.drafter_exchange --rounds 400 --batches 1,16

Two Ray actors on the local node, like a target replica and a drafter replica: the "target"
sends, from a thread of its own (as the engine thread does), a realistic per-step batch (each
request's new tokens and the target's top candidates) and waits for the drafts; the "drafter"
decodes the batch and answers without drafting, so only the way of carrying it is timed. Ways,
alternating in blocks so that a busy machine slows them alike:

- `actor-pickle`: a Ray actor call with the protocol's dataclasses (tandem before issue 14);
- `actor-msgpack`: a Ray actor call carrying the wire format's bytes;
- `compiled-graph`: a Ray Compiled Graph over the same actor method (shared-memory channels);
- `socket`: tandem's drafter socket (tandem.cluster.transport.draft_channel), which tandem keeps.

Also the bytes of one step's messages, pickled (what Ray sent) and in the wire format.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import statistics
import time
from collections.abc import Callable
from typing import Any

import ray

from tandem.cluster.transport.draft_channel import DraftChannel, DraftServer
from tandem.speculation.protocol import DraftItem, DraftReply
from tandem.speculation.wire import CODEC, Kind

WAYS = ("actor-pickle", "actor-msgpack", "compiled-graph", "socket")
BLOCK = 25  # round trips of one way before the next way's


def step_batch(requests: int) -> list[DraftItem]:
    """One engine step's batch: per request the tokens it committed (a verified block: 3),
    and the target's top 8 candidates at the 4 positions it verified."""
    return [
        DraftItem(
            f"chatcmpl-{i:08x}",
            512 + i,
            (2384, 314, 28),
            4,
            "ngram",
            candidates=tuple((t, tuple(range(t, t + 8))) for t in (28, 314, 2384, 11)),
        )
        for i in range(requests)
    ]


def answer(items: Any) -> list[DraftReply]:
    return [DraftReply(item.request_id, (11, 12, 13, 14)) for item in items]


class EchoDrafter:
    """A drafter replica that answers at once, through Ray or through its socket. The socket's
    threads and a Compiled Graph's execution loop do not share an actor here (measured: the
    graph's first execution hung when they did), so each way has a drafter of its own."""

    def __init__(self, socket: bool) -> None:
        if socket:
            host = ray.util.get_node_ip_address()
            self.server = DraftServer(host, lambda kind, body: answer(body))

    def endpoint(self) -> Any:
        return self.server.endpoint

    def draft(self, items: list[DraftItem]) -> list[DraftReply]:
        return answer(items)

    def handle(self, message: bytes) -> bytes:
        kind, seq, body = CODEC.decode(message)
        return CODEC.encode(kind, seq, answer(body))


class Target:
    """The caller's side, timing from a plain thread as tandem's engine thread does."""

    def __init__(self, drafter: Any, socketed: Any) -> None:
        self.drafter = drafter
        self.socketed = socketed

    async def measure(self, rounds: int, requests: int) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._measure, rounds, requests)

    def _measure(self, rounds: int, requests: int) -> dict[str, Any]:
        from ray.dag import InputNode

        items = step_batch(requests)
        message = CODEC.encode(Kind.DRAFT, 1, items)
        channel = DraftChannel(ray.get(self.socketed.endpoint.remote()))
        with InputNode() as node:
            graph = self.drafter.handle.bind(node).experimental_compile()

        def actor_call(method: Any, payload: Any) -> Callable[[], Any]:
            def call() -> Any:
                ref = method.remote(payload)
                ray.wait([ref], timeout=10)
                return ray.get(ref)

            return call

        def over_socket() -> Any:
            return channel.call(Kind.DRAFT, items, 10.0)

        ways: dict[str, Callable[[], Any]] = {
            "actor-pickle": actor_call(self.drafter.draft, items),
            "actor-msgpack": actor_call(self.drafter.handle, message),
            "compiled-graph": lambda: ray.get(graph.execute(message), timeout=10),
            "socket": over_socket,
        }
        times: dict[str, list[float]] = {way: [] for way in ways}
        try:
            for _ in range(max(1, rounds // BLOCK)):
                for way, call in ways.items():
                    for _ in range(BLOCK):
                        start = time.perf_counter()
                        call()
                        times[way].append(time.perf_counter() - start)
        finally:
            graph.teardown()
            channel.close()
        reply = CODEC.encode(Kind.DRAFT, 1, answer(items))
        return {
            "requests_per_step": requests,
            "bytes_per_step": {
                "pickle": len(pickle.dumps(items)) + len(pickle.dumps(answer(items))),
                "wire": len(message) + len(reply),
            },
            "round_trip_ms": {
                way: {
                    "p50": 1e3 * statistics.median(values),
                    "mean": 1e3 * statistics.fmean(values),
                    "rounds": len(values),
                }
                for way, values in times.items()
            },
        }


def run(rounds: int, batches: list[int]) -> dict[str, Any]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        drafter_class = ray.remote(num_cpus=0)(EchoDrafter)
        drafter, socketed = drafter_class.remote(False), drafter_class.remote(True)
        ray.get(socketed.endpoint.remote())
        target = ray.remote(num_cpus=0)(Target).remote(drafter, socketed)
        results = [ray.get(target.measure.remote(rounds, n)) for n in batches]
    finally:
        ray.shutdown()
    return {"load_average": list(os.getloadavg()), "results": results}


def table(report: dict[str, Any]) -> str:
    lines = [
        "| requests/step | " + " | ".join(f"{w} p50 / mean ms" for w in WAYS) + " | bytes/step "
        "pickle | bytes/step wire |",
        "|---|" + "---|" * (len(WAYS) + 2),
    ]
    for r in report["results"]:
        times = r["round_trip_ms"]
        cells = [f"{times[w]['p50']:.3f} / {times[w]['mean']:.3f}" for w in WAYS]
        size = r["bytes_per_step"]
        lines.append(
            f"| {r['requests_per_step']} | " + " | ".join(cells) + f" | {size['pickle']} | "
            f"{size['wire']} |"
        )
    return "\n".join(lines) + f"\n\nload average {report['load_average']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=400, help="round trips per way (400)")
    parser.add_argument("--batches", default="1,16", help="requests per step (1,16)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    report = run(args.rounds, [int(n) for n in args.batches.split(",")])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
