"""EAGLE-3 heads: the standard checkpoint format and the head in plain torch.

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

import torch
from torch import nn
from torch.nn import functional as F

from tandem.models import ModelError

ARCHITECTURE = "LlamaForCausalLMEagle3"
HEAD_WEIGHTS = "model.safetensors"


class HeadError(ModelError):
    """A head that cannot be used (with this target), with a message naming what does not fit."""


# ---- format -------------------------------------------------------------------------------------


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


# ---- the head -----------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight


class Attention(nn.Module):
    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        inner = 2 * cfg.hidden_size  # token embedding and hidden vector, side by side
        self.heads, self.kv_heads, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        self.q_proj = nn.Linear(inner, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(inner, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(inner, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, cfg.hidden_size, bias=False)


class MLP(nn.Module):
    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MidLayer(nn.Module):
    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        eps = cfg.rms_norm_eps
        self.hidden_norm = RMSNorm(cfg.hidden_size, eps)
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps)
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)


class Eagle3Head(nn.Module):
    """The head's weights under the standard names, and the pieces of its forward pass.

    The attention itself is left to the caller, because it is what differs: the runtime attends
    over a request's KV cache, training over the training-time-test layout, pre-drafting over a
    shared prefix. Everything else is here, once.
    """

    def __init__(self, cfg: HeadConfig, embed_tokens: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.fc = nn.Linear(cfg.num_aux * cfg.target_hidden_size, cfg.hidden_size, bias=False)
        self.midlayer = MidLayer(cfg)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(cfg.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.ones(cfg.vocab_size, dtype=torch.bool))
        # The target's token embedding: shared, frozen, not part of the checkpoint.
        self.register_buffer("embed_tokens", embed_tokens, persistent=False)
        self.rotary = _rotary(cfg)

    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """The target's concatenated auxiliary features -> the head's hidden vector."""
        return self.fc(features.to(self.fc.weight.dtype))

    def project(
        self, tokens: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values (rotated, heads first: [..., heads, len, dim]) for tokens
        paired with hidden vectors at `positions`, and the residual the layer adds to."""
        layer = self.midlayer
        embeds = layer.input_layernorm(F.embedding(tokens, self.embed_tokens))
        x = torch.cat([embeds, layer.hidden_norm(hidden)], dim=-1)
        attn = layer.self_attn
        q = _heads(attn.q_proj(x), attn.heads, attn.head_dim)
        k = _heads(attn.k_proj(x), attn.kv_heads, attn.head_dim)
        v = _heads(attn.v_proj(x), attn.kv_heads, attn.head_dim)
        cos, sin = self.rotary(positions)
        return _rotate(q, cos, sin), _rotate(k, cos, sin), v, hidden

    def finish(self, attended: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Attention output [..., heads, len, dim] -> the layer's output before the final norm
        (what the next draft step reads as its hidden vector)."""
        return self.finish_rows(attended.transpose(-3, -2).flatten(-2), residual)

    def finish_rows(self, attended: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """`finish` for attention outputs already merged across heads: [..., heads * dim]."""
        layer = self.midlayer
        residual = layer.self_attn.o_proj(attended) + residual
        return layer.mlp(layer.post_attention_layernorm(residual)) + residual

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary logits of layer outputs."""
        return self.lm_head(self.norm(out))

    def to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids]

    def kv_repeat(self) -> int:
        return self.cfg.num_attention_heads // self.cfg.num_key_value_heads


def _heads(x: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, dim)).transpose(-3, -2)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.unsqueeze(-3) + rotated * sin.unsqueeze(-3)


class _Rotary(nn.Module):
    """Rotary position tables from transformers' own implementation for the head's config (so
    every rope type the target uses is handled as the target handles it)."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        config = LlamaConfig(**{k: v for k, v in cfg.raw.items() if k != "architectures"})
        self.inner = LlamaRotaryEmbedding(config)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = positions.reshape(1, -1)
        probe = self.inner.inv_freq.new_empty(0)
        cos, sin = self.inner(probe, flat)
        shape = (*positions.shape, cos.shape[-1])
        return cos.reshape(shape), sin.reshape(shape)


def _rotary(cfg: HeadConfig) -> _Rotary:
    return _Rotary(cfg)


# ---- loading ------------------------------------------------------------------------------------


def load_head(
    head_dir: str | Path,
    target_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Eagle3Head:
    """A head in the standard format, checked against its target and given its embedding."""
    from safetensors.torch import load_file

    head_dir, target_dir = Path(head_dir), Path(target_dir)
    target_config = read_config(target_dir)
    cfg = HeadConfig.from_dict(read_config(head_dir))
    check_fits(cfg, target_config, head_name=str(head_dir))
    files = sorted(head_dir.glob("*.safetensors"))
    if not files:
        raise HeadError(f"{head_dir}: no *.safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for path in files:
        weights.update(load_file(path))
    embed = weights.pop("embed_tokens.weight", None)
    if embed is None:
        embed = target_weight(target_dir, "embed_tokens.weight")
    head = Eagle3Head(cfg, embed.to(dtype))
    if "d2t" not in weights:  # a head over the whole vocabulary maps ids to themselves
        weights["d2t"] = torch.zeros(cfg.draft_vocab_size, dtype=torch.long)
    weights.setdefault("t2d", torch.ones(cfg.vocab_size, dtype=torch.bool))
    missing, unexpected = head.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise HeadError(
            f"{head_dir}: weights do not match an EAGLE-3 head"
            + (f"; missing {sorted(missing)}" if missing else "")
            + (f"; unexpected {sorted(unexpected)}" if unexpected else "")
        )
    top = int((torch.arange(cfg.draft_vocab_size) + head.d2t).max())
    if top >= target_config["vocab_size"]:
        raise HeadError(
            f"EAGLE-3 head {head_dir} maps draft tokens to target id {top}, outside the target's "
            f"vocabulary of {target_config['vocab_size']}"
        )
    return head.to(device=device, dtype=dtype).eval().requires_grad_(False)


def target_weight(target_dir: str | Path, *names: str) -> torch.Tensor:
    """The first of `names` among the target's weights outside its decoder layers (e.g.
    "embed_tokens.weight" is "model.embed_tokens.weight" in a Llama), read from its
    safetensors without loading the model."""
    from safetensors import safe_open

    found: dict[str, Path] = {}
    for path in sorted(Path(target_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            found.update({key: path for key in f.keys() if ".layers." not in key})  # noqa: SIM118
    for name in names:
        for key, path in found.items():
            if key == name or key.endswith("." + name):
                with safe_open(str(path), framework="pt") as f:
                    return f.get_tensor(key)
    raise HeadError(f"{target_dir}: none of {', '.join(names)} in its safetensors")


def save_head(head: Eagle3Head, folder: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write the standard format (config.json, model.safetensors); the embedding stays the
    target's."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    raw = dict(head.cfg.raw, dtype=str(dtype).removeprefix("torch."))
    raw.pop("torch_dtype", None)
    (folder / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    tensors = {
        name: (t.to(dtype) if t.is_floating_point() else t).contiguous().cpu()
        for name, t in head.state_dict().items()
    }
    save_file(tensors, str(folder / HEAD_WEIGHTS), metadata={"format": "pt"})
    return folder
