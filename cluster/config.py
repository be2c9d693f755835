"""One typed config object describes a tandem deployment.

The same YAML drives the CLI, Ray Serve and KubeRay. Every section refuses unknown keys, and every
error names the key it is about (pydantic reports the path, e.g. `target.replicas`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tandem.cluster.cpus import BIND, CoreBinding
from tandem.models import DEFAULT_MODEL, ModelStore, default_models_dir
from tandem.speculation.protocol import Mode

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]

# Keys tandem sets itself: a user value would silently disagree with the rest of the config.
_ENGINE_ARGS_OWNED = {
    "model": "set models.target instead",
    "tokenizer": "the target's own tokenizer is used",
    "speculative_config": "tandem configures speculation itself",
}


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelsConfig(_Section):
    """Which model the target serves, and where prepared models live."""

    target: str = DEFAULT_MODEL  # a built-in model name or a local Hugging Face folder
    dir: Path | None = None  # model cache; default $TANDEM_MODELS_DIR or the user cache dir
    # Where every node gets models it lacks: None, each node prepares built-in models and
    # derives drafts in its own `dir` (or finds them baked into its image there); a folder (a
    # mounted volume) or a URI pyarrow reads (s3://, gs://, hdfs://): each node copies a named
    # model from <source>/<name> into its own `dir` before use. No node relies on files another
    # node wrote.
    source: str | None = None

    def cache_dir(self) -> Path:
        return self.dir.expanduser() if self.dir else default_models_dir()

    def store(self) -> ModelStore:
        """This node's view of the models: resolved in the calling process, on its own disk."""
        return ModelStore(self.cache_dir(), self.source)


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


class _PoolConfig(_Section):
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
            # auto (vLLM's default): the engine computes on a core of its own (tandem.cluster.cpus).
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
        """Where each replica's engine computes on its node (tandem.cluster.cpus). `auto` binds
        CPU targets only: like vLLM, which reads the variable on its CPU backend alone, a pool
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
        unknown = sorted(set(value) - _engine_arg_names())
        if unknown:
            raise ValueError(f"unknown vLLM engine argument(s): {', '.join(unknown)}")
        return value


def _engine_arg_names() -> set[str]:
    from vllm.engine.arg_utils import EngineArgs

    return {f.name for f in dataclasses.fields(EngineArgs)}


class SuffixConfig(_Section):
    """SuffixDecoding's tries (speculation/suffix.py)."""

    max_depth: int = Field(16, ge=2)  # longest substring kept: the longest pattern plus draft
    max_pattern: PositiveInt = 8  # longest suffix of the context matched
    min_prob: float = Field(0.1, ge=0, le=1)  # stop drafting below this running probability
    global_tokens: int = Field(100_000, ge=0)  # recent outputs shared across requests (0: none)


class DraftPoolConfig(_PoolConfig):
    """Drafter replicas: Ray actors on their own bundles, serving every drafter kind."""

    # spread lets drafters land on other nodes (and other accelerator kinds) than the target.
    strategy: Strategy = "spread"
    # The draft model: a built-in name or a HF folder sharing the target's tokenizer. Without
    # one, tandem derives it from the target's first `derive_layers` layers (0: no model drafter).
    model: str | None = None
    derive_layers: int = Field(4, ge=0)
    device: str = "auto"  # torch device of the draft model; auto: the actor's GPU if it has one
    # Adaptive draft length (SpecDec++): the model drafter ends a block before a token whose
    # probability under the draft model is below this (0: always draft k).
    stop_below: float = Field(0.0, ge=0.0, lt=1.0)
    # EasySpec layer-parallel drafting (speculation/easyspec.py): the size of every layer group,
    # or each group's size in order. 1: the ordinary, sequential model drafter.
    layer_groups: PositiveInt | Annotated[list[PositiveInt], Field(min_length=1)] = 1
    # Mode `eagle`: an EAGLE-3 head folder in the standard format (vLLM's eagle3), "auto" for the
    # head tandem ships for the target (if any), or null for none.
    eagle_head: str | None = "auto"
    ngram_min: PositiveInt = 1
    ngram_max: PositiveInt = 4
    max_requests: PositiveInt = 1024  # per-request states kept; the least recent are evicted
    suffix: SuffixConfig = Field(default_factory=SuffixConfig)
    max_restarts: int = Field(-1, ge=-1)  # Ray restarts a dead drafter (-1: always)

    @model_validator(mode="after")
    def _ngram_order(self) -> DraftPoolConfig:
        if self.ngram_min > self.ngram_max:
            raise ValueError(f"ngram_min ({self.ngram_min}) exceeds ngram_max ({self.ngram_max})")
        return self

    def has_model(self) -> bool:
        return self.model is not None or self.derive_layers > 0

    def offers(self, mode: Mode) -> bool:
        """Whether this pool provides for a mode: as far as the config can tell (an "auto"
        EAGLE-3 head exists only for targets tandem ships one for; the drafters confirm)."""
        if mode.needs_draft_model:
            return self.has_model()
        if mode.needs_features:
            return self.eagle_head is not None
        return True


