"""One typed config object describes a tandem deployment.

The same YAML drives the CLI, Ray Serve and KubeRay. Every section refuses unknown keys, and every
error names the key it is about (pydantic reports the path, e.g. `target.replicas`). The sections
live beside what they configure: speculation's own in tandem.speculation.settings, the pools in
pools.py, the front door in front_door.py; this module composes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, Field, ValidationError, model_validator

from tandem.cluster.config.errors import ConfigError
from tandem.cluster.config.front_door import ServerConfig, is_loopback
from tandem.cluster.config.pools import DraftPoolConfig, TargetPoolConfig
from tandem.models import DEFAULT_MODEL, ModelStore, default_models_dir
from tandem.speculation import registry
from tandem.speculation.protocol import Mode
from tandem.speculation.settings import PositiveInt, Section, SpeculationConfig


class ModelsConfig(Section):
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


def _known_mode(value: str) -> str:
    """A mode of tandem.speculation.protocol.Mode, or of a source registered in this process."""
    if value not in registry.mode_names():
        raise ValueError(f"unknown mode {value!r}; one of {', '.join(registry.mode_names())}")
    return value


class SpeculationSection(SpeculationConfig):
    """The YAML's `speculation` section: speculation's own settings, with the drafters as a pool
    of replicas and the default mode checked against the sources this process registered."""

    default_mode: Annotated[str, AfterValidator(_known_mode)] = Mode.AUTO.value
    drafters: DraftPoolConfig = Field(default_factory=DraftPoolConfig)

    @model_validator(mode="after")
    def _mode_available(self) -> SpeculationSection:
        if not self.drafters.offers(self.default_mode):
            needs = registry.needs(self.default_mode)
            what = (
                "a draft model: set drafters.model or drafters.derive_layers > 0"
                if needs.draft_model
                else "an EAGLE-3 head: set drafters.eagle_head"
            )
            raise ValueError(f"default_mode {self.default_mode!r} needs {what}")
        return self

    def modes(self) -> list[str]:
        """The modes this config provides for (the drafters confirm them when they start)."""
        if not self.enabled:
            return [Mode.OFF.value]
        return [m.value for m in Mode if self.drafters.offers(m)]


class RayConfig(Section):
    """Join a cluster at `address`, or start an embedded local one when it is empty."""

    address: str | None = None
    num_cpus: PositiveInt | None = None  # embedded cluster only; default: all cores
    resources: dict[str, float] = Field(default_factory=dict)  # embedded cluster only
    # A cluster still starting (KubeRay's worker pods join after the head): wait this long for
    # the nodes the pools need before refusing the config; 0: refuse at once.
    wait_for_nodes_s: float = Field(0.0, ge=0)


class TandemConfig(Section):
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    target: TargetPoolConfig = Field(default_factory=TargetPoolConfig)
    speculation: SpeculationSection = Field(default_factory=SpeculationSection)
    server: ServerConfig = Field(default_factory=ServerConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _mirror_runs_eager(self) -> TandemConfig:
        """Mirror-SD's early exit is a forward hook (tandem.plugins.mirror), which compiled or
        graph-captured execution skips: refused at start rather than silently sending nothing."""
        if self.speculation.mirror.enabled and not self.target.engine_args.get("enforce_eager"):
            raise ValueError(
                "speculation.mirror.enabled: Mirror-SD's early exit is a forward hook, which "
                "compiled execution skips; set target.engine_args.enforce_eager: true"
            )
        return self

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


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{key}: {msg}")
    return "invalid config: " + "; ".join(lines)
