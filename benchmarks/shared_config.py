"""What every system of a benchmark run is built from: one config (the bench's draft length and
n-gram sizes, prefix caching off), the config of the servers it starts, and the draft model and
EAGLE-3 head found the way the server finds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def server_config(config: Any) -> dict[str, Any]:
    """The config of the servers the bench starts: any free port, as it may start several, and
    no HTTP door (the bench speaks gRPC to them)."""
    data = config.model_dump(mode="json")
    data["server"]["port"] = 0
    data["server"]["http_port"] = None
    return data


def bench_config(
    config: Any,
    k: int | None,
    ngram_min: int | None,
    ngram_max: int | None,
    layer_groups: int | None = None,
    eagle_head: str | None = None,
) -> Any:
    """The config every system is built from: the bench's draft length and n-gram sizes (so
    the server it starts and vLLM's in-process drafters use the same), the model drafter's
    EasySpec layer groups, and prefix caching off.

    Prefix caching goes off because the tandem modes share one server: with it on, every mode
    after the first would find each prompt already in the target's cache. (Spec-Bench prompts
    share no full cache block, so for separate engines it changes nothing.)
    """
    data = config.model_dump(mode="python")
    data["target"]["engine_args"]["enable_prefix_caching"] = False
    speculation = data["speculation"]
    if k is not None:
        speculation["num_speculative_tokens"] = k
    drafter = {
        "ngram_min": ngram_min,
        "ngram_max": ngram_max,
        "layer_groups": layer_groups,
        "eagle_head": eagle_head,
    }
    for key, value in drafter.items():
        if value is not None:
            speculation["drafters"][key] = value
    return type(config).from_dict(data)


def eagle_head_path(config: Any, target_path: str) -> str | None:
    """The EAGLE-3 head vllm-eagle3 and tandem-eagle load (speculation.drafters.eagle_head: by
    default the one tandem ships for the target). A head that does not fit the target is
    refused here, naming the mismatch."""
    from tandem.speculation.eagle_format import resolve_head

    spec = config.speculation.drafters.eagle_head
    path = resolve_head(spec, config.models.target, Path(target_path))
    return str(path) if path is not None else None


def draft_model_path(config: Any, target_path: str) -> str | None:
    """tandem's draft model, found (or derived from the target) the way the server does."""
    from tandem.models import derive_draft, resolve_model

    drafters = config.speculation.drafters
    cache = config.models.cache_dir()
    if drafters.model is not None:
        return str(resolve_model(drafters.model, cache))
    if drafters.derive_layers > 0:
        return str(derive_draft(Path(target_path), drafters.derive_layers, cache))
    return None
