"""The proposer-side session, driven without Ray or vLLM (a scripted in-memory transport)."""

import time

import pytest

from tandem.speculation.drafter import Drafter
from tandem.speculation.protocol import DraftItem, DraftReply, Hint, Mode, PredraftPlan
from tandem.speculation.request_sync import RequestSpec
from tests.support.local_transport import LocalTransport, Sevens, plain_drafter, session_for

pytestmark = pytest.mark.timeout(120)


def step(session, rows):
    """One engine step: rows maps request id -> committed tokens."""
    ids = list(rows)
    return session.propose(ids, [len(rows[r]) for r in ids], [rows[r] for r in ids])


def test_sends_only_new_tokens_and_counts_verified_drafts():
    transport = LocalTransport()
    session = session_for(transport, timeout_s=1)
    session.register("a", RequestSpec(Mode.NGRAM, 3))
    history = [1, 2, 3, 1, 2]
    assert step(session, {"a": history}) == [[3, 1, 2]]
    first = transport.sent[-1][0][0]
    assert (first.start, first.tokens) == (0, (1, 2, 3, 1, 2))
    # the target accepted 2 drafts (3, 1) and added a bonus token 7
    history += [3, 1, 7]
    step(session, {"a": history})
    second = transport.sent[-1][0][0]
    assert (second.start, second.tokens) == (5, (3, 1, 7))
    stats = session.release("a")
    # the second step's draft was never verified (the request ended): not counted
    assert (stats.drafts, stats.draft_tokens) == (1, 3)
    assert "a" not in transport.drafters[0].histories  # freed on the drafter too


def test_off_and_unknown_requests_cost_no_round_trip():
    transport = LocalTransport()
    session = session_for(transport, timeout_s=1)
    session.register("off", RequestSpec(Mode.OFF, 0))
    assert step(session, {"off": [1, 1], "stranger": [1, 1]}) == [
        [],
        [],
    ]
    assert transport.sent == []


def drafter_in_trouble(trouble: str):
    """A session whose drafter fails (`failing`) or is late (`late`) on one step, then is
    well again: returns the transport, the session and the request's tokens after checking
    that the next step, too, asks the drafter nothing."""
    transport = LocalTransport()
    session = session_for(transport, timeout_s=0.01)
    session.register("a", RequestSpec(Mode.NGRAM, 2))
    tokens = [5, 6, 5]
    getattr(transport, trouble).add(0)
    assert step(session, {"a": tokens}) == [[]]
    getattr(transport, trouble).clear()
    calls = len(transport.sent)
    assert step(session, {"a": tokens + [6]}) == [[]]  # down or busy: not even asked
    assert len(transport.sent) == calls
    return transport, session, tokens + [6, 5]


def test_failed_drafter_yields_no_drafts_until_it_answers_again():
    transport, session, tokens = drafter_in_trouble("failing")
    assert session.stats().failures == 1 and session.stats().drafters_down == 1
    # It restarts empty; once a probe answers, speculation resumes with a full resend.
    transport.drafters[0] = plain_drafter()
    transport.alive_again.add(0)
    assert step(session, {"a": tokens}) == [[6, 5]]
    resent = transport.sent[-1][0][0]
    assert (resent.start, resent.tokens) == (0, (5, 6, 5, 6, 5))
    assert session.stats().drafters_down == 0


def test_late_drafter_is_not_a_fault_and_drafts_again_once_it_answers():
    """A drafter that misses the time budget (a loaded machine) is counted as a timeout, not a
    failure: it is not marked down, only skipped while its late call still runs."""
    transport, session, tokens = drafter_in_trouble("late")
    stats = session.stats()
    assert (stats.timeouts, stats.failures, stats.drafters_down) == (1, 0, 0)
    transport.busy_replicas.clear()  # the late call returned
    assert step(session, {"a": tokens}) == [[6, 5]]
    assert session.stats().timeouts == 1


def test_drafter_that_lost_a_request_gets_it_resent():
    transport = LocalTransport()
    session = session_for(transport, timeout_s=1)
    session.register("a", RequestSpec(Mode.NGRAM, 2))
    step(session, {"a": [1, 2, 1]})
    transport.drafters[0].free(["a"])  # e.g. evicted
    assert step(session, {"a": [1, 2, 1, 2]}) == [[]]  # answered "unknown"
    assert step(session, {"a": [1, 2, 1, 2, 1]}) == [[2, 1]]
    assert transport.sent[-1][0][0].start == 0


