"""The drafter replica: a Ray actor around tandem.speculation.drafter.Drafter.

A threaded actor (two threads) so that Mirror-SD hints land while a pre-drafting call runs;
a lock keeps every other call one at a time, which is what a single torch model wants.
Ray restarts it when it dies (the pool sets max_restarts); it comes back empty and the proposers
resend each request's history on their next step.
"""

from __future__ import annotations

import threading
from typing import Any

from tandem.speculation.drafter import Drafter
from tandem.speculation.protocol import DraftItem, DraftReply, Hint, PredraftPlan, PredraftReply


class DrafterReplica:
    def __init__(self, replica_id: str, settings: dict[str, Any]) -> None:
        self.replica_id = replica_id
        model = None
        if settings["model_path"]:
            from tandem.speculation.model_drafter import ModelDrafter

            model = ModelDrafter(
                settings["model_path"],
                device=_device(settings["device"]),
                stop_below=settings["stop_below"],
            )
        self.drafter = Drafter(
            model=model,
            ngram_min=settings["ngram_min"],
            ngram_max=settings["ngram_max"],
            max_requests=settings["max_requests"],
        )
        self.calls = 0
        self.lock = threading.Lock()

    def ping(self) -> str:
        return self.replica_id

    def info(self) -> dict[str, Any]:
        import ray

        return {
            "replica_id": self.replica_id,
            "node_id": ray.get_runtime_context().get_node_id(),
            "modes": [m.value for m in self.drafter.modes()],
        }

    def draft(self, items: list[DraftItem]) -> list[DraftReply]:
        with self.lock:
            self.calls += 1
            return self.drafter.draft(items)

    def predraft(self, items: list[DraftItem], plan: PredraftPlan) -> list[PredraftReply]:
        with self.lock:
            return self.drafter.predraft(items, plan)

    def hint(self, hints: dict[str, Hint]) -> None:
        self.drafter.hint(hints)  # no lock: a pre-drafting call is waiting for it

    def free(self, request_ids: list[str]) -> None:
        with self.lock:
            self.drafter.free(request_ids)

    def stats(self) -> dict[str, Any]:
        return {
            "replica_id": self.replica_id,
            "requests": len(self.drafter.requests),
            "mirror_hints_used": self.drafter.hints_used,
        }


def _device(setting: str) -> str:
    """ "auto": the GPU Ray gave this actor, if any, else the CPU."""
    if setting != "auto":
        return setting
    import ray

    return "cuda" if ray.get_gpu_ids() else "cpu"
