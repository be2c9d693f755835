"""A vLLM worker extension: hands tandem's speculation session to the proposer.

vLLM builds the proposer from a class path with only its config, so the session (which holds the
drafter handles) is attached afterwards through `collective_rpc("tandem_attach", ...)`. The engine
runs in the target actor's process, so the session object is passed by reference.
"""

from __future__ import annotations

from typing import Any


class TandemWorkerExtension:
    def tandem_attach(self, session: Any) -> bool:
        """Give the proposer the session and the runner's batch; False if speculation is off."""
        runner = self.model_runner  # type: ignore[attr-defined]
        drafter = getattr(runner, "drafter", None)
        if not hasattr(drafter, "attach"):
            return False
        drafter.attach(session, runner.input_batch)
        return True
