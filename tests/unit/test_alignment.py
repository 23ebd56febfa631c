"""The aligner turns any interleaving of per-source streams into the one replay order."""

from __future__ import annotations

import pickle
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from rebate_guard.contract.order import Event, order_key
from rebate_guard.contract.validation import parse_label, parse_signup, parse_transaction
from streams.alignment import Aligner
from tests.factories import T0, label, signup, tx

SOURCES = frozenset({("transactions", 0), ("transactions", 1), ("signups", 0), ("labels", 0)})


def _event(source: tuple[str, int], ts: int, n: int) -> Event:
    topic = source[0]
    if topic == "transactions":
        return parse_transaction(tx(f"t{n}", ts, user_id=f"u{n % 3}"))
    if topic == "signups":
        return parse_signup(signup(f"u{n}", ts))
    return parse_label(label(f"t{n}", ts))


_offsets = st.lists(st.integers(0, 50), min_size=0, max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries({s: _offsets for s in sorted(SOURCES)}),
    st.integers(0, 10),
    st.randoms(use_true_random=False),
)
def test_any_interleaving_within_the_lateness_gives_the_replay_order(
    per_source: dict[tuple[str, int], list[int]], lateness: int, rnd: random.Random
) -> None:
    n = 0
    streams: dict[tuple[str, int], list[Event]] = {}
    for source, offsets in per_source.items():
        events = []
        for ts in sorted(offsets):
            events.append(_event(source, T0 + ts * 5, n))
            n += 1
        # Out of order within the allowed lateness: swap neighbours at most `lateness` apart.
        for i in range(len(events) - 1):
            if events[i + 1].ts - events[i].ts <= lateness and rnd.random() < 0.5:
                events[i], events[i + 1] = events[i + 1], events[i]
        streams[source] = events
    aligner: Aligner[tuple[str, int]] = Aligner(SOURCES, lateness_ms=lateness)
    released = []
    cursors = {s: 0 for s in streams}
    while any(cursors[s] < len(streams[s]) for s in streams):
        source = rnd.choice([s for s in streams if cursors[s] < len(streams[s])])
        released += aligner.offer(source, streams[source][cursors[source]])
        cursors[source] += 1
    released += aligner.finish()
    assert aligner.late == 0 and all(not r.late for r in released)
    everything = [e for events in streams.values() for e in events]
    expected = sorted(everything, key=lambda e: order_key(e, 0))
    assert [r.event for r in released] == expected


def test_nothing_is_released_until_every_source_has_spoken() -> None:
    aligner: Aligner[str] = Aligner(frozenset({"a", "b"}))
    assert aligner.offer("a", parse_transaction(tx("t1", T0))) == []
    assert aligner.offer("a", parse_transaction(tx("t2", T0 + 10))) == []
    released = aligner.offer("b", parse_signup(signup("u9", T0 + 5)))
    assert [r.event.ts for r in released] == [T0]  # T0 + 5 may still tie with a later "a"
    assert aligner.pending() == 2


def test_a_late_event_is_released_at_once_and_counted() -> None:
    aligner: Aligner[str] = Aligner(frozenset({"a", "b"}), lateness_ms=0)
    aligner.offer("a", parse_transaction(tx("t1", T0 + 100)))
    aligner.offer("b", parse_transaction(tx("t2", T0 + 100)))
    aligner.offer("a", parse_transaction(tx("t3", T0 + 200)))
    aligner.offer("b", parse_transaction(tx("t4", T0 + 200)))  # watermark now T0 + 200
    late = aligner.offer("a", parse_transaction(tx("old", T0 + 50)))
    assert [(r.event.ts, r.late) for r in late] == [(T0 + 50, True)] and aligner.late == 1


def test_state_pickles_mid_stream_and_resumes_identically() -> None:
    aligner: Aligner[str] = Aligner(frozenset({"a", "b"}), lateness_ms=3)
    first = aligner.offer("a", parse_transaction(tx("t1", T0)))
    first += aligner.offer("b", parse_transaction(tx("t2", T0 + 1)))
    clone = pickle.loads(pickle.dumps(aligner))
    rest = [parse_transaction(tx(f"t{i}", T0 + i)) for i in range(3, 9)]
    a = [r.event for r in aligner.offer_many("a", rest) + aligner.finish()]
    b = [r.event for r in clone.offer_many("a", rest) + clone.finish()]
    assert first == [] and a == b and len(a) == 8


def test_an_idle_source_stops_holding_the_watermark_until_it_speaks_again() -> None:
    aligner: Aligner[str] = Aligner(frozenset({"tx", "labels"}))
    assert aligner.offer("tx", parse_transaction(tx("t1", T0))) == []
    assert aligner.offer("tx", parse_transaction(tx("t2", T0 + 10))) == []
    assert [r.event.ts for r in aligner.idle("labels")] == [T0]
    assert [r.event.ts for r in aligner.idle("tx")] == [T0 + 10]  # all idle: release all
    # The labels source wakes up with an event behind the watermark: late, not lost.
    late = aligner.offer("labels", parse_label(label("t1", T0 + 5)))
    assert [(r.event.ts, r.late) for r in late] == [(T0 + 5, True)]
    assert aligner.offer("labels", parse_label(label("t2", T0 + 20))) == []
    assert aligner.offer("tx", parse_transaction(tx("t3", T0 + 30))) == []  # a tie may come
    released = aligner.offer("labels", parse_label(label("t4", T0 + 40)))
    assert [r.event.ts for r in released] == [T0 + 20]
