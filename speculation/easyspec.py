"""EasySpec: layer-parallel ("fuzzy") drafting with an exact calibration forward per round.

The draft model's layers are split into *layer groups*. The layers of a group all read the same
input hidden state h, so they can run at once (on several devices, layer j of a group on device
j mod n); the group's output is h + sum(layer_i(h) - h). That approximates the sequential
model, and its keys/values are approximate too. To stop the error from accumulating, the first
forward of every round (the one the drafter runs anyway over the newly committed tokens) is
exact and sequential and starts where the cache stops being exact, so it rewrites the fuzzy
entries of the accepted tokens: the paper's *bonus calibration*. Only the round's later draft
tokens are fuzzy. With groups of one the fuzzy forward is the exact model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem.speculation.model_drafter import CacheState, ModelDrafter
from tandem.speculation.source import DrafterSetup, DraftSource

LayerGroups = int | Sequence[int]  # one group size for all, or the size of each group in order


@dataclass
class FuzzyCacheState(CacheState):
    exact: int = 0  # leading cache positions written by an exact forward


def make_groups(spec: LayerGroups, num_layers: int) -> list[list[int]]:
    """Layer indices per group: `spec` a size (the last group may be smaller) or the sizes."""
    if isinstance(spec, int):
        if spec <= 0:
            raise ValueError(f"layer group size must be > 0, got {spec}")
        sizes = [min(spec, num_layers - start) for start in range(0, num_layers, spec)]
    else:
        sizes = list(spec)
        if any(s <= 0 for s in sizes) or sum(sizes) != num_layers:
            raise ValueError(f"layer groups {sizes} must be positive and sum to {num_layers}")
    groups, start = [], 0
    for size in sizes:
        groups.append(list(range(start, start + size)))
        start += size
    return groups


class EasySpecDrafter(ModelDrafter):
    def __init__(
        self,
        model_path: str | Path,
        layer_groups: LayerGroups,
        devices: Sequence[str] = ("cpu",),
        stop_below: float = 0.0,
    ) -> None:
        super().__init__(model_path, device=devices[0], stop_below=stop_below)
        inner = self.model.model
        self.groups = make_groups(layer_groups, len(inner.layers))
        self.sequential = [[i] for i in range(len(inner.layers))]
        # Layer j of every group on device j mod n: a group's layers run on distinct devices.
        self.layer_device = {}
        for group in self.groups:
            for j, index in enumerate(group):
                device = self.torch.device(devices[j % len(devices)])
                inner.layers[index].to(device)
                self.layer_device[index] = device

    def new_state(self) -> FuzzyCacheState:
        from transformers import DynamicCache

        return FuzzyCacheState(DynamicCache(config=self.model.config))

    def _trusted(self, state: FuzzyCacheState) -> int:
        return state.exact

    def _next_logits(self, state: FuzzyCacheState, ids: Any, first: bool) -> Any:
        logits = self.forward(ids, state.cache, self.sequential if first else self.groups)
        if first:
            state.exact = state.cache.get_seq_length()
        return logits

    def forward(self, ids: Any, cache: Any, groups: list[list[int]]) -> Any:
        """Next-token logits after `ids`, running `groups` (the exact model for groups of one)
        and appending every layer's keys/values to `cache`."""
        from transformers.masking_utils import create_causal_mask

        inner = self.model.model
        h = inner.embed_tokens(ids)
        past = cache.get_seq_length()
        positions = self.torch.arange(past, past + ids.shape[1], device=self.device)[None]
        mask = create_causal_mask(
            config=inner.config,
            inputs_embeds=h,
            attention_mask=None,
            past_key_values=cache,
            position_ids=positions,
        )
        rotary = inner.rotary_emb(h, position_ids=positions)
        for group in groups:
            outs = [self._layer(index, h, mask, positions, rotary, cache) for index in group]
            merged = outs[0].to(self.device)
            for out in outs[1:]:
                merged = merged + (out.to(self.device) - h)
            h = merged
        return self.model.lm_head(inner.norm(h[:, -1]))[0]

    def _layer(self, index: int, h: Any, mask: Any, positions: Any, rotary: Any, cache: Any) -> Any:
        """One decoder layer on its own device (inputs copied there; no-ops on one device)."""
        device = self.layer_device[index]
        return self.model.model.layers[index](
            h.to(device),
            attention_mask=None if mask is None else mask.to(device),
            position_ids=positions.to(device),
            past_key_values=cache,
            use_cache=True,
            position_embeddings=tuple(t.to(device) for t in rotary),
        )


def build_model_drafter(
    setup: DrafterSetup, built: Mapping[str, DraftSource]
) -> ModelDrafter | None:
    """Mode `model`'s factory (tandem.speculation.registry): the draft model on the drafter's
    devices, EasySpec's layer groups when configured, else the plain model; None without one."""
    if setup.draft_model is None:
        return None
    drafters = setup.config.drafters
    return load_model_drafter(
        setup.draft_model, drafters.layer_groups, setup.devices, drafters.stop_below
    )


def load_model_drafter(
    model_path: str | Path,
    layer_groups: LayerGroups,
    devices: Sequence[str],
    stop_below: float = 0.0,
) -> ModelDrafter:
    """The configured model drafter: the ordinary one for groups of one, EasySpec otherwise."""
    if layer_groups == 1:
        return ModelDrafter(model_path, device=devices[0], stop_below=stop_below)
    return EasySpecDrafter(model_path, layer_groups, devices, stop_below)
