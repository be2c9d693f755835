"""The drafter replica: a Ray actor around tandem.speculation.drafter.Drafter.

A threaded actor (two threads) so that Mirror-SD hints land while a pre-drafting call runs;
a lock keeps every other call one at a time, which is what a single torch model wants.
Ray restarts it when it dies (the pool sets max_restarts); it comes back empty and the proposers
resend each request's history on their next step.
"""

from __future__ import annotations

import threading
from typing import Any

from tandem.speculation.controlled import ControlledDrafter, load_continuations
from tandem.speculation.drafter import Drafter
from tandem.speculation.protocol import DraftItem, DraftReply, Hint, PredraftPlan, PredraftReply
from tandem.speculation.recycle import RecycleTable
from tandem.speculation.suffix import SuffixDrafter


class DrafterReplica:
    def __init__(self, replica_id: str, settings: dict[str, Any]) -> None:
        self.replica_id = replica_id
        model = None
        models = settings["models"]  # ModelsConfig: this node resolves its own copy
        path = models.store().draft_for(
            models.target, settings["draft_model"], settings["derive_layers"]
        )
        if path is not None:
            from tandem.speculation.easyspec import load_model_drafter

            devices = _devices(settings["device"], settings["devices"])
            model = load_model_drafter(
                str(path), settings["layer_groups"], devices, settings["stop_below"]
            )
        suffix = settings["suffix"]
        self.drafter = Drafter(
            model=model,
            ngram_min=settings["ngram_min"],
            ngram_max=settings["ngram_max"],
            max_requests=settings["max_requests"],
            suffix=SuffixDrafter(suffix["max_pattern"], suffix["min_prob"]),
            suffix_depth=suffix["max_depth"],
            suffix_global_tokens=suffix["global_tokens"],
            recycle=RecycleTable(settings["vocab_size"], settings["recycle_top_k"]),
            controlled=_controlled(settings["controlled"], settings["vocab_size"]),
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


def _controlled(settings: dict[str, Any] | None, vocab_size: int) -> ControlledDrafter | None:
    """The bench's controlled-acceptance drafter, when the (measurement) config asks for it."""
    if settings is None:
        return None
    return ControlledDrafter(
        load_continuations(settings["continuations"]),
        settings["alpha"],
        settings["cost_ms"],
        vocab_size,
        settings["seed"],
    )


def _devices(setting: str, count: int) -> list[str]:
    """The torch devices of the draft model. "auto": the GPUs Ray gave this actor, if any, else
    the CPU; `count` devices of that kind (Ray numbers an actor's GPUs from 0)."""
    if setting == "auto":
        import ray

        setting = "cuda" if ray.get_gpu_ids() else "cpu"
    if count == 1 or setting == "cpu":
        return [setting]
    return [f"{setting}:{i}" for i in range(count)]
