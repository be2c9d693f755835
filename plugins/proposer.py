"""vLLM `custom_class` proposer whose drafts come from tandem's remote drafters.

vLLM calls `propose` once per engine step, after sampling, for the whole batch; what it returns
is verified in the next step by vLLM's own rejection sampler. This class only translates between
vLLM's arguments and the speculation session; the logic lives in tandem.speculation.session.
"""

from __future__ import annotations

from typing import Any

from tandem.plugins.aux_outputs import AuxOutputs
from tandem.speculation.candidates import verified_candidates

# The hf_config attribute (set through hf_overrides by tandem.plugins.engine_setup) naming the
# decoder layers whose inputs EAGLE-3 heads read; absent when no feature mode is served.
FEATURE_LAYERS = "tandem_feature_layers"


class TandemProposer:
    def __init__(self, vllm_config: Any) -> None:
        self.session: Any = None
        self.input_batch: Any = None
        self.tap: Any = None
        self.features: Any = None
        self.feature_layers = tuple(
            getattr(vllm_config.model_config.hf_config, FEATURE_LAYERS, None) or ()
        )
        self.eager = bool(vllm_config.model_config.enforce_eager)
        self.aux_outputs: AuxOutputs | None = None

    def attach(self, session: Any, input_batch: Any, tap: Any = None, features: Any = None) -> None:
        self.session = session
        self.input_batch = input_batch
        self.tap = tap
        self.features = features  # FeatureTap, when a feature mode (eagle) is served

    def load_model(self, model: Any, *args: Any, **kwargs: Any) -> None:
        """No draft model to load (they live on the drafter actors); but vLLM calls this with
        the target right after loading it and before compiling it, the one moment the target
        can be asked to output EAGLE-3's features from its compiled forward (`AuxOutputs`).
        Without vLLM's EAGLE-3 interface the feature tap falls back to forward hooks, which
        only eager execution runs."""
        if not self.feature_layers:
            return
        from vllm.model_executor.models.interfaces import supports_eagle3

        if supports_eagle3(model):
            self.aux_outputs = AuxOutputs(model, self.feature_layers)
        elif not self.eager:
            raise RuntimeError(
                f"speculation mode eagle reads the target's hidden states; "
                f"{type(model).__name__} does not implement vLLM's EAGLE-3 interface, so only "
                "forward hooks can, which compiled execution skips: set "
                "target.engine_args.enforce_eager: true, or eagle_head: null"
            )

    def propose(
        self,
        sampled_token_ids: list[list[int]],
        num_tokens_no_spec: Any,
        token_ids_cpu: Any,
        slot_mappings: Any = None,
    ) -> list[list[int]]:
        if self.session is None:
            return [[] for _ in sampled_token_ids]
        if self.tap is not None:  # the next forward's candidates, only if someone drafts
            self.tap.enabled = self.session.speculating()
        batch = len(sampled_token_ids)
        engine_ids = self.input_batch.req_ids[:batch]
        request_ids = [external_id(r) for r in engine_ids]
        rows = self.tap.take() if self.tap is not None else None
        candidates = None
        if rows is not None:
            drafts = self.input_batch.spec_token_ids[:batch]  # what this step verified
            candidates = verified_candidates(
                rows, sampled_token_ids, num_tokens_no_spec, token_ids_cpu, drafts
            )
        features = None
        if self.features is not None:  # only the rows of requests in a feature mode
            wanted = self.session.wants_features(request_ids)
            rows = self.features.take([e for e, w in zip(engine_ids, wanted, strict=True) if w])
            features = [rows.get(e) for e in engine_ids]
        return self.session.propose(
            request_ids, num_tokens_no_spec, token_ids_cpu, candidates, features
        )


def external_id(engine_request_id: str) -> str:
    """vLLM appends "-" and 8 random characters to each request id it is given."""
    return engine_request_id.rsplit("-", 1)[0]