class PipelineConfig(_Section):
    """Pipelined speculation (PEARL, SSD): while the target verifies a block, the drafter
    pre-drafts the next one for the block's likeliest outcomes (the speculation cache)."""

    enabled: bool = True  # the default for requests; each may turn it off
    # Measured (BENCHMARKS.md, "Speculation-cache budget"): with ngram, 1/1, 4/2 and 8/4 give
    # 8%, 23% and 30% hits and the same speed; a drafter that costs time is bounded by the
    # verification window before these counts.
    outcomes: PositiveInt = 4  # outcomes pre-drafted per request and step
    fanout: PositiveInt = 2  # guesses per rejected position for the target's token there


class MirrorConfig(_Section):
    """Mirror-SD's correction channel: an early exit at `layer` of the target (Llama
    architecture) sends its top-κ tokens for the block under verification to the drafters
    mid-forward, so they pre-draft the outcomes the target is heading for."""

    enabled: bool = False
    layer: int = Field(20, ge=0)  # the early exit (0-based decoder layer)
    top_k: PositiveInt = 4  # κ


class DraftLengthConfig(_Section):
    """How draft length follows the batch size (tandem.speculation.policy): verifying drafts
    stops paying once the target's forward pass is compute-bound."""

    # Measured on the CPU default (ngram drafts, `tandem bench --config
    # benchmarks/configs/draft-length-off.yaml --concurrency 1,2,3,4,8,16,32`): drafting pays at
    # 1 and 2 streams (1.26x, 1.31x the target alone) and loses from 3 (0.95x; 0.73x at 32).
    # Other hardware and drafters move this point: measure it for yours.
    full_until_batch: PositiveInt = 2  # batches up to this size draft each request's full k
    off_above_batch: PositiveInt = 2  # larger batches draft nothing
    # Per request, the length (up to the above) with the most tokens per unit of target time at
    # its acceptance so far, none while drafts keep failing (tandem.speculation.policy).
    adaptive: bool = False
    # What each drafted token adds to a verification step, in one-token steps: `tandem bench`
    # prints the cost of a 5-token step; on the CPU default it is 1.28x a 1-token one, so 0.07.
    verify_cost: NonNegativeFloat = 0.07

    @model_validator(mode="after")
    def _ordered(self) -> DraftLengthConfig:
        if self.full_until_batch > self.off_above_batch:
            raise ValueError(
                f"full_until_batch ({self.full_until_batch}) exceeds "
                f"off_above_batch ({self.off_above_batch})"
            )
        return self


def _known_mode(value: str) -> str:
    """A mode of tandem.speculation.protocol.Mode, or of a source registered in this process."""
    from tandem.speculation.registry import mode_names

    if value not in mode_names():
        raise ValueError(f"unknown mode {value!r}; one of {', '.join(mode_names())}")
    return value


