"""The EAGLE-3 head in plain torch, loaded from and saved to the standard format
(tandem.speculation.eagle_format): its weights under the standard names and the pieces of its
forward pass that the runtime (tandem.speculation.eagle) and training (tandem.training) share.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from tandem.speculation.eagle_format import (
    HEAD_WEIGHTS,
    HeadConfig,
    HeadError,
    check_fits,
    read_config,
)


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

    def vocabulary(self) -> torch.Tensor:
        """The target id of every draft token, in draft-id order."""
        return self.to_target(torch.arange(len(self.d2t), device=self.d2t.device))

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
    top = int(head.vocabulary().max())
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
