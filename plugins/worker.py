"""A vLLM worker extension: tandem's hooks into the worker of an in-process engine.

vLLM builds the proposer from a class path with only its config, so the session (which holds the
drafter handles) is attached afterwards through `collective_rpc("tandem_attach", ...)`. The engine
runs in the target actor's process, so the session object is passed by reference.
"""

from __future__ import annotations

from typing import Any


class TandemWorkerExtension:
    def tandem_apply_fixes(self, exact_sampler: bool, any_vllm: bool) -> list[str]:
        """Work around vLLM bugs (tandem.plugins.fixes), with tandem's exact speculative sampler
        if asked (speculation.sampler); returns the names of the fixes applied."""
        from tandem.plugins import fixes

        return fixes.apply(self.model_runner, exact_sampler, any_vllm)  # type: ignore[attr-defined]

    def tandem_attach(self, session: Any, candidates: int, features: tuple[int, ...] = ()) -> bool:
        """Give the proposer the session and the runner's batch, tap the target's logits for
        its top `candidates` per verified position (0: no tap) and, for feature modes
        (EAGLE-3), the residual stream entering the layers `features`; False if speculation is
        off."""
        from tandem.plugins.taps import FeatureTap, LogitsTap, MirrorSink

        runner = self.model_runner  # type: ignore[attr-defined]
        drafter = getattr(runner, "drafter", None)
        if not hasattr(drafter, "attach"):
            return False
        model = runner.get_model()
        tap = None
        if candidates:
            tap = LogitsTap(candidates)
            tap.install(model)
        if hasattr(model, "mirror_sink"):  # the Mirror-SD target class
            model.mirror_sink = MirrorSink(runner, session)
        feature_tap = None
        if features:
            feature_tap = FeatureTap(runner, features)
            feature_tap.install(model)
        drafter.attach(session, runner.input_batch, tap, feature_tap)
        return True