class SamplerConfig(_Section):
    """Who verifies drafts. `tandem` (tandem.plugins.sampler) replaces the forward of vLLM's
    rejection sampler in the target's worker: exact for greedy and for sampled requests
    (temperature, top_k, top_p, min_p, seeds), which vLLM 0.32's own is not on the CPU (README,
    "Known vLLM 0.32 (CPU) issues"). `vllm` keeps vLLM's own; requests with min_p are then
    refused (vLLM does not apply it with speculation)."""

    kind: Literal["tandem", "vllm"] = "tandem"
    # tandem's sampler replaces a vLLM internal and was written for vLLM 0.32: on another
    # version the target refuses to start unless this is true (or kind is vllm).
    any_vllm: bool = False


class SpeculationConfig(_Section):
    """Remote drafting. Requests choose a mode and k; these are the defaults and limits."""

    enabled: bool = True  # provision drafters and the vLLM proposer
    default_mode: Annotated[str, AfterValidator(_known_mode)] = Mode.NGRAM.value
    num_speculative_tokens: PositiveInt = 4  # the default k, and the largest a request may ask
    step_timeout_ms: float = Field(250.0, gt=0)  # drafter budget per engine step
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    # Top candidates per verified position that the target shares with the drafters, read from
    # the logits it computes anyway (Token Recycling's table, speculation-cache guesses); 0: none.
    target_candidates: int = Field(8, ge=0, le=64)
    drafters: DraftPoolConfig = Field(default_factory=DraftPoolConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    draft_length: DraftLengthConfig = Field(default_factory=DraftLengthConfig)
    mirror: MirrorConfig = Field(default_factory=MirrorConfig)

    @model_validator(mode="after")
    def _mode_available(self) -> SpeculationConfig:
        mode = self.default_mode
        if mode in set(Mode) and not self.drafters.offers(Mode(mode)):
            needs = (
                "a draft model: set drafters.model or drafters.derive_layers > 0"
                if Mode(mode).needs_draft_model
                else "an EAGLE-3 head: set drafters.eagle_head"
            )
            raise ValueError(f"default_mode {mode!r} needs {needs}")
        return self

    @model_validator(mode="after")
    def _mirror_feeds_the_cache(self) -> SpeculationConfig:
        if self.mirror.enabled and not self.pipeline.enabled:
            raise ValueError("mirror.enabled needs pipeline.enabled: its hints steer pre-drafting")
        return self

    def modes(self) -> list[str]:
        """tandem's modes this config provides for (the drafters confirm them when they start)."""
        if not self.enabled:
            return [Mode.OFF.value]
        return [m.value for m in Mode if self.drafters.offers(m)]


class TLSConfig(_Section):
    """Server certificate and key (PEM files); with client_ca, clients must present a
    certificate signed by it (mutual TLS). Files are read when the server starts."""

    cert: Path
    key: Path
    client_ca: Path | None = None


class AuthConfig(_Section):
    """Bearer-token auth. The token comes from a file or from an environment variable named
    here, so the YAML (and a KubeRay manifest) never holds the secret itself."""

    token_file: Path | None = None
    token_env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> AuthConfig:
        if (self.token_file is None) == (self.token_env is None):
            raise ValueError("set exactly one of token_file and token_env")
        return self

    def token(self) -> str:
        """The token, read now; refuses an empty or missing one rather than open the door."""
        if self.token_file is not None:
            try:
                value = self.token_file.expanduser().read_text().strip()
            except OSError as exc:
                raise ConfigError(f"server.auth.token_file: cannot read: {exc}") from None
            where = f"server.auth.token_file ({self.token_file})"
        else:
            value = os.environ.get(self.token_env, "").strip()
            where = f"server.auth.token_env (${self.token_env})"
        if not value:
            raise ConfigError(f"{where}: the token is empty or unset")
        return value


class ServerConfig(_Section):
    """The front door (gRPC, and HTTP under Ray Serve), its limits, metrics and security."""

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)  # 0 picks a free port
    max_tokens: PositiveInt = 2048  # the largest max_tokens a request may ask for
    default_max_tokens: PositiveInt = 256
    max_inflight: PositiveInt = 64  # more requests at once get RESOURCE_EXHAUSTED
    # A request message larger than this is refused (RESOURCE_EXHAUSTED) before it is parsed.
    max_request_bytes: PositiveInt = 1 << 20
    # Threads that tokenize prompts and render chats, off the event loop: at most this many
    # requests are prepared at once, the rest wait (and count toward max_inflight).
    tokenizer_threads: PositiveInt = 2
    drain_timeout_s: float = Field(10.0, ge=0)  # SIGTERM waits this long for in-flight requests
    metrics_port: int | None = Field(None, ge=0, le=65535)  # Prometheus; None or 0: off
    metrics_host: str = "127.0.0.1"
    metrics_auth: bool = False  # /metrics asks for the bearer token of `auth` too
    tls: TLSConfig | None = None  # None: plaintext
    auth: AuthConfig | None = None  # None: no token needed
    # Serving a non-loopback address without auth is refused unless this says it is meant.
    allow_unauthenticated: bool = False

    @model_validator(mode="after")
    def _metrics_auth_has_a_token(self) -> ServerConfig:
        if self.metrics_auth and self.auth is None:
            raise ValueError("metrics_auth needs auth (the bearer token /metrics asks for)")
        return self

    @model_validator(mode="after")
    def _default_within_limit(self) -> ServerConfig:
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(
                f"default_max_tokens ({self.default_max_tokens}) exceeds "
                f"max_tokens ({self.max_tokens})"
            )
        return self


