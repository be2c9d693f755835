"""Speculation's own settings: what the draft sources, the session and the policy read.

The speculation core owns its configuration; the deployment config (tandem.cluster.config)
composes it into the YAML's `speculation` section and adds what only a cluster knows (where the
drafter replicas run, which modes the registered sources offer). Every section refuses unknown
keys, so a misspelt setting is an error that names it, never silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tandem.speculation.feature_codec import FeatureEncoding
from tandem.speculation.protocol import Mode

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class Section(BaseModel):
    """A config section: frozen, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SuffixConfig(Section):
    """SuffixDecoding's tries (speculation/suffix.py)."""

    max_depth: int = Field(16, ge=2)  # longest substring kept: the longest pattern plus draft
    max_pattern: PositiveInt = 8  # longest suffix of the context matched
    min_prob: float = Field(0.1, ge=0, le=1)  # stop drafting below this running probability
    global_tokens: int = Field(100_000, ge=0)  # recent outputs shared across requests (0: none)


class OnlineConfig(Section):
    """Online distillation of the EAGLE-3 head (tandem.speculation.online_learner): each drafter
    replica fine-tunes its head on the target's features and committed tokens of the requests it
    serves, in slices between drafting work, and serves a new version only when it drafts no
    worse than the serving one on held-back recent traffic. Off by default: it has not yet
    measured a gain that pays for its cost (docs/speculation.md, "Online learning")."""

    enabled: bool = False
    lr: float = Field(1e-4, gt=0, allow_inf_nan=False)  # AdamW, constant
    # Positions (tokens with their features, ~3.4 kB each on the default model) kept for
    # training; the oldest requests go first.
    buffer_tokens: PositiveInt = 8192
    # An update starts once this many new tokens arrived since the last one.
    update_tokens: PositiveInt = 1024
    steps_per_update: PositiveInt = 32  # micro-batches per update
    # One micro-batch: a window of this many positions of one request, unrolled for `ttt_steps`
    # (EAGLE-3's training-time test). Its forward and backward is one slice of the drafter's
    # core, the optimizer step another: the longest a draft can wait for learning.
    micro_batch_tokens: PositiveInt = 32
    ttt_steps: int = Field(2, ge=1, le=8)
    # Every n-th finished request is held back from training; the guard compares versions on
    # the last `heldout_requests` of them.
    heldout_every: int = Field(4, ge=2)
    heldout_requests: PositiveInt = 4
    # The guard keeps a new version if its accepted tokens per drafted token on the held-back
    # requests are at least the serving version's minus this margin; else it is rolled back.
    guard_margin: float = Field(0.0, ge=0, le=1)
    # A folder for the learned head (the standard format, and online.json); a drafter starts
    # from it when it exists. Every replica writes the same folder (the last one wins).
    checkpoint_path: str | None = None
    checkpoint_every_s: float = Field(300.0, gt=0)  # and on drain


class DrafterConfig(Section):
    """What the draft sources are built from (tandem.speculation.registry): the draft model, the
    EAGLE-3 head and each source's own settings. The cluster's drafter pool adds where its
    replicas run (tandem.cluster.config.pools.DraftPoolConfig)."""

    # The draft model: a built-in name or a HF folder sharing the target's tokenizer. Without
    # one, tandem derives it from the target's first `derive_layers` layers (0: no model drafter).
    model: str | None = None
    derive_layers: int = Field(4, ge=0)
    device: str = "auto"  # torch device of the draft model; auto: the actor's GPU if it has one
    # Adaptive draft length (SpecDec++): the model drafter ends a block before a token whose
    # probability under the draft model is below this (0: always draft k).
    stop_below: float = Field(0.0, ge=0.0, lt=1.0)
    # EasySpec layer-parallel drafting (speculation/easyspec.py): the size of every layer group,
    # or each group's size in order. 1: the ordinary, sequential model drafter.
    layer_groups: PositiveInt | Annotated[list[PositiveInt], Field(min_length=1)] = 1
    # Mode `eagle`: an EAGLE-3 head folder in the standard format (vLLM's eagle3), "auto" for the
    # head tandem ships for the target (if any), or null for none.
    eagle_head: str | None = "auto"
    # The head's weights and activations on the drafter. float16 (the standard format's own):
    # its forward reads the weights from memory five times a draft, so half the bytes drafted
    # 1.55x faster than float32 on the CPU (docs/benchmarks/2026-12-07-eagle-compiled.md).
    eagle_dtype: Literal["float32", "float16", "bfloat16"] = "float16"
    ngram_min: PositiveInt = 1
    ngram_max: PositiveInt = 4
    max_requests: PositiveInt = 1024  # per-request states kept; the least recent are evicted
    suffix: SuffixConfig = Field(default_factory=SuffixConfig)
    online: OnlineConfig = Field(default_factory=OnlineConfig)  # online distillation of the head

    @model_validator(mode="after")
    def _ngram_order(self) -> DrafterConfig:
        if self.ngram_min > self.ngram_max:
            raise ValueError(f"ngram_min ({self.ngram_min}) exceeds ngram_max ({self.ngram_max})")
        return self

    @model_validator(mode="after")
    def _online_needs_a_head(self) -> DrafterConfig:
        if self.online.enabled and self.eagle_head is None:
            raise ValueError("online.enabled needs eagle_head: it fine-tunes the EAGLE-3 head")
        return self

    def has_model(self) -> bool:
        return self.model is not None or self.derive_layers > 0