def test_requests_spread_over_drafter_replicas():
    transport = LocalTransport(replicas=2)
    session = session_for(transport, timeout_s=1)
    for name in "abcd":
        session.register(name, RequestSpec(Mode.NGRAM, 1))
    step(session, {n: [1, 1] for n in "abcd"})
    batch = transport.sent[-1]
    assert sorted(len(items) for items in batch.values()) == [2, 2]


def test_drafter_protocol_overlap_and_gap():
    drafter = plain_drafter()
    (reply,) = drafter.draft([DraftItem("r", 0, (1, 2, 1), 2, Mode.NGRAM)])
    assert reply == DraftReply("r", (2, 1), source=Mode.NGRAM, drafting_s=reply.drafting_s)
    assert 0 < reply.drafting_s < 1
    # a resend that overlaps what it holds is skipped, not duplicated
    drafter.draft([DraftItem("r", 1, (2, 1, 2), 2, Mode.NGRAM)])
    assert drafter.histories["r"].tokens == [1, 2, 1, 2]
    # a gap cannot be filled: the drafter asks for everything again
    assert not drafter.draft([DraftItem("r", 9, (1,), 2, Mode.NGRAM)])[0].known
    assert "r" not in drafter.histories
    assert not drafter.draft([DraftItem("new", 3, (1,), 2, Mode.NGRAM)])[0].known


def test_drafter_evicts_least_recent_beyond_its_bound():
    drafter = plain_drafter(max_requests=2)
    for name in "abc":
        drafter.draft([DraftItem(name, 0, (1,), 1, Mode.NGRAM)])
    assert list(drafter.histories) == ["b", "c"]


def pipelined_session(transport):
    return session_for(transport, pipelined=True)


def test_speculation_cache_hit_skips_the_round_trip():
    transport = LocalTransport()
    session = pipelined_session(transport)
    session.register("a", RequestSpec(Mode.NGRAM, 2))
    history = [7, 1, 2, 3, 4, 5, 6, 1, 2]
    assert step(session, {"a": history}) == [[3, 4]]  # just in time: nothing cached yet
    assert len(transport.sent) == 1
    # the drafter pre-drafted "both accepted, then 5" while the target verified [3, 4]
    (item,) = transport.predrafted[-1][0]
    assert item.block == (3, 4)
    history += [3, 4, 5]
    assert step(session, {"a": history}) == [[6, 1]]
    assert len(transport.sent) == 1  # served from the cache: no draft call
    # the next pre-drafting call carried the committed tokens the drafter lacked
    assert transport.predrafted[-1][0][0].tokens == (3, 4, 5)
    assert transport.drafters[0].histories["a"].tokens == history
    stats = session.release("a")
    assert (stats.cache_hits, stats.cache_misses, stats.drafts) == (1, 0, 1)


def test_speculation_cache_miss_drafts_just_in_time():
    transport = LocalTransport()
    session = session_for(transport, pipelined=True, wait_for_misses="always")
    session.register("a", RequestSpec(Mode.NGRAM, 2))
    history = [7, 1, 2, 3, 4, 5, 6, 1, 2]
    step(session, {"a": history})
    history += [3, 1]  # one draft accepted, then the target emitted 1: not pre-drafted
    expected = plain_drafter().draft([DraftItem("x", 0, tuple(history), 2, Mode.NGRAM)])[0]
    assert expected.tokens == (2, 3)
    assert step(session, {"a": history}) == [list(expected.tokens)]
    assert len(transport.sent) == 2  # the miss went to the drafter
    assert session.release("a").cache_misses == 1


def test_unpipelined_requests_are_not_predrafted():
    transport = LocalTransport()
    session = pipelined_session(transport)
    session.register("a", RequestSpec(Mode.NGRAM, 2, pipelined=False))
    step(session, {"a": [1, 2, 3, 1]})
    step(session, {"a": [1, 2, 3, 1, 2, 3, 1]})
    assert transport.predrafted == [] and len(transport.sent) == 2


def test_large_batches_draft_less_then_nothing():
    transport = LocalTransport()
    draft_length = {"full_until_batch": 1, "off_above_batch": 2}
    session = session_for(transport, draft_length=draft_length)
    for name in "abc":
        session.register(name, RequestSpec(Mode.NGRAM, 3))
    history = [1, 2, 3, 4, 1, 2]
    assert step(session, {"a": history}) == [[3, 4, 1]]
    assert step(session, {"a": history, "b": history}) == [[3, 4], [3, 4]]  # shrunk to 2
    assert step(session, {n: history for n in "abc"}) == [[], [], []]  # off