class RayConfig(_Section):
    """Join a cluster at `address`, or start an embedded local one when it is empty."""

    address: str | None = None
    num_cpus: PositiveInt | None = None  # embedded cluster only; default: all cores
    resources: dict[str, float] = Field(default_factory=dict)  # embedded cluster only
    # A cluster still starting (KubeRay's worker pods join after the head): wait this long for
    # the nodes the pools need before refusing the config; 0: refuse at once.
    wait_for_nodes_s: float = Field(0.0, ge=0)


class TandemConfig(_Section):
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    target: TargetPoolConfig = Field(default_factory=TargetPoolConfig)
    speculation: SpeculationConfig = Field(default_factory=SpeculationConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TandemConfig:
        try:
            return cls.model_validate(data or {})
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> TandemConfig:
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"config {path}: the top level must be a mapping")
        return cls.from_dict(data)

    def check_serving(self, exposed: bool | None = None) -> None:
        """Refuse a front door open to the network without a token unless the config says so.
        `exposed`: whether it listens beyond loopback (default: from server.host; Ray Serve's
        gRPC ingress always does, having no host option)."""
        server = self.server
        if exposed is None:
            exposed = not is_loopback(server.host)
        if exposed and server.auth is None and not server.allow_unauthenticated:
            where = (
                f"server.host {server.host!r} is not a loopback address"
                if not is_loopback(server.host)
                else "Ray Serve's gRPC ingress listens on every interface"
            )
            raise ConfigError(
                f"server.auth: {where} and no token is set; set server.auth "
                "({token_env: NAME} or {token_file: PATH}), or server.allow_unauthenticated: "
                "true to serve the network without one"
            )

    @classmethod
    def from_serve_args(cls, args: dict[str, Any]) -> TandemConfig:
        """The config from a Ray Serve application's `args`: the tandem config inline under
        `config`, or a YAML file under `config_path` (neither: the built-in default)."""
        unknown = sorted(set(args) - {"config", "config_path"})
        if unknown:
            raise ConfigError(f"serve args: unknown key(s) {', '.join(unknown)}")
        if "config" in args and "config_path" in args:
            raise ConfigError("serve args: set config or config_path, not both")
        if "config_path" in args:
            return cls.from_yaml(args["config_path"])
        return cls.from_dict(args.get("config"))

    def with_overrides(self, **sections: dict[str, Any]) -> TandemConfig:
        """A copy with some keys of some sections replaced, validated like the original."""
        data = self.model_dump(mode="python")
        for section, values in sections.items():
            data[section].update({k: v for k, v in values.items() if v is not None})
        return TandemConfig.from_dict(data)


def is_loopback(host: str) -> bool:
    """Whether a bind address only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{key}: {msg}")
    return "invalid config: " + "; ".join(lines)