class PipelineConfig(Section):
    """Pipelined speculation (PEARL, SSD): while the target verifies a block, the drafter
    pre-drafts the next one for the block's likeliest outcomes (the speculation cache)."""

    enabled: bool = True  # the default for requests; each may turn it off
    # Measured (docs/benchmarks/2026-11-22-pipelining-draft-length.md, "Speculation-cache budget"):
    # with ngram, 1/1, 4/2 and 8/4 give 8%, 23% and 30% hits and the same speed; a drafter that
    # costs time is bounded by the verification window before these counts.
    outcomes: PositiveInt = 4  # outcomes pre-drafted per request and step
    fanout: PositiveInt = 2  # guesses per rejected position for the target's token there
    # On a miss (an outcome not pre-drafted): `when_it_pays` waits for a just-in-time draft only
    # where the request's acceptance says it earns more than the link adds to the round trip (a
    # drafter far away); `always` waits every time.
    wait_for_misses: Literal["when_it_pays", "always"] = "when_it_pays"


class MirrorConfig(Section):
    """Mirror-SD's correction channel: an early exit at `layer` of the target (Llama
    architecture) sends its top-κ tokens for the block under verification to the drafters
    mid-forward, so they pre-draft the outcomes the target is heading for."""

    enabled: bool = False
    layer: int = Field(20, ge=0)  # the early exit (0-based decoder layer)
    top_k: PositiveInt = 4  # κ


class DraftLengthConfig(Section):
    """How draft length follows the batch size (tandem.speculation.policy): verifying drafts
    stops paying once the target's forward pass is compute-bound."""

    # Measured on the CPU default (ngram drafts, `tandem bench --config
    # benchmarks/configs/draft-length-off.yaml --concurrency 1,2,3,4,8,16,32`): drafting pays at
    # 1 and 2 streams (1.26x, 1.31x the target alone) and loses from 3 (0.95x; 0.73x at 32).
    # Other hardware and drafters move this point: measure it for yours.
    full_until_batch: PositiveInt = 2  # batches up to this size draft each request's full k
    off_above_batch: PositiveInt = 2  # larger batches draft nothing
    # Per request, the length (up to the above) with the most tokens per unit of target time at
    # its acceptance so far, none while drafts keep failing (tandem.speculation.policy).
    adaptive: bool = False
    # What each drafted token adds to a verification step, in one-token steps: `tandem bench`
    # prints the cost of a 5-token step; on the CPU default it is 1.28x a 1-token one, so 0.07.
    verify_cost: NonNegativeFloat = 0.07

    @model_validator(mode="after")
    def _ordered(self) -> DraftLengthConfig:
        if self.full_until_batch > self.off_above_batch:
            raise ValueError(
                f"full_until_batch ({self.full_until_batch}) exceeds "
                f"off_above_batch ({self.off_above_batch})"
            )
        return self


class SamplerConfig(Section):
    """Who verifies drafts. `tandem` (tandem.plugins.sampler) replaces the forward of vLLM's
    rejection sampler in the target's worker: exact for greedy and for sampled requests
    (temperature, top_k, top_p, min_p, seeds), which vLLM 0.32's own is not on the CPU
    (docs/known-vllm-issues.md). `vllm` keeps vLLM's own; requests with min_p are then
    refused (vLLM does not apply it with speculation)."""

    kind: Literal["tandem", "vllm"] = "tandem"
    # tandem's sampler replaces a vLLM internal and was written for vLLM 0.32: on another
    # version the target refuses to start unless this is true (or kind is vllm).
    any_vllm: bool = False


class SpeculationConfig(Section):
    """Remote drafting. Requests choose a mode and k; these are the defaults and limits."""

    enabled: bool = True  # provision drafters and the vLLM proposer
    # A Mode, or a source registered from outside (the cluster's config checks it against the
    # registry, which this module cannot import: the sources import it).
    default_mode: str = Mode.AUTO.value
    num_speculative_tokens: PositiveInt = 4  # the default k, and the largest a request may ask
    step_timeout_ms: float = Field(250.0, gt=0)  # drafter budget per engine step
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    # Top candidates per verified position that the target shares with the drafters, read from
    # the logits it computes anyway (Token Recycling's table, speculation-cache guesses); 0: none.
    target_candidates: int = Field(8, ge=0, le=64)
    drafters: DrafterConfig = Field(default_factory=DrafterConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    draft_length: DraftLengthConfig = Field(default_factory=DraftLengthConfig)
    mirror: MirrorConfig = Field(default_factory=MirrorConfig)
    # How EAGLE-3 features travel to the drafters: float16, or int8 with a scale per block of
    # 64 values (about half the bytes; tandem.speculation.feature_codec).
    feature_encoding: FeatureEncoding = "float16"

    @model_validator(mode="after")
    def _mirror_feeds_the_cache(self) -> SpeculationConfig:
        if self.mirror.enabled and not self.pipeline.enabled:
            raise ValueError("mirror.enabled needs pipeline.enabled: its hints steer pre-drafting")
        return self
