"""Pools of actors in the config: the target replicas and the drafter replicas, each placed on
Ray resources (one placement-group bundle per replica)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from tandem.cluster.config.cpus import BIND, CoreBinding
from tandem.plugins.engine_setup import engine_arg_names
from tandem.speculation import registry
from tandem.speculation.settings import DrafterConfig, PositiveInt, Section


def _check_resources(value: dict[str, float]) -> dict[str, float]:
    if not value:
        raise ValueError("needs at least one resource, e.g. {CPU: 1}")
    for name, amount in value.items():
        if amount <= 0:
            raise ValueError(f"resource {name!r} must be > 0, got {amount}")
    return value


# Ray resources of one replica's placement-group bundle: {"CPU": 1}, {"GPU": 1, "CPU": 4}, or any
# custom resource a node advertises ({"npu": 1}).
Resources = Annotated[dict[str, float], AfterValidator(_check_resources)]


# Ray's placement strategies, lower case; the upper-case spelling of older configs is accepted.
Strategy = Annotated[
    Literal["pack", "spread", "strict_pack", "strict_spread"],
    BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v),
]


# How much of Ray's `accelerator_type:<X>` node resource a bundle asks for (Ray's own convention:
# nodes advertise 1, requests take a sliver, so it selects nodes without limiting the count).
ACCELERATOR_TYPE_SHARE = 0.001
_NOT_DEVICES = ("CPU", "memory", "object_store_memory")


# Keys tandem sets itself: a user value would silently disagree with the rest of the config.
_ENGINE_ARGS_OWNED = {
    "model": "set models.target instead",
    "tokenizer": "the target's own tokenizer is used",
    "speculative_config": "tandem configures speculation itself",
}


class _PoolConfig(Section):
    """A pool of identical actors, one placement-group bundle each."""

    replicas: PositiveInt = 1
    resources: Resources = Field(default_factory=lambda: {"CPU": 1.0})
    # Only nodes of this accelerator kind (Ray's `accelerator_type:<X>`, e.g. A100, TPU-V4).
    accelerator_type: str | None = None
    # Accelerator devices one replica uses (a resource of `resources` must hold that many).
    devices: PositiveInt = 1
    strategy: Strategy = "pack"
    env: dict[str, str] = Field(default_factory=dict)  # environment of each replica's process

    @model_validator(mode="after")
    def _devices_reserved(self) -> _PoolConfig:
        if self.devices > 1 and not any(
            amount >= self.devices
            for name, amount in self.resources.items()
            if name not in _NOT_DEVICES
        ):
            raise ValueError(
                f"devices={self.devices} needs an accelerator resource of at least "
                f"{self.devices} per replica in resources, e.g. {{GPU: {self.devices}}}"
            )
        return self

    def bundle(self) -> dict[str, float]:
        """The Ray resources of one replica's placement-group bundle."""
        bundle = dict(self.resources)
        if self.accelerator_type:
            bundle[f"accelerator_type:{self.accelerator_type}"] = ACCELERATOR_TYPE_SHARE
        return bundle


class TargetPoolConfig(_PoolConfig):
    """Target replicas: one Ray actor each, holding one in-process vLLM engine."""

    # Passed through to vllm.EngineArgs; checked against its fields at start.
    engine_args: dict[str, Any] = Field(
        default_factory=lambda: {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048}
    )
    # vLLM reads its platform settings from the environment.
    env: dict[str, str] = Field(
        default_factory=lambda: {
            "VLLM_CPU_KVCACHE_SPACE": "1",
            # auto (vLLM's default): the engine computes on a core of its own
            # (tandem.cluster.config.cpus).
            "VLLM_CPU_OMP_THREADS_BIND": "auto",
            "VLLM_LOGGING_LEVEL": "WARNING",
        }
    )

    max_restarts: int = Field(-1, ge=-1)  # Ray restarts a dead target replica (-1: always)

    @field_validator("env")
    @classmethod
    def _known_binding(cls, value: dict[str, str]) -> dict[str, str]:
        if BIND in value:
            try:
                CoreBinding(value[BIND])
            except ValueError as exc:
                raise ValueError(f"{BIND}: nobind, auto or CPU lists; {exc}") from None
        return value

    def core_binding(self) -> CoreBinding:
        """Where each replica's engine computes on its node (tandem.cluster.config.cpus). `auto`
        binds CPU targets only: like vLLM, which reads the variable on its CPU backend alone, a pool
        that asks for GPUs or an accelerator type is left where the OS puts it (its forward is
        the device's; a CPU list still binds it, as asked)."""
        accelerated = "GPU" in self.resources or self.accelerator_type is not None
        return CoreBinding.of(self.env, self.resources.get("CPU", 1), self.replicas, accelerated)

    @field_validator("engine_args")
    @classmethod
    def _known_engine_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in _ENGINE_ARGS_OWNED:
                raise ValueError(f"key {key!r} is not allowed here: {_ENGINE_ARGS_OWNED[key]}")
        unknown = sorted(set(value) - engine_arg_names())
        if unknown:
            raise ValueError(f"unknown vLLM engine argument(s): {', '.join(unknown)}")
        return value


class LinkConfig(Section):
    """An emulated link between the targets and a pool's drafters (a relay in front of each
    drafter's socket: tandem.cluster.transport.link), for measuring what distance costs."""

    rtt_ms: float = Field(0.0, ge=0)  # round trip: each direction waits half of it
    mbps: float = Field(0.0, ge=0)  # each direction's rate, megabits per second (0: unbounded)


class DraftPoolConfig(_PoolConfig, DrafterConfig):
    """Drafter replicas: Ray actors on their own bundles, serving every drafter kind."""

    # spread lets drafters land on other nodes (and other accelerator kinds) than the target.
    strategy: Strategy = "spread"
    max_restarts: int = Field(-1, ge=-1)  # Ray restarts a dead drafter (-1: always)
    link: LinkConfig | None = None  # None: the drafters' sockets, reached directly

    def offers(self, mode: str) -> bool:
        """Whether this pool provides for a mode, as far as the config can tell (an "auto"
        EAGLE-3 head exists only for targets tandem ships one for; the drafters confirm)."""
        return registry.offered(mode, self)
