"""A vLLM worker extension: tandem's hooks into the worker of a target's engine.

vLLM builds the proposer from a class path with only its config, so the speculation session is
attached afterwards through `collective_rpc("tandem_attach", ...)`. The worker may run in a process
of its own (vLLM's multiprocess executor, `distributed_executor_backend: mp`; by default it runs in
the target actor's), where `collective_rpc` arguments arrive pickled: the session is therefore
built here, by the zero-argument callable the target hands over
(tandem.cluster.transport.draft_pool.RemoteSession), and lives here, beside the proposer that calls
it every step. The target actor reaches it between engine steps through the other methods
(tandem.plugins.session_proxy).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class TandemWorkerExtension:
    def tandem_apply_fixes(self, exact_sampler: bool, any_vllm: bool) -> list[str]:
        """Work around vLLM bugs (tandem.plugins.fixes), with tandem's exact speculative sampler
        if asked (speculation.sampler); returns the names of the fixes applied."""
        from tandem.plugins import fixes

        return fixes.apply(self.model_runner, exact_sampler, any_vllm)  # type: ignore[attr-defined]

    def tandem_attach(
        self, make_session: Callable[[], Any], candidates: int, features: tuple[int, ...] = ()
    ) -> bool:
        """Build the session and give it to the proposer with the runner's batch; tap the
        target's logits for its top `candidates` per verified position (0: no tap) and, for
        feature modes (EAGLE-3), the residual stream entering the layers `features`; False if
        speculation is off."""
        from tandem.plugins.taps import FeatureTap, LogitsTap, MirrorSink

        runner = self.model_runner  # type: ignore[attr-defined]
        drafter = getattr(runner, "drafter", None)
        if not hasattr(drafter, "attach"):
            return False
        session = self.tandem_session = make_session()
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
            feature_tap.install(model, getattr(drafter, "aux_outputs", None))
        drafter.attach(session, runner.input_batch, tap, feature_tap)
        return True

    def tandem_register(self, request_id: str, spec: Any) -> None:
        self.tandem_session.register(request_id, spec)

    def tandem_release(self, request_id: str) -> Any:
        """The request's SpeculationStats; the drafters forget it."""
        return self.tandem_session.release(request_id)

    def tandem_stats(self) -> tuple[Any, Any]:
        """The session's SessionStats, and what its messages to the drafters cost."""
        session = self.tandem_session
        return session.stats(), session.transport.traffic()

    def tandem_close(self) -> None:
        self.tandem_session.transport.close()
