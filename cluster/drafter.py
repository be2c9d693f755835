"""The drafter replica: a Ray actor around tandem.speculation.drafter.Drafter.

It receives the speculation config whole (in a DrafterSetup) and the registered source
factories, finds its torch devices, and builds every draft source the setup provides for.
A threaded actor (two threads) so that Mirror-SD hints land while a pre-drafting call runs;
a lock keeps every other call one at a time, which is what a single torch model wants.
Ray restarts it when it dies (the pool sets max_restarts); it comes back empty and the proposers
resend each request's history on their next step.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import ray

from tandem.cluster.figures import DrafterLoad
from tandem.speculation.drafter import Drafter
from tandem.speculation.protocol import DraftItem, DraftReply, Hint, PredraftPlan, PredraftReply
from tandem.speculation.registry import SourceFactory
from tandem.speculation.source import DrafterSetup


@dataclass(frozen=True)
class DrafterInfo:
    replica_id: str
    node_id: str
    modes: list[str]  # the modes its sources serve


class DrafterReplica:
    def __init__(
        self, replica_id: str, setup: DrafterSetup, factories: Mapping[str, SourceFactory]
    ) -> None:
        self.replica_id = replica_id
        pool = setup.config.drafters
        draft_model, target = setup.draft_model, setup.target
        if setup.models is not None:  # this node's own copies, never a path from another node
            store = setup.models.store()
            draft_model = store.draft_for(setup.models.target, pool.model, pool.derive_layers)
            if target is not None:
                target = store.resolve(setup.models.target)
        setup = dataclasses.replace(
            setup,
            devices=_devices(pool.device, pool.devices),
            draft_model=draft_model,
            target=target,
        )
        self.drafter = Drafter.from_setup(setup, factories)
        self.lock = threading.Lock()

    def ping(self) -> str:
        return self.replica_id

    def info(self) -> DrafterInfo:
        return DrafterInfo(
            self.replica_id, ray.get_runtime_context().get_node_id(), self.drafter.modes()
        )

    def draft(self, items: list[DraftItem]) -> list[DraftReply]:
        with self.lock:
            return self.drafter.draft(items)

    def predraft(self, items: list[DraftItem], plan: PredraftPlan) -> list[PredraftReply]:
        with self.lock:
            return self.drafter.predraft(items, plan)

    def hint(self, hints: dict[str, Hint]) -> None:
        self.drafter.hint(hints)  # no lock: a pre-drafting call is waiting for it

    def free(self, request_ids: list[str]) -> None:
        with self.lock:
            self.drafter.free(request_ids)

    def stats(self) -> DrafterLoad:
        return DrafterLoad(len(self.drafter.histories), self.drafter.hints_used)


def _devices(setting: str, count: int) -> tuple[str, ...]:
    """The torch devices of the draft model. "auto": the GPUs Ray gave this actor, if any, else
    the CPU; `count` devices of that kind (Ray numbers an actor's GPUs from 0)."""
    if setting == "auto":
        setting = "cuda" if ray.get_gpu_ids() else "cpu"
    if count == 1 or setting == "cpu":
        return (setting,)
    return tuple(f"{setting}:{i}" for i in range(count))
