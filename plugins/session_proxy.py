"""The speculation session as the target actor sees it: the one in the engine's worker
(tandem.plugins.worker), reached with `collective_rpc` between engine steps.

The worker may be a process of its own, so nothing is shared by reference: a request's settings
go in before it joins the engine (queued on the engine thread ahead of the request itself), its
figures come back when it ends (on the engine thread, which is where requests end), and the
session's totals are asked for from any thread (they wait for the end of the current step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tandem.plugins.engine_setup import CLOSE, REGISTER, RELEASE, STATS

if TYPE_CHECKING:
    from tandem.plugins.engine_loop import EngineLoop


class SessionProxy:
    def __init__(self, loop: EngineLoop) -> None:
        self._loop = loop

    def register(self, request_id: str, spec: Any) -> None:
        """Before the request is added to the loop: runs ahead of it on the engine thread."""
        self._loop.later(lambda engine: engine.collective_rpc(REGISTER, args=(request_id, spec)))

    def release(self, request_id: str) -> Any:
        """The request's SpeculationStats; call on the engine thread (between steps)."""
        return self._loop.engine.collective_rpc(RELEASE, args=(request_id,))[0]

    def stats(self) -> tuple[Any, Any]:
        """(SessionStats, the drafter messages' WireTraffic), from any thread but the engine's."""
        return self._loop.call(lambda engine: engine.collective_rpc(STATS))[0]

    @staticmethod
    def close(engine: Any) -> None:
        """The session's sockets closed; on the engine thread, after the last release
        (`EngineLoop.shutdown(last=...)`)."""
        engine.collective_rpc(CLOSE)
