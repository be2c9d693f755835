"""Mirror-SD's correction channel: an early exit inside the target's forward pass.

`MirrorLlamaForCausalLM` is vLLM's Llama with one forward hook. After decoder layer
`tandem_mirror_layer` it applies the target's own final norm and LM head to the positions under
verification, takes their top-κ tokens and hands them to a sink (tandem.plugins.taps.MirrorSink),
which forwards them to the drafters without waiting for an answer. The hook reads hidden states
and never writes them, so the target's outputs are those of plain Llama. It is selected per
engine through hf_overrides (architectures), so other models in the process are untouched; the
hook needs eager execution (a captured CUDA graph would skip it). Registered by
tandem.plugins.register() as MIRROR_ARCHITECTURE.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.model_executor.models.llama import LlamaForCausalLM


class MirrorLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        hf_config = vllm_config.model_config.hf_config
        self.mirror_layer = int(hf_config.tandem_mirror_layer)
        self.mirror_top_k = int(hf_config.tandem_mirror_top_k)
        layers = hf_config.num_hidden_layers
        if not 0 <= self.mirror_layer < layers - 1:
            raise ValueError(
                f"speculation.mirror.layer: {self.mirror_layer} is not an early exit of a "
                f"{layers}-layer target; choose 0..{layers - 2}"
            )
        self.mirror_sink: Any = None  # attached by tandem's worker extension
        self.model.layers[self.mirror_layer].register_forward_hook(self._early_exit)

    def _early_exit(self, module: Any, inputs: Any, output: Any) -> None:
        sink = self.mirror_sink
        if sink is None:
            return
        rows = sink.rows()
        hidden, residual = output
        if not rows or max(rows) >= hidden.shape[0]:
            return
        index = torch.tensor(rows, device=hidden.device)
        with torch.no_grad():
            state = hidden[index] if residual is None else hidden[index] + residual[index]
            logits = self.logits_processor(self.lm_head, self.model.norm(state))
            sink.send(logits.topk(self.mirror_top_k, dim=-1).indices.tolist())
