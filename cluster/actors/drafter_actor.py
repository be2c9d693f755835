"""The drafter replica: a Ray actor around tandem.speculation.drafter.Drafter.

It receives the speculation config whole (in a DrafterSetup) and the registered source
factories, finds its torch devices, and builds every draft source the setup provides for.
The proposers' per-step messages arrive on its socket (tandem.cluster.transport.draft_channel), not
as Ray calls: they run one at a time, in order, which is what a single torch model wants, while
Mirror-SD hints land at once, during a pre-draft. Ray carries the rest (info, stats, where the
socket is) and restarts the actor when it dies (the pool sets max_restarts); it comes back empty,
on a new socket, and the proposers resend each request's history once they have found it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray

from tandem.cluster.config.cpus import CoreBinding, compute_threads, keep_off
from tandem.cluster.config.deployment import ModelsConfig
from tandem.cluster.telemetry.figures import DrafterLoad
from tandem.cluster.transport.draft_channel import DraftServer
from tandem.cluster.transport.link import LinkProcess
from tandem.cluster.transport.sockets import Endpoint
from tandem.speculation.drafter import Drafter
from tandem.speculation.registry import SourceFactory
from tandem.speculation.source import DrafterSetup
from tandem.speculation.wire import Kind


@dataclass(frozen=True)
class DrafterInfo:
    replica_id: str
    node_id: str
    modes: list[str]  # the modes its sources serve
    endpoint: Endpoint  # where its socket listens


class DrafterReplica:
    def __init__(
        self,
        replica_id: str,
        setup: DrafterSetup,
        factories: Mapping[str, SourceFactory],
        binding: CoreBinding | None = None,
        models: ModelsConfig | None = None,
    ) -> None:
        """`binding`: the target engines' CPUs, which this process keeps off. `models`: where
        this replica resolves its own copies of the draft and the target, on its node (None: the
        paths of `setup` as given: one machine, tests)."""
        keep_off(binding or CoreBinding())
        self.replica_id = replica_id
        pool = setup.config.drafters
        compute_threads(pool.resources.get("CPU", 1))  # a model drafter's forward
        draft_model, target = setup.draft_model, setup.target
        if models is not None:  # this node's own copies, never a path from another node
            store = models.store()
            draft_model = store.draft_for(models.target, pool.model, pool.derive_layers)
            if target is not None:
                target = store.resolve(models.target)
        setup = dataclasses.replace(
            setup,
            devices=_devices(pool.device, pool.devices),
            draft_model=draft_model,
            target=target,
        )
        self.drafter = Drafter.from_setup(setup, factories)
        host = ray.util.get_node_ip_address()
        self.server = DraftServer(host, self._dispatch, inline=(Kind.HINT,))
        # With an emulated link, the targets reach the socket only through its relay.
        self.relay = (
            LinkProcess(host, self.server.endpoint.address, pool.link) if pool.link else None
        )

    def _dispatch(self, kind: Kind, body: Any) -> Any:
        if kind == Kind.DRAFT:
            return self.drafter.draft(list(body))
        if kind == Kind.PREDRAFT:
            items, plan = body
            return self.drafter.predraft(list(items), plan)
        if kind == Kind.HINT:
            return self.drafter.hint(body)
        if kind == Kind.FREE:
            return self.drafter.free(list(body))
        if kind == Kind.PING:
            return None
        raise ValueError(f"a drafter does not take {kind.name} messages")

    def endpoint(self) -> Endpoint:
        """Where the targets reach this replica's socket."""
        if self.relay is None:
            return self.server.endpoint
        return Endpoint(self.relay.address, self.server.endpoint.password)

    def info(self) -> DrafterInfo:
        return DrafterInfo(
            self.replica_id,
            ray.get_runtime_context().get_node_id(),
            self.drafter.modes(),
            self.endpoint(),
        )

    def stats(self) -> DrafterLoad:
        return DrafterLoad(
            len(self.drafter.histories), self.drafter.hints_used, self.drafter.learning()
        )

    def drain(self) -> None:
        """The service is stopping: online learning checkpoints its head."""
        self.drafter.close()


def _devices(setting: str, count: int) -> tuple[str, ...]:
    """The torch devices of the draft model. "auto": the GPUs Ray gave this actor, if any, else
    the CPU; `count` devices of that kind (Ray numbers an actor's GPUs from 0)."""
    if setting == "auto":
        setting = "cuda" if ray.get_gpu_ids() else "cpu"
    if count == 1 or setting == "cpu":
        return (setting,)
    return tuple(f"{setting}:{i}" for i in range(count))
