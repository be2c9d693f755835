"""The proposer-drafter wire format (msgpack, versioned) and its sockets, without Ray."""

from __future__ import annotations

import dataclasses
import pickle
import threading
import time

import msgpack
import numpy as np
import pytest

from tandem.cluster.transport.draft_channel import (
    ChannelTimeout,
    DraftChannel,
    DrafterError,
    DraftServer,
    wait,
)
from tandem.cluster.transport.sockets import Endpoint
from tandem.speculation.protocol import (
    WIRE_TYPES,
    DraftItem,
    DraftReply,
    Hint,
    PredraftPlan,
    PredraftReply,
)
from tandem.speculation.wire import CODEC, WIRE_VERSION, Codec, Kind, WireError

pytestmark = pytest.mark.timeout(60)

ITEM = DraftItem(
    "chatcmpl-7f3a",
    412,
    (2384, 314, 28),
    4,
    "ngram",
    candidates=((28, (11, 13, 330, 17)), (314, (28, 44, 51, 2))),
    block=(7, 8, 9),
)


def test_every_protocol_message_survives_the_round_trip_smaller_than_pickle():
    bodies = {  # arrays decode as tuples, so the bodies are written with tuples
        Kind.DRAFT: (ITEM, dataclasses.replace(ITEM, request_id="b", block=())),
        Kind.PREDRAFT: ((ITEM,), PredraftPlan(4, 2, 0.031, await_hint=True)),
        Kind.HINT: {"a": Hint((1, 2), ((3, 4), (5, 6), (7, 8)))},
        Kind.FREE: ("a", "b"),
    }
    for kind, body in bodies.items():
        data = CODEC.encode(kind, 41, body)
        assert CODEC.decode(data) == (kind, 41, body)
        assert len(data) < len(pickle.dumps(body, protocol=5)) / 2
    replies = [
        DraftReply("a", (1, 2, 3, 4)),
        DraftReply("b", (), known=False),
        PredraftReply("a", {(4, 17): (1, 2, 3, 4), (0, 9): (5,)}),
    ]
    assert CODEC.decode(CODEC.encode(Kind.DRAFT, 1, replies))[2] == tuple(replies)
    assert all(type(t) in WIRE_TYPES for t in (ITEM, *replies))


def test_numpy_arrays_keep_dtype_shape_and_values():
    hidden = np.random.default_rng(0).standard_normal((3, 576)).astype(np.float16)
    data = CODEC.encode(Kind.DRAFT, 1, {"features": hidden, "token": np.int64(7)})
    body = CODEC.decode(data)[2]
    assert body["features"].dtype == np.float16 and body["features"].shape == (3, 576)
    assert np.array_equal(body["features"], hidden) and body["token"] == 7
    assert len(data) < hidden.nbytes + 64  # raw bytes, no per-element encoding


def test_a_field_appended_with_a_default_reads_both_ways():
    """Another engineer adds a field to DraftItem (as issue 15 added the EAGLE-3 features):
    old and new sides of a rolling upgrade keep reading each other, with no codec change."""

    @dataclasses.dataclass(frozen=True)
    class DraftItemWithWidth(DraftItem):
        tree_width: int = 1

    old, new = Codec([DraftItem]), Codec([DraftItemWithWidth])
    richer = DraftItemWithWidth(**dataclasses.asdict(ITEM), tree_width=4)
    read_by_old = old.decode(new.encode(Kind.DRAFT, 1, [richer]))[2][0]
    assert read_by_old == ITEM
    read_by_new = new.decode(old.encode(Kind.DRAFT, 1, [ITEM]))[2][0]
    assert read_by_new.tree_width == 1 and read_by_new.tokens == ITEM.tokens
    assert new.decode(new.encode(Kind.DRAFT, 1, [richer]))[2][0] == richer


def test_the_eagle_features_cross_the_wire_as_raw_fp16():
    features = np.random.default_rng(1).standard_normal((5, 3 * 576)).astype(np.float16)
    item = dataclasses.replace(ITEM, features=features, features_start=409)
    data = CODEC.encode(Kind.DRAFT, 1, [item])
    (read,) = CODEC.decode(data)[2]
    assert read.features_start == 409 and read.features.dtype == np.float16
    assert np.array_equal(read.features, features)
    assert len(data) < features.nbytes + 256  # the rows' bytes and a small header


def test_another_version_or_garbage_is_refused_clearly():
    other = msgpack.packb([WIRE_VERSION + 1, Kind.DRAFT, 1, []])
    with pytest.raises(WireError, match=f"wire version {WIRE_VERSION + 1}"):
        CODEC.decode(other)
    for garbage in (b"\x00\x01", msgpack.packb({"a": 1}), pickle.dumps([ITEM])):
        with pytest.raises(WireError):
            CODEC.decode(garbage)
    with pytest.raises(TypeError, match="no encoding for object"):
        CODEC.encode(Kind.DRAFT, 1, object())