def test_mirror_hint_chooses_the_rejections_to_predraft():
    drafter = plain_drafter()
    history = (7, 1, 2, 3, 4, 5, 6, 1, 2, 9, 1, 8)
    drafter.draft([DraftItem("a", 0, history, 2, Mode.NGRAM)])
    block = (2, 3)
    # the early exit expects the target to emit 9 instead of the first draft token
    drafter.hint({"a": Hint(block, ((9, 2), (3, 4), (4, 5)))})
    item = DraftItem("a", len(history), (), 2, Mode.NGRAM, block=block)
    (reply,) = drafter.predraft(
        [item], PredraftPlan(outcomes=4, fanout=1, time_s=1, await_hint=True)
    )
    assert list(reply.blocks)[1] == (0, 9)  # right after "all accepted"
    assert reply.blocks[(0, 9)] == (1, 8)  # what followed "2 9" before
    assert "a" not in drafter.hints  # used once


@pytest.mark.timeout(30)  # waiting for a hint that never comes would hang
def test_predraft_without_its_hint_stops_waiting_at_the_deadline():
    drafter = plain_drafter()
    drafter.draft([DraftItem("a", 0, (1, 2, 1), 1, Mode.NGRAM)])
    drafter.hint({"a": Hint((5,), ((6,), (7,)))})  # a hint for another block: ignored
    item = DraftItem("a", 3, (), 1, Mode.NGRAM, block=(2,))
    plan = PredraftPlan(outcomes=4, fanout=1, time_s=0.02, await_hint=True)
    (reply,) = drafter.predraft([item], plan)
    assert all(accepted == 1 for accepted, _ in reply.blocks)  # only "all accepted" guesses


def test_rejections_are_guessed_from_the_requests_own_target_candidates():
    drafter = plain_drafter()
    history = (7, 1, 2, 3, 4, 5, 6, 1, 2, 9, 1, 8)
    # the target once ranked 9 then 3 after token 2 (in this request): the likeliest corrections
    drafter.draft([DraftItem("a", 0, history, 2, Mode.NGRAM, candidates=((2, (9, 3)),))])
    item = DraftItem("a", len(history), (), 2, Mode.NGRAM, block=(2, 3))
    (reply,) = drafter.predraft([item], PredraftPlan(outcomes=4, fanout=2, time_s=1))
    assert reply.blocks[(1, 9)] == (1, 8)  # "2" accepted, then 9 instead of 3
    other = DraftItem("b", 0, history, 2, Mode.NGRAM)  # another request learns nothing from it
    drafter.draft([other])
    (reply,) = drafter.predraft(
        [DraftItem("b", len(history), (), 2, Mode.NGRAM, block=(2, 3))],
        PredraftPlan(outcomes=4, fanout=2, time_s=1),
    )
    assert all(accepted == 2 for accepted, _ in reply.blocks)


def test_predraft_budget_is_the_targets_verification_window_less_the_wire():
    transport = LocalTransport()
    transport.delay_s = 0.02  # the link: each call's round trip, part of the step
    session = pipelined_session(transport)
    session.register("a", RequestSpec(Mode.NGRAM, 2))
    history = [7, 1, 2, 3, 4, 5, 6, 1, 2]
    step(session, {"a": history})
    assert transport.plans[-1].time_s == 0  # nothing measured yet: only "all accepted"
    time.sleep(0.1)  # the target verifies
    step(session, {"a": [*history, 9, 9]})  # a miss: drafted just in time, across the link
    # the pre-draft's call and reply cross the link inside the window too
    assert 0.9 * 0.1 - 0.025 <= transport.plans[-1].time_s < 0.9 * 0.15 - 0.02


def test_predraft_starts_no_outcome_it_cannot_finish_in_time():
    drafter = plain_drafter()
    history = (7, 1, 2, 3, 4, 5, 6, 1, 2, 9, 1, 8)
    drafter.draft([DraftItem("a", 0, history, 2, Mode.NGRAM, candidates=((2, (9, 3)),))])
    item = DraftItem("a", len(history), (), 2, Mode.NGRAM, block=(2, 3))
    drafter.token_s[Mode.NGRAM] = 10.0  # as if each drafted token took 10 s
    (reply,) = drafter.predraft([item], PredraftPlan(outcomes=4, fanout=2, time_s=1))
    assert list(reply.blocks) == [(2, 4)]  # "all accepted" only: (1, 9) would not fit


def test_every_request_gets_all_accepted_before_any_rejection():
    drafter = plain_drafter()
    history = (7, 1, 2, 3, 4, 5, 6, 1, 2, 9, 1, 8)
    items = []
    for name in "ab":
        drafter.draft([DraftItem(name, 0, history, 2, Mode.NGRAM, candidates=((2, (9, 3)),))])
        items.append(DraftItem(name, len(history), (), 2, Mode.NGRAM, block=(2, 3)))
    replies = drafter.predraft(items, PredraftPlan(outcomes=4, fanout=2, time_s=0))
    assert [list(r.blocks) for r in replies] == [[(2, 4)], [(2, 4)]]


