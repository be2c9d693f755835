"""The drafter replica: a Ray actor around tandem.speculation.drafter.Drafter.

A synchronous actor: Ray runs its calls one at a time, which is what a single torch model wants.
Ray restarts it when it dies (the pool sets max_restarts); it comes back empty and the proposers
resend each request's history on their next step.
"""

from __future__ import annotations

from typing import Any

from tandem.speculation.drafter import Drafter
from tandem.speculation.protocol import DraftItem, DraftReply


class DrafterReplica:
    def __init__(self, replica_id: str, settings: dict[str, Any]) -> None:
        self.replica_id = replica_id
        model = None
        if settings["model_path"]:
            from tandem.speculation.easyspec import load_model_drafter

            devices = _devices(settings["device"], settings["devices"])
            model = load_model_drafter(settings["model_path"], settings["layer_groups"], devices)
        self.drafter = Drafter(
            model=model,
            ngram_min=settings["ngram_min"],
            ngram_max=settings["ngram_max"],
            max_requests=settings["max_requests"],
        )
        self.calls = 0

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
        self.calls += 1
        return self.drafter.draft(items)

    def free(self, request_ids: list[str]) -> None:
        self.drafter.free(request_ids)

    def stats(self) -> dict[str, Any]:
        return {"replica_id": self.replica_id, "requests": len(self.drafter.requests)}


def _devices(setting: str, count: int) -> list[str]:
    """The torch devices of the draft model. "auto": the GPUs Ray gave this actor, if any, else
    the CPU; `count` devices of that kind (Ray numbers an actor's GPUs from 0)."""
    if setting == "auto":
        import ray

        setting = "cuda" if ray.get_gpu_ids() else "cpu"
    if count == 1 or setting == "cpu":
        return [setting]
    return [f"{setting}:{i}" for i in range(count)]
