"""The vLLM seam: everything a target's vLLM engine needs from tandem, in one place.

`engine_args` turns the target's config into vLLM engine arguments: the worker extension that
attaches tandem's hooks, the `custom_class` speculative config naming tandem's proposer (nobody
writes a speculative_config by hand), and the hf_overrides that load the Mirror-SD target class
and name the layers whose features EAGLE-3 heads read.
The worker methods the target actor calls through `collective_rpc` are named here too, so
nothing outside `plugins/` knows a vLLM class path or a method string.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tandem.plugins import MIRROR_ARCHITECTURE
from tandem.plugins.proposer import FEATURE_LAYERS, TandemProposer
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
    model_path: str | Path,
    engine_args: dict[str, Any],
    speculation: SpeculationConfig | None,
    features: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Keyword arguments of vllm.EngineArgs for a target: the user's `engine_args` plus
    tandem's hooks (and its proposer when `speculation` is on, reading the residual stream
    entering the layers `features` for EAGLE-3 heads)."""
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
        if features:
            args["hf_overrides"] = {**(args.get("hf_overrides") or {}), FEATURE_LAYERS: features}
            if not args.get("enforce_eager"):
                args["compilation_config"] = piecewise_graphs(args.get("compilation_config"))
    return args


def piecewise_graphs(compilation: dict[str, Any] | None) -> dict[str, Any]:
    """The compilation config with piecewise CUDA graphs (vLLM's default on a GPU is full
    graphs for decode steps): the feature tap reads EAGLE-3's features in the model's outer
    forward (tandem.plugins.aux_outputs), which a full graph's replay skips, while piecewise
    graphs leave it running. Where no graphs are captured (the CPU) this changes nothing."""
    if not isinstance(compilation, dict | None):
        raise ValueError(
            "target.engine_args.compilation_config: give a mapping (e.g. {mode: 3}) when "
            "speculation mode eagle reads features"
        )
    compilation = dict(compilation or {})
    mode = str(compilation.get("cudagraph_mode", "PIECEWISE")).upper()
    if mode.startswith("FULL"):
        raise ValueError(
            f"target.engine_args.compilation_config.cudagraph_mode: {mode} replays the whole "
            "forward, which skips the feature tap of speculation mode eagle; use PIECEWISE or "
            "NONE, or eagle_head: null"
        )
    compilation["cudagraph_mode"] = mode
    return compilation


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
