"""EAGLE-3 heads: the standard checkpoint format, and whether a head fits a target.

An EAGLE-3 head drafts from the target's own hidden states. At every position p the target
computes, its *auxiliary features* f_p (the residual stream entering three of its layers, low,
middle and high, concatenated) are fused by `fc` into one hidden vector; the head's single
decoder layer reads that vector together with the embedding of the *next* token x_{p+1} and
predicts x_{p+2}. To draft further than one token, the head feeds on itself: its own output
(before the final norm) stands in for the target's features at the positions the target has
not computed yet (tandem.speculation.eagle runs it; tandem.training trains it).

Checkpoint format: the one vLLM's `eagle3` method loads (`vllm/model_executor/models/
llama_eagle3.py`), so a head trained with SpecForge or vLLM's speculators works here and a head
trained by `tandem draft train` works in vLLM: config.json with `architectures:
["LlamaForCausalLMEagle3"]`, `draft_vocab_size` and `eagle_aux_hidden_state_layer_ids`;
weights `fc`, `midlayer.{hidden_norm, input_layernorm, post_attention_layernorm}`,
`midlayer.self_attn.{q,k,v,o}_proj` (q/k/v read 2 * hidden: embedding and hidden side by side),
`midlayer.mlp.{gate,up,down}_proj`, `norm`, `lm_head` (draft vocabulary), `d2t` (draft id ->
target id offset: target = draft + d2t[draft]; VocabTrim) and `t2d` (target ids in the draft
vocabulary). The head shares the target's token embedding, as vLLM does when the checkpoint
carries none.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem.models import ModelError

ARCHITECTURE = "LlamaForCausalLMEagle3"
HEAD_WEIGHTS = "model.safetensors"


class HeadError(ModelError):
    """A head that cannot be used (with this target), with a message naming what does not fit."""


def default_aux_layers(num_layers: int) -> tuple[int, ...]:
    """vLLM's default auxiliary layers for a decoder of `num_layers` layers (low, middle, high).
    Layer id L means the residual stream entering layer L: Hugging Face's hidden_states[L]."""
    return (2, num_layers // 2, num_layers - 3)


@dataclass(frozen=True)
class HeadConfig:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    vocab_size: int  # the target's
    draft_vocab_size: int
    aux_layers: tuple[int, ...]
    target_hidden_size: int
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def for_target(
        cls,
        target_config: dict[str, Any],
        draft_vocab_size: int,
        aux_layers: Sequence[int] | None = None,
    ) -> HeadConfig:
        """A one-layer head shaped like one of the target's layers (the EAGLE-3 recipe)."""
        raw = dict(target_config)
        layers = tuple(aux_layers or default_aux_layers(target_config["num_hidden_layers"]))
        hidden = target_config["hidden_size"]
        heads = target_config["num_attention_heads"]
        raw.update(
            architectures=[ARCHITECTURE],
            num_hidden_layers=1,
            draft_vocab_size=draft_vocab_size,
            tie_word_embeddings=False,
            target_hidden_size=hidden,
            head_dim=target_config.get("head_dim") or hidden // heads,
            eagle_aux_hidden_state_layer_ids=list(layers),
            eagle_config={"eagle_aux_hidden_state_layer_ids": list(layers)},
        )
        for key in ("_name_or_path", "_model_name_or_path", "auto_map", "quantization_config"):
            raw.pop(key, None)
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> HeadConfig:
        if ARCHITECTURE not in raw.get("architectures", []):
            raise HeadError(f"not an EAGLE-3 head: architectures is {raw.get('architectures')}")
        if raw.get("num_hidden_layers", 1) != 1:
            raise HeadError(
                f"the head has {raw['num_hidden_layers']} decoder layers; tandem runs one-layer "
                "EAGLE-3 heads"
            )
        eagle = raw.get("eagle_config") or {}
        layers = raw.get("eagle_aux_hidden_state_layer_ids") or eagle.get(
            "eagle_aux_hidden_state_layer_ids"
        )
        hidden = raw["hidden_size"]
        heads = raw["num_attention_heads"]
        return cls(
            hidden_size=hidden,
            intermediate_size=raw["intermediate_size"],
            num_attention_heads=heads,
            num_key_value_heads=raw.get("num_key_value_heads", heads),
            head_dim=raw.get("head_dim") or hidden // heads,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            vocab_size=raw["vocab_size"],
            draft_vocab_size=raw.get("draft_vocab_size") or raw["vocab_size"],
            aux_layers=tuple(layers) if layers else (),  # () = the target's defaults
            target_hidden_size=raw.get("target_hidden_size", hidden),
            raw=raw,
        )

    @property
    def num_aux(self) -> int:
        return self.raw.get("num_aux_hidden_states") or len(self.aux_layers) or 3

    def resolved_aux_layers(self, target_layers: int) -> tuple[int, ...]:
        return self.aux_layers or default_aux_layers(target_layers)


def check_fits(head: HeadConfig, target_config: dict[str, Any], head_name: str = "head") -> None:
    """Refuse a head trained for another target, naming the first thing that does not fit."""
    target_hidden = target_config["hidden_size"]
    target_vocab = target_config["vocab_size"]
    target_layers = target_config["num_hidden_layers"]
    if head.target_hidden_size != target_hidden:
        raise HeadError(
            f"EAGLE-3 {head_name} reads target hidden states of size {head.target_hidden_size}, "
            f"but the target's hidden size is {target_hidden}: train a head for this target"
        )
    if head.hidden_size != target_hidden:
        raise HeadError(
            f"EAGLE-3 {head_name} has hidden size {head.hidden_size}, but it shares the target's "
            f"token embedding of size {target_hidden}: train a head for this target"
        )
    if head.vocab_size != target_vocab:
        raise HeadError(
            f"EAGLE-3 {head_name} has a vocabulary of {head.vocab_size} tokens, but the target's "
            f"has {target_vocab}: train a head for this target"
        )
    bad = [
        layer for layer in head.resolved_aux_layers(target_layers) if not 0 <= layer < target_layers
    ]
    if bad:
        raise HeadError(
            f"EAGLE-3 {head_name} reads auxiliary layers {bad}, but the target has "
            f"{target_layers} layers"
        )


def read_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise HeadError(f"{folder}: no config.json")
    return json.loads(path.read_text())


def resolve_head(spec: str | None, target: str, target_path: Path) -> Path | None:
    """The head a setting names, checked against the target: a folder, "auto" (the head tandem
    ships for the target, if any) or None (no head)."""
    from tandem.models import builtin_head

    if spec is None:
        return None
    path = builtin_head(target) if spec == "auto" else Path(spec).expanduser()
    if path is None:
        return None
    check_fits(HeadConfig.from_dict(read_config(path)), read_config(target_path), str(path))
    return path


def aux_layers(head: Path, target_path: Path) -> tuple[int, ...]:
    """The target layers whose input the head reads (its own list, or vLLM's default)."""
    layers = read_config(target_path)["num_hidden_layers"]
    return HeadConfig.from_dict(read_config(head)).resolved_aux_layers(layers)
