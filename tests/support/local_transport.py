"""An in-memory Transport over real Drafters, and a session over it, for tests that run a
speculation session without Ray: the session's own tests, and the engine tests that need drafts
to flow."""

import time

from tandem.speculation.drafter import Drafter
from tandem.speculation.ngram import NgramSource
from tandem.speculation.session import SpeculationSession
from tandem.speculation.settings import SpeculationConfig
from tandem.speculation.source import DraftSource
from tandem.speculation.suffix import SuffixSource


def plain_drafter(**options):
    """A drafter with the sources that need no model or vocabulary."""
    return Drafter({"ngram": NgramSource(), "suffix": SuffixSource()}, **options)


class Sevens(DraftSource):
    """Drafts 7s, which the tests' targets never emit: every draft is rejected at once."""

    def propose(self, history, extra, k):
        return [7] * k


def session_for(
    transport,
    timeout_s=1.0,
    pipelined=False,
    draft_length=None,
    wait_for_misses="when_it_pays",
    **speculation,
):
    """A session with drafts at every batch size (unless `draft_length` says otherwise) and the
    speculation cache off (unless `pipelined`)."""
    config = SpeculationConfig(
        step_timeout_ms=timeout_s * 1000,
        pipeline={
            "enabled": pipelined,
            "outcomes": 4,
            "fanout": 2,
            "wait_for_misses": wait_for_misses,
        },
        draft_length=draft_length or {"full_until_batch": 1000, "off_above_batch": 1000},
        **speculation,
    )
    return SpeculationSession(transport, config)


class LocalTransport:
    """Real Drafters behind an in-memory transport that can fail on command."""

    def __init__(self, replicas=1):
        self.replicas = replicas
        self.drafters = [plain_drafter() for _ in range(replicas)]
        self.sent = []
        self.failing = set()  # replicas whose calls fail
        self.late = set()  # replicas whose calls miss the time budget
        self.busy_replicas = set()
        self.alive_again = set()
        self.predrafted = []
        self.plans = []
        self.delay_s = 0.0  # how long a just-in-time draft call takes

    def draft(self, batches, timeout_s):
        self.sent.append(batches)
        time.sleep(self.delay_s)
        out = {}
        for replica, items in batches.items():
            if replica in self.failing:
                out[replica] = RuntimeError("drafter failed")
            elif replica in self.late:
                out[replica] = TimeoutError("too slow")
                self.busy_replicas.add(replica)
            else:
                out[replica] = self.drafters[replica].draft(items)
        return out

    def free(self, replica, request_ids):
        self.drafters[replica].free(request_ids)

    def probe(self, replica):
        return replica in self.alive_again

    def busy(self, replica):
        return replica in self.busy_replicas

    def predraft(self, batches, plan):
        self.predrafted.append(batches)
        self.plans.append(plan)
        return {r: self.drafters[r].predraft(items, plan) for r, items in batches.items()}

    def collect(self, handle, timeout_s):
        return handle
