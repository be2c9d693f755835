"""tandem's vLLM plugin (entry point group `vllm.general_plugins`).

vLLM calls `register()` in every process it starts, so it must be cheap and idempotent. The
proposer (`tandem.plugins.proposer.TandemProposer`) and the worker extension
(`tandem.plugins.worker.TandemWorkerExtension`) are named in the engine arguments that
`tandem.plugins.engine_setup.engine_args` builds from the config; `register()` checks once that this
vLLM still offers the `custom_class` speculative method they plug into, so an incompatible vLLM
fails at start with a clear message, and registers the Mirror-SD target class
(tandem.plugins.mirror) under its own architecture name.
"""

from __future__ import annotations

MIRROR_ARCHITECTURE = "TandemMirrorLlamaForCausalLM"
_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    import typing

    from vllm.config.speculative import SpeculativeConfig

    method = typing.get_type_hints(SpeculativeConfig).get("method")
    if "custom_class" not in str(method):
        raise RuntimeError("tandem needs vLLM's `custom_class` speculative method (vLLM >= 0.32)")
    from vllm import ModelRegistry

    # Lazy: vLLM imports the class only for an engine whose hf_overrides name it.
    ModelRegistry.register_model(
        MIRROR_ARCHITECTURE, "tandem.plugins.mirror:MirrorLlamaForCausalLM"
    )
    _registered = True
