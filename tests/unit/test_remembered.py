"""The decider's remembered vectors: packed compactly, rebuilt exactly (keys, order, values,
types), forgotten oldest first past the count, and checkpoints that kept them as dicts resume
with the same vectors and learn the same from a label."""

import math
import pickle
import struct
from collections import OrderedDict

from rebate_guard.contract.validation import parse_label, parse_transaction
from rebate_guard.core.decider import Decider, Scorer
from rebate_guard.core.remembered import Packed, Packer, RememberedVectors, unpack
from tests.factories import HOUR, T0, label, tx


def _bits(x: dict[str, object]) -> list[tuple[str, type, object]]:
    """Each key, value type and value (a float by its bits: -0.0 and NaN compare too)."""
    return [(k, type(v), struct.pack("<d", v) if isinstance(v, float) else v) for k, v in x.items()]


def test_a_vector_comes_back_with_the_same_keys_order_types_and_bits() -> None:
    x: dict[str, float | None] = {
        "b": 1.5,
        "a": None,
        "count": 3,
        "flag": True,
        "zero": -0.0,
        "missing": math.nan,
        "tiny": 5e-324,
        "big": 2**53,
    }
    packer = Packer()
    packed = packer.pack(x)
    assert isinstance(packed, Packed) and len(packed.values) == len(x)
    assert _bits(unpack(packed)) == _bits(x)
    assert list(unpack(packed)) == list(x)
    # The next with the same keys and types shares them; other types get their own codes.
    again, other = packer.pack({**x, "b": 2.5}), packer.pack({**x, "a": 2.0})
    assert isinstance(again, Packed) and again.keys is packed.keys and again.codes is packed.codes
    assert isinstance(other, Packed) and other.keys is packed.keys and other.codes == b"ffibfffi"
    assert _bits(unpack(again)) == _bits({**x, "b": 2.5})
    assert _bits(unpack(other)) == _bits({**x, "a": 2.0})


def test_what_cannot_be_packed_exactly_is_kept_as_it_is() -> None:
    too_big = {"a": 1.0, "n": 2**53 + 1}
    other = {"a": 1.0, "s": "text"}
    packer = Packer()
    for x in (too_big, other, other):  # the second time from its known layout
        kept = packer.pack(x)  # type: ignore[arg-type]
        assert kept is x and unpack(kept) == x and unpack(kept) is not x


def test_the_oldest_are_forgotten_past_the_limit_with_their_users_lists() -> None:
    store = RememberedVectors()
    for n in range(6):
        store.add(f"t{n}", {"a": float(n), "b": None}, user_id=f"u{n % 2}", risk=n / 10, limit=4)
    assert list(store) == ["t2", "t3", "t4", "t5"]
    assert store.of_user("u0") == ("t2", "t4") and store.of_user("u1") == ("t3", "t5")
    assert store["t4"] == ("u0", {"a": 4.0, "b": None}, 0.4)
    assert store.get("t1") is None and store.user_of("t3") == "u1" and "t0" not in store
    for n in range(6, 10):
        store.add(f"t{n}", {"a": float(n), "b": 1.0}, user_id="u2", risk=0.0, limit=4)
    assert store.by_user == {"u2": store.by_user["u2"]} and store.of_user("u0") == ()
    # Vectors with the same keys share one keys tuple.
    assert len({id(store.kept[t][1].keys) for t in store}) == 1  # type: ignore[union-attr]


def _decided(n_payments: int, limit: int) -> Decider:
    scorer = Scorer(decider=Decider(remember_limit=limit))
    for n in range(n_payments):
        event = parse_transaction(tx(f"p{n}", T0 + n * HOUR, user_id=f"u{n % 3}"))
        scorer.apply(event, 1)
    return scorer.decider


def test_a_checkpoint_that_kept_dicts_resumes_with_the_same_vectors_and_learns_alike() -> None:
    decider = _decided(12, limit=8)
    assert list(decider.remembered) == [f"p{n}" for n in range(4, 12)]
    vectors = {t: decider.remembered[t] for t in decider.remembered}
    # As a checkpoint from before the store held it: dicts, and the users' lists beside them.
    old = pickle.loads(pickle.dumps(decider))
    old.__dict__["by_user"] = dict(old.remembered.by_user)
    old.__dict__["remembered"] = OrderedDict(
        (t, (kept.user_id, kept.x, kept.risk)) for t, kept in vectors.items()
    )
    restored = pickle.loads(pickle.dumps(old))
    assert isinstance(restored.remembered, RememberedVectors) and "by_user" not in vars(restored)
    assert {t: restored.remembered[t] for t in restored.remembered} == vectors
    assert all(_bits(restored.remembered[t].x) == _bits(vectors[t].x) for t in vectors)
    # A user-level label teaches both the same examples, and both models the same.
    event = parse_label({**label("p4", T0 + 20 * HOUR), "tx_id": None, "user_id": "u1"})
    learned = [d.label(event) for d in (decider, restored)]
    assert [e.tx_id for e in learned[0]] == ["p4", "p7", "p10"] and learned[0] == learned[1]
    assert decider.model.version == restored.model.version == "risk.l3.t12"
    # What each has learned, by what it now makes of every vector (the classifier counts:
    # three fraud labels make it consulted).
    risks = [[d.model.assess(v.x).risk for v in vectors.values()] for d in (decider, restored)]
    assert risks[0] == risks[1]