class Recorder:
    """A dispatch that drafts token ids from a request's tokens, and records the order."""

    def __init__(self, predraft_s: float = 0.0) -> None:
        self.seen: list[tuple[Kind, float]] = []
        self.predraft_s = predraft_s
        self.predrafted_at = 0.0  # when the last pre-draft finished

    def __call__(self, kind, body):
        self.seen.append((kind, time.perf_counter()))
        if kind == Kind.DRAFT:
            if body[0].request_id == "fail":
                raise RuntimeError("the draft model ran out of memory")
            return [DraftReply(item.request_id, item.tokens[-2:]) for item in body]
        if kind == Kind.PREDRAFT:
            time.sleep(self.predraft_s)
            self.predrafted_at = time.perf_counter()
            return [PredraftReply(item.request_id, {(1, 5): (6,)}) for item in body[0]]
        return None


@pytest.fixture
def server():
    recorder = Recorder(predraft_s=0.3)
    server = DraftServer("127.0.0.1", recorder, inline=(Kind.HINT,))
    server.recorder = recorder
    yield server
    server.close()


def test_channel_draft_error_and_late_replies(server):
    channel = DraftChannel(server.endpoint)
    try:
        seq = channel.send(Kind.DRAFT, [ITEM])
        assert wait({0: (channel, seq)}, 5.0) == {0: (DraftReply(ITEM.request_id, (314, 28)),)}
        failing = channel.send(Kind.DRAFT, [dataclasses.replace(ITEM, request_id="fail")])
        (error,) = wait({0: (channel, failing)}, 5.0).values()
        assert isinstance(error, DrafterError) and "ran out of memory" in str(error)
        slow = channel.send(Kind.PREDRAFT, ([ITEM], PredraftPlan(4, 2, 0.3)))
        (late,) = wait({0: (channel, slow)}, 0.01).values()
        assert isinstance(late, ChannelTimeout)
        # the late reply is dropped when it comes; the next one is matched by its seq
        seq = channel.send(Kind.DRAFT, [ITEM])
        (reply,) = wait({0: (channel, seq)}, 5.0).values()
        assert reply == (DraftReply(ITEM.request_id, (314, 28)),)
        assert channel.messages == 4 and channel.bytes_received > 0
    finally:
        channel.close()


def test_a_late_call_kept_pending_is_answered_once_its_reply_comes(server):
    """What the transport's `busy` reads: a late seq kept pending (forget=False) is not
    answered while the drafter works, then answered once (its reply is dropped)."""
    channel = DraftChannel(server.endpoint)
    try:
        slow = channel.send(Kind.PREDRAFT, ([ITEM], PredraftPlan(4, 2, 0.3)))
        (late,) = wait({0: (channel, slow)}, 0.01, forget=False).values()
        assert isinstance(late, ChannelTimeout)
        assert not channel.answered(slow)
        deadline = time.monotonic() + 5
        while not channel.answered(slow):
            assert time.monotonic() < deadline, "the late reply never came"
            time.sleep(0.01)
        assert not channel.answered(slow)  # answered once, then forgotten
    finally:
        channel.close()


def test_hints_land_while_a_predraft_runs_and_frees_come_from_any_thread(server):
    channel = DraftChannel(server.endpoint)
    try:
        seq = channel.send(Kind.PREDRAFT, ([ITEM], PredraftPlan(4, 2, 0.3)))
        time.sleep(0.05)
        channel.send(Kind.HINT, {ITEM.request_id: Hint((1,), ((2,), (3,)))})
        thread = threading.Thread(target=channel.post, args=(Kind.FREE, ["a"]))
        thread.start()
        thread.join()
        (replies,) = wait({0: (channel, seq)}, 5.0).values()
        assert replies[0].blocks == {(1, 5): (6,)}
        deadline = time.monotonic() + 5
        while len(server.recorder.seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        kinds = [kind for kind, _ in server.recorder.seen]
        assert kinds == [Kind.PREDRAFT, Kind.HINT, Kind.FREE]  # the hint did not wait
        assert server.recorder.seen[1][1] < server.recorder.predrafted_at  # during it
    finally:
        channel.close()


def test_a_caller_without_the_password_gets_nothing(server):
    intruder = DraftChannel(Endpoint(server.endpoint.address, "guessed"))
    try:
        seq = intruder.send(Kind.DRAFT, [ITEM])
        (result,) = wait({0: (intruder, seq)}, 0.5).values()
        assert isinstance(result, ChannelTimeout)
        assert server.recorder.seen == []
    finally:
        intruder.close()


def test_a_dead_drafter_never_blocks_the_sender():
    """Nobody listens: messages queue up to ZMQ's high-water mark, then sends fail at once
    (the proposer treats the drafter as failed) and posts are dropped, never blocking."""
    from tandem.cluster.transport.draft_channel import ChannelFull
    from tests.support.services import free_port

    channel = DraftChannel(Endpoint(f"tcp://127.0.0.1:{free_port()}", "x"))
    try:
        with pytest.raises(ChannelFull):
            for _ in range(100_000):
                channel.send(Kind.HINT, {})
        for _ in range(100_000):
            channel.post(Kind.FREE, ["a"])
        full = channel.socket.get_hwm()
        assert channel.messages < 3 * full  # the rest were refused, not queued
        (result,) = wait({0: ChannelFull("full")}, 1.0).values()
        assert isinstance(result, ChannelFull)
    finally:
        channel.close()
