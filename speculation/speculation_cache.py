"""Pre-drafting (PEARL, SSD): after handing the target a block, the session asks the drafters to
pre-draft the next block for the block's likeliest verification outcomes while the target
verifies it. At the next step the actual outcome (accepted length, emitted token) is looked up in
that speculation cache (each request's `RequestSync.cache`): a hit costs no round trip (an empty
entry, too: the drafter has nothing there), a miss is drafted just in time where waiting pays
(the session decides).

`PreDrafting` holds the call in flight between two steps and times the window it must fit in:
the target's verification, from the proposer handing it its drafts to the next step.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from tandem.speculation.draft_transport import Transport
from tandem.speculation.protocol import DraftItem, PredraftPlan, PredraftReply

if TYPE_CHECKING:
    from tandem.speculation.settings import SpeculationConfig


class PreDrafting:
    def __init__(self, transport: Transport, config: SpeculationConfig) -> None:
        self.transport = transport
        self.config = config
        self.timeout_s = config.step_timeout_ms / 1000
        self.handle: Any = None  # the pre-drafting started last step
        self.wait_s = 0.0  # waiting for pre-drafted blocks, summed
        self._returned = 0.0  # when the proposer last handed the target its drafts
        # Moving average of the time from handing the target its drafts to the next step.
        self.window_s = 0.0

    def step_started(self) -> None:
        """Time the target's verification: from the last step's return to this call.

        Not the whole step: a pre-draft budget taken from the step, which includes waiting for
        the pre-draft itself, would grow with every pre-draft that overran.
        """
        window = time.perf_counter() - self._returned
        if self._returned and window < 1.0:  # not across idle time
            self.window_s = 0.8 * self.window_s + 0.2 * window if self.window_s else window
        self._returned = 0.0

    def step_returned(self) -> None:
        """The target has its drafts: its verification, the next window, starts."""
        self._returned = time.perf_counter()

    def idle(self) -> None:
        """A step without drafts: no verification window to time."""
        self._returned = 0.0

    def start(self, batches: dict[int, list[DraftItem]], wire_s: float = 0.0) -> None:
        """Have the drafters pre-draft these blocks' next ones, in 0.9 of the window less the
        round trip `wire_s` (the call and its reply cross the link inside the window too)."""
        pipeline = self.config.pipeline
        budget = max(0.0, 0.9 * self.window_s - wire_s)
        plan = PredraftPlan(pipeline.outcomes, pipeline.fanout, budget, self.config.mirror.enabled)
        self.handle = self.transport.predraft(batches, plan)

    def collect(self) -> dict[int, list[PredraftReply] | Exception]:
        """The blocks pre-drafted since last step, by replica (none if nothing was started)."""
        handle, self.handle = self.handle, None
        if handle is None:
            return {}
        start = time.perf_counter()
        results = self.transport.collect(handle, self.timeout_s)
        self.wait_s += time.perf_counter() - start
        return results
