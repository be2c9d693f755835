"""The vLLM seam: everything a target's vLLM engine needs from tandem, in one place.

`engine_args` turns the target's config into vLLM engine arguments: the worker extension that
attaches tandem's hooks, the `custom_class` speculative config naming tandem's proposer (nobody
writes a speculative_config by hand), and the hf_overrides that load the Mirror-SD target class.
The worker methods the target actor calls through `collective_rpc` are named here too, so
nothing outside `plugins/` knows a vLLM class path or a method string.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tandem.plugins import MIRROR_ARCHITECTURE
from tandem.plugins.proposer import TandemProposer
from tandem.plugins.worker import TandemWorkerExtension

if TYPE_CHECKING:
    from tandem.speculation.settings import MirrorConfig, SpeculationConfig

# collective_rpc method names (TandemWorkerExtension)
APPLY_FIXES = TandemWorkerExtension.tandem_apply_fixes.__name__
ATTACH = TandemWorkerExtension.tandem_attach.__name__
REGISTER = TandemWorkerExtension.tandem_register.__name__
RELEASE = TandemWorkerExtension.tandem_release.__name__
STATS = TandemWorkerExtension.tandem_stats.__name__
CLOSE = TandemWorkerExtension.tandem_close.__name__


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def engine_args(
    model_path: str | Path, engine_args: dict[str, Any], speculation: SpeculationConfig | None
) -> dict[str, Any]:
    """Keyword arguments of vllm.EngineArgs for a target: the user's `engine_args` plus
    tandem's hooks (and its proposer when `speculation` is on)."""
    args = dict(
        engine_args, model=str(model_path), worker_extension_cls=_path(TandemWorkerExtension)
    )
    if speculation is not None:
        args["speculative_config"] = {
            "method": "custom_class",
            "model": _path(TandemProposer),
            "num_speculative_tokens": speculation.num_speculative_tokens,
        }
        if speculation.mirror.enabled:
            args["hf_overrides"] = mirror_overrides(
                model_path, args.get("hf_overrides"), speculation.mirror
            )
    return args


def own_process(args: dict[str, Any]) -> bool:
    """Whether the engine's worker runs in a process of its own: `distributed_executor_backend:
    mp` in target.engine_args (vLLM's multiprocess executor, as `vllm serve` runs it; one
    worker: with tensor parallelism each rank would build a session, not handled yet). tandem's
    default leaves it in the target actor's process, which measured faster on a 2-core CPU node
    (docs/architecture.md)."""
    return args.get("distributed_executor_backend") == "mp"


def mirror_overrides(
    model_path: str | Path, overrides: dict[str, Any] | None, mirror: MirrorConfig
) -> dict[str, Any]:
    """hf_overrides that load the target as tandem's Mirror-SD class (tandem.plugins.mirror)."""
    architectures = json.loads((Path(model_path) / "config.json").read_text()).get("architectures")
    if architectures != ["LlamaForCausalLM"]:
        raise ValueError(
            f"speculation.mirror needs a Llama-architecture target; {model_path} is "
            f"{architectures}. Set speculation.mirror.enabled: false"
        )
    return {
        **(overrides or {}),
        "architectures": [MIRROR_ARCHITECTURE],
        "tandem_mirror_layer": mirror.layer,
        "tandem_mirror_top_k": mirror.top_k,
    }


def engine_arg_names() -> set[str]:
    """The keyword arguments vllm.EngineArgs takes (the config checks `engine_args` against
    them)."""
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    return {f.name for f in dataclasses.fields(EngineArgs)}