def test_a_slow_modes_estimate_does_not_stop_a_fast_mode():
    drafter = plain_drafter()
    history = (7, 1, 2, 3, 4, 5, 6, 1, 2, 9, 1, 8)
    items = []
    for name, mode in (("slow", Mode.NGRAM), ("fast", Mode.SUFFIX)):
        drafter.draft([DraftItem(name, 0, history, 2, mode, candidates=((2, (9, 3)),))])
        items.append(DraftItem(name, len(history), (), 2, mode, block=(2, 3)))
    drafter.token_s[Mode.NGRAM] = 10.0  # as if ngram drafting took 10 s a token
    slow, fast = drafter.predraft(items, PredraftPlan(outcomes=4, fanout=2, time_s=1))
    assert list(slow.blocks) == [(2, 4)]
    assert fast.blocks[(1, 9)] == (1, 8)


def test_adaptive_draft_length_stops_drafting_what_is_rejected_and_probes():
    transport = LocalTransport()
    transport.drafters = [Drafter({"ngram": Sevens()})]
    session = session_for(transport, draft_length={"adaptive": True, "verify_cost": 0.07})
    session.register("a", RequestSpec(Mode.NGRAM, 4))
    history = [1, 2, 3]
    lengths = []
    for _ in range(40):
        lengths.append(len(step(session, {"a": history})[0]))
        history = history + [1]  # every first draft token rejected
    assert lengths[0] == 3  # alpha 0.5 before any verification
    assert lengths[-16:] == ([0] * 7 + [1]) * 2  # nothing, but a one-token probe every 8 steps
    assert session.release("a").draft_tokens == sum(lengths[:-1])


def test_features_are_neither_taken_nor_sent_while_the_policy_drafts_nothing():
    """Issue 26, item 3: at a batch size that drafts nothing, a feature mode's rows are not asked
    of the tap, and what was kept is dropped; when drafting resumes they flow again."""
    import numpy as np

    transport = LocalTransport()
    session = session_for(transport, draft_length={"full_until_batch": 1, "off_above_batch": 1})
    session.register("a", RequestSpec(Mode.EAGLE, 2))
    session.register("b", RequestSpec(Mode.EAGLE, 2))
    rows = {"a": [1, 2, 3], "b": [4, 5, 6]}
    prefilled = set()

    def step_with_features(requests):
        """A step whose forward read every committed token but the newest (a prefill), or
        the one before it."""
        ids = list(requests)
        wanted = session.wants_features(ids)
        features = []
        for r, w in zip(ids, wanted, strict=True):
            n = len(rows[r])
            first = n - 2 if r in prefilled else 0
            prefilled.add(r)
            features.append((first, np.ones((n - 1 - first, 4), np.float16)) if w else None)
        session.propose(ids, [len(rows[r]) for r in ids], [rows[r] for r in ids], features=features)
        return wanted

    assert step_with_features(["a", "b"]) == [True, True]  # the prompts' rows, before any policy
    sent = [item for batch in transport.sent for items in batch.values() for item in items]
    assert sent == []  # two streams: nothing drafted, nothing sent
    assert step_with_features(["a", "b"]) == [False, False]  # nor taken from the tap
    session.release("b")
    rows["a"].append(7)
    assert step_with_features(["a"]) == [False]  # decided by the step before
    rows["a"].append(8)
    assert step_with_features(["a"]) == [True]  # alone again: drafting, and its rows wanted
    (item,) = transport.sent[-1][0]
    assert item.features is not None and item.features_start == 3  # after the dropped ones


def test_features_leave_as_int8_blocks_when_the_config_says_so():
    """speculation.feature_encoding: int8 rows and their scales go to the drafter, and the
    bytes counted are what was sent (about half of float16's)."""
    import numpy as np

    transport = LocalTransport()
    session = session_for(transport, feature_encoding="int8")
    session.register("a", RequestSpec(Mode.EAGLE, 2))
    rows = np.random.default_rng(0).normal(size=(2, 128)).astype(np.float16)
    assert session.wants_features(["a"]) == [True]
    session.propose(["a"], [3], [[1, 2, 3]], features=[(0, rows)])
    (item,) = transport.sent[-1][0]
    assert item.features.dtype == np.int8 and item.feature_scales.shape == (2, 2)
    assert session.stats().feature_bytes == item.features.nbytes + item.feature_scales.nbytes
    assert session.stats().feature_bytes < 0.55 * rows.nbytes
