"""EAGLE-3's features from the target's own outputs, so the target may run compiled.

vLLM's models that implement its EAGLE-3 interface (`SupportsEagle3`: Llama, Qwen, ...) can
output the residual stream entering chosen decoder layers beside their hidden states; vLLM's own
eagle3 switches this on at load, before the model is compiled, and the compiled forward then
computes them. tandem does the same from its proposer's `load_model` (tandem.plugins.proposer)
and hands them to its feature tap (tandem.plugins.taps.FeatureTap), instead of forward hooks,
which compiled or graph-captured code skips.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


class AuxOutputs:
    """The target's auxiliary hidden states from its own outputs (vLLM's `SupportsEagle3`):
    switched on at load (tandem.plugins.proposer), before vLLM compiles the model or captures
    graphs, so the compiled forward computes them as vLLM's own eagle3 has it do. The model's
    outer forward (plain Python around the compiled decoder) hands them to `sink` and returns
    the hidden states alone, so vLLM's runner sees the model it expects.

    Around a *full* CUDA graph the outer forward does not run on replay; tandem's engine setup
    asks for piecewise graphs when features are read (tandem.plugins.engine_setup)."""

    def __init__(self, model: Any, layers: tuple[int, ...]) -> None:
        self.layers = tuple(sorted(set(layers)))  # the order vLLM's decoder appends them in
        self.sink: Callable[[Any, dict[int, Any]], None] | None = None  # FeatureTap.capture
        model.set_aux_hidden_state_layers(self.layers)
        original = model.forward

        @functools.wraps(original)
        def forward(*args: Any, **kwargs: Any) -> Any:
            output = original(*args, **kwargs)
            if not isinstance(output, tuple):  # not the last pipeline rank
                return output
            hidden, aux = output
            if self.sink is not None:
                positions = kwargs["positions"] if "positions" in kwargs else args[1]
                self.sink(positions, dict(zip(self.layers, aux, strict=True)))
            return hidden

        model.forward = forward
