"""The speculation cache across a link (issue 27): what spares the target a round trip to a far
drafter. Pure logic: real Drafters behind the in-memory transport, no Ray or vLLM."""

import time

import pytest

from tandem.speculation.drafter import Drafter
from tandem.speculation.policy import worth_waiting
from tandem.speculation.protocol import DraftItem, Mode, PredraftPlan
from tandem.speculation.request_sync import RequestSpec
from tests.support.local_transport import LocalTransport, Sevens, plain_drafter, session_for

pytestmark = pytest.mark.timeout(60)


def test_an_empty_block_is_predrafted_with_guesses_for_the_token_the_target_emits():
    drafter = plain_drafter()
    # the target once ranked 6 then 9 after token 5 (its candidates, sent with the tokens)
    drafter.draft([DraftItem("a", 0, (5, 6, 5), 2, Mode.NGRAM, candidates=((5, (6, 9)),))])
    item = DraftItem("a", 3, (), 2, Mode.NGRAM)  # the target verifies no draft this step
    (reply,) = drafter.predraft([item], PredraftPlan(outcomes=4, fanout=2, time_s=1))
    # the drafter's own guess (6, what followed 5 before) and the target's other candidate (9),
    # after which the request's tokens offer nothing to copy: known to be empty, not missing
    assert reply.blocks == {(0, 6): (5,), (0, 9): ()}


def test_the_token_after_a_full_block_has_guesses_beyond_the_drafters_own():
    drafter = plain_drafter()
    history = (7, 1, 2, 3, 4, 5, 6, 4, 9, 1, 2)
    drafter.draft([DraftItem("a", 0, history, 2, Mode.NGRAM, candidates=((4, (5, 9)),))])
    item = DraftItem("a", len(history), (), 2, Mode.NGRAM, block=(3, 4))
    (reply,) = drafter.predraft([item], PredraftPlan(outcomes=8, fanout=2, time_s=1))
    assert reply.blocks[(2, 9)] == (1, 2)  # both accepted, then 9 where the drafter said 5
    assert (2, 5) in reply.blocks  # the drafter's own guess first


def step(session, rows, candidates=None):
    ids = list(rows)
    return session.propose(ids, [len(rows[r]) for r in ids], [rows[r] for r in ids], candidates)


@pytest.mark.parametrize(("emitted", "draft"), [(7, [8, 9]), (4, [])])
def test_a_step_after_an_empty_draft_is_served_from_the_cache(emitted, draft):
    transport = LocalTransport()
    session = session_for(transport, pipelined=True, wait_for_misses="always")
    session.register("a", RequestSpec(Mode.NGRAM, 2))
    step(session, {"a": [7, 8]})
    time.sleep(0.05)  # the target verifies: the pre-drafts' budget
    # nothing to copy after 9 yet; the target's candidates after 9 were 7 and 4
    assert step(session, {"a": [7, 8, 9]}, [((9, (7, 4)),)]) == [[]]
    assert len(transport.sent) == 2 and transport.predrafted[-1][0][0].block == ()
    # the target emits one token: its outcome was pre-drafted, a draft or knowingly none
    assert step(session, {"a": [7, 8, 9, emitted]}) == [draft]
    assert len(transport.sent) == 2  # no round trip for either
    assert session.release("a").cache_hits == 1


def test_a_miss_is_not_waited_for_where_the_round_trip_costs_more_than_drafts_earn():
    transport = LocalTransport()
    transport.drafters = [Drafter({"ngram": Sevens()})]
    transport.delay_s = 0.01  # the link's round trip
    session = session_for(transport, pipelined=True)
    session.register("a", RequestSpec(Mode.NGRAM, 4))
    history = [1, 2, 3]
    drafts = []
    for _ in range(6):
        drafts.append(step(session, {"a": history})[0])
        time.sleep(0.02)  # the target verifies: a round trip costs half a step
        history = history + [1]  # every draft rejected at once
    # alpha 0.5 at first: worth the wait; one rejection (alpha 0.32) and it no longer is
    assert drafts == [[7] * 4] + [[]] * 5
    assert len(transport.sent) == 1  # never asked just in time again...
    assert len(transport.predrafted) == 6  # ...but pre-drafted every step, kept in sync
    assert transport.drafters[0].histories["a"].tokens == history[:-1]
    stats = session.release("a")
    assert (stats.cache_misses, stats.skipped_waits) == (5, 5)


def test_waiting_pays_where_drafts_earn_more_than_the_wait():
    assert worth_waiting(alpha=0.5, k=4, wait=0.5)  # 0.94 more tokens expected
    assert not worth_waiting(alpha=0.3, k=4, wait=0.5)  # 0.42
    assert worth_waiting(alpha=0.3, k=4, wait=0.03)  # a drafter on the same node
    assert not worth_waiting(alpha=0.9, k=0, wait=0.01)  # no draft asked: nothing to wait for


class SlowSevens(Sevens):
    """Sevens that take their time: a drafter slow at drafting, not far away."""

    def propose(self, history, extra, k):
        time.sleep(0.01)
        return super().propose(history, extra, k)


def test_a_slow_drafter_on_the_same_node_is_waited_for():
    """Only the wire counts against waiting: the drafting itself is what a draft costs on the
    same node too, and waiting for it pays there (measured)."""
    transport = LocalTransport()
    transport.drafters = [Drafter({"ngram": SlowSevens()})]
    session = session_for(transport, pipelined=True)
    session.register("a", RequestSpec(Mode.NGRAM, 4))
    history = [1, 2, 3]
    for _ in range(6):
        assert step(session, {"a": history}) == [[7] * 4]  # drafted just in time, every step
        time.sleep(0.02)
        history = history + [1]
    assert session.release("a").skipped_waits == 0
