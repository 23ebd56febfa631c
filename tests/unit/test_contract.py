"""The contract records: plain dataclasses whose bytes on the wire are fixed.

`GOLDEN` is what the Faust records of earlier releases wrote for `CASES` (`include_metadata=False`,
the json serializer: keys in field order, compact separators, ASCII only, NaN as is): checked by
generated records against Faust's output while both existed (issue #19), and pinned here.
"""

from __future__ import annotations

import pickle

import pytest

from rebate_guard.contract.records import (
    DeadLetter,
    Decision,
    FeatureVector,
    Label,
    RebateAdjustment,
    Record,
    Ring,
    Signup,
    Transaction,
    build,
    from_row,
    to_row,
)
from streams.shards import load_checkpoint

CASES: list[Record] = [
    Transaction(
        tx_id="t-1",
        ts=1_700_000_000_000,
        user_id="u-1",
        merchant_id="m-1",
        amount_cents=12_345,
        rebate_rate=0.07,
        kind="payment",
        device_id="d-1",
        ip="10.0.0.1",
        card_id="c-1",
        merchant_category="grocery",
    ),
    Transaction(
        tx_id="t-2",
        ts=1_700_000_000_001,
        user_id="ü-2",
        merchant_id="m-1",
        amount_cents=1,
        rebate_rate=0.0,
        kind="refund",
        ref_tx_id="t-1",
    ),
    Signup(user_id="u-1", ts=1_699_000_000_000, referrer_id="u-0", phone_hash='ab"c'),
    Label(ts=1_700_100_000_000, label="fraud", source="review", tx_id="t-1", reviewer="ana"),
    Decision(
        tx_id="t-1",
        ts=1_700_000_000_000,
        user_id="u-1",
        merchant_id="m-1",
        risk=0.8123456789,
        trust_weight=1e-05,
        action="hold",
        rebate_requested_cents=864,
        rebate_granted_cents=0,
        reasons=["velocity", "ring:pyramid"],
        model_version="m-3",
        decided_at=1_700_000_000_050,
        policy_version="p-2",
        commission_tiers=2,
        threshold_version="fixed",
    ),
    Decision(
        tx_id="t-3",
        ts=1,
        user_id="u",
        merchant_id="m",
        risk=float("nan"),
        trust_weight=1.0,
        action="allow",
        rebate_requested_cents=0,
        rebate_granted_cents=0,
        reasons=[],
        model_version="",
        decided_at=2,
    ),
    RebateAdjustment(
        adjustment_id="t-1:hold",
        tx_id="t-1",
        user_id="u-1",
        ts=1_700_100_000_000,
        kind="void",
        cents=864,
        cause="label:fraud",
        requested_cents=864,
        granted_cents=0,
        held_cents=0,
        voided_cents=864,
        policy_version="p-2",
        decided_at=1_700_100_000_010,
    ),
    Ring(
        ring_id="r-1",
        kind="pyramid",
        users=["u-1", "u-2"],
        merchants=["m-1"],
        devices=[],
        score=0.5,
        detected_at=1_700_000_000_000,
        rebate_at_risk_cents=1_000,
        evidence={
            "depth": 3,
            "share": 0.25,
            "members": ("u-1", "u-2"),
            "none": None,
            "nested": {"b": [1.5, True]},
        },
    ),
    FeatureVector(
        tx_id="t-1",
        ts=1_700_000_000_000,
        features={"user_tx_count_1h": 2, "z": None, "amount_z": -0.0, "inf": float("inf")},
    ),
    DeadLetter(
        topic="transactions",
        partition=3,
        offset=42,
        reason="not valid JSON: Expecting value",
        payload="{\u00e9",
        received_at=1_700_000_000_000,
    ),
]

GOLDEN = [
    (
        b'{"tx_id":"t-1","ts":1700000000000,"user_id":"u-1","merchant_id":"m-1",'
        b'"amount_cents":12345,"rebate_rate":0.07,"kind":"payment","ref_tx_id":n'
        b'ull,"device_id":"d-1","ip":"10.0.0.1","card_id":"c-1","merchant_catego'
        b'ry":"grocery"}'
    ),
    (
        b'{"tx_id":"t-2","ts":1700000000001,"user_id":"\\u00fc-2","merchant_id":"'
        b'm-1","amount_cents":1,"rebate_rate":0.0,"kind":"refund","ref_tx_id":"t'
        b'-1","device_id":null,"ip":null,"card_id":null,"merchant_category":null'
        b"}"
    ),
    (
        b'{"user_id":"u-1","ts":1699000000000,"referrer_id":"u-0","device_id":nu'
        b'll,"ip":null,"phone_hash":"ab\\"c"}'
    ),
    (
        b'{"ts":1700100000000,"label":"fraud","source":"review","tx_id":"t-1","u'
        b'ser_id":null,"reviewer":"ana"}'
    ),
    (
        b'{"tx_id":"t-1","ts":1700000000000,"user_id":"u-1","merchant_id":"m-1",'
        b'"risk":0.8123456789,"trust_weight":1e-05,"action":"hold","rebate_reque'
        b'sted_cents":864,"rebate_granted_cents":0,"reasons":["velocity","ring:p'
        b'yramid"],"model_version":"m-3","decided_at":1700000000050,"policy_vers'
        b'ion":"p-2","commission_tiers":2,"threshold_version":"fixed"}'
    ),
    (
        b'{"tx_id":"t-3","ts":1,"user_id":"u","merchant_id":"m","risk":NaN,"trus'
        b't_weight":1.0,"action":"allow","rebate_requested_cents":0,"rebate_gran'
        b'ted_cents":0,"reasons":[],"model_version":"","decided_at":2,"policy_ve'
        b'rsion":"","commission_tiers":0,"threshold_version":""}'
    ),
    (
        b'{"adjustment_id":"t-1:hold","tx_id":"t-1","user_id":"u-1","ts":1700100'
        b'000000,"kind":"void","cents":864,"cause":"label:fraud","requested_cent'
        b's":864,"granted_cents":0,"held_cents":0,"voided_cents":864,"policy_ver'
        b'sion":"p-2","decided_at":1700100000010}'
    ),
    (
        b'{"ring_id":"r-1","kind":"pyramid","users":["u-1","u-2"],"merchants":["'
        b'm-1"],"devices":[],"score":0.5,"detected_at":1700000000000,"rebate_at_'
        b'risk_cents":1000,"evidence":{"depth":3,"share":0.25,"members":["u-1","'
        b'u-2"],"none":null,"nested":{"b":[1.5,true]}}}'
    ),
    (
        b'{"tx_id":"t-1","ts":1700000000000,"features":{"user_tx_count_1h":2,"z"'
        b':null,"amount_z":-0.0,"inf":Infinity}}'
    ),
    (
        b'{"topic":"transactions","partition":3,"offset":42,"reason":"not valid '
        b'JSON: Expecting value","payload":"{\\u00e9","received_at":1700000000000'
        b"}"
    ),
]


@pytest.mark.parametrize("n", range(len(CASES)))
def test_bytes_on_the_wire_are_the_ones_faust_wrote(n: int) -> None:
    record, golden = CASES[n], GOLDEN[n]
    assert record.dumps() == golden
    again = type(record).loads(golden)
    assert again.dumps() == golden
    assert type(record).loads(golden.decode()).dumps() == golden
    assert from_row(type(record), to_row(record)).dumps() == golden
    assert build(type(record), **record.asdict()).dumps() == golden
    assert pickle.loads(pickle.dumps(record, pickle.HIGHEST_PROTOCOL)).dumps() == golden
    assert list(record.asdict()) == list(type(record)._fields)


def test_defaults_none_and_unknown_keys() -> None:
    d = Decision.loads(GOLDEN[5])
    assert (d.policy_version, d.commission_tiers, d.threshold_version) == ("", 0, "")
    # None where a default is declared takes the default, as Faust's records did.
    assert Decision(**{**d.asdict(), "policy_version": None, "commission_tiers": None}) == d
    raw = b'{"ts":5,"label":"legit","source":"s","user_id":"u","later_field":[1]}'
    assert Label.loads(raw) == Label(ts=5, label="legit", source="s", user_id="u")
    with pytest.raises(TypeError):
        Label.loads(b'{"ts":5,"label":"legit"}')
    with pytest.raises(TypeError):
        build(Label, ts=5, label="legit", source="s")
    # A row of the previous release (without the fields added at the end) takes their defaults.
    short = to_row(d)[: len(d._fields) - 3]
    assert from_row(Decision, short) == d


def test_equal_ordered_and_hashed_by_fields() -> None:
    x = Label(ts=1, label="fraud", source="s", tx_id="a")
    y = Label(ts=1, label="fraud", source="s", tx_id="b")
    assert x == Label(ts=1, label="fraud", source="s", tx_id="a") and x != y
    assert x < y and sorted([y, x]) == [x, y]
    assert hash(x) == hash(Label(ts=1, label="fraud", source="s", tx_id="a"))
    assert x != Signup(user_id="a", ts=1)


#: A checkpoint's pickle from before issue #19, when the records were Faust records in
#: `streams.records`: {"events": [(1, Transaction)], "decision": Decision}.
FAUST_ERA_PICKLE = (
    b"\x80\x05\x958\x02\x00\x00\x00\x00\x00\x00}\x94(\x8c\x06events\x94]\x94K\x01\x8c\x0fstreams.rec"
    b"ords\x94\x8c\x0bTransaction\x94\x93\x94)\x81\x94}\x94(\x8c\x14__evaluated"
    b"_fields__\x94\x8f\x94\x8c\x05tx_id\x94\x8c\x03t-1\x94\x8c\x02ts\x94\x8a\x06\x00h\xe5\xcf\x8b\x01\x8c"
    b"\x07user_id\x94\x8c\x03u-1\x94\x8c\x0bmerchant_id\x94\x8c\x03m-1\x94\x8c\x0camo"
    b"unt_cents\x94Kd\x8c\x0brebate_rate\x94G?\xa9\x99\x99\x99\x99\x99\x9a\x8c\x04kin"
    b"d\x94\x8c\x07payment\x94\x8c\tref_tx_id\x94N\x8c\tdevice_id\x94\x8c\x03d"
    b"-1\x94\x8c\x02ip\x94N\x8c\x07card_id\x94N\x8c\x11merchant_category\x94"
    b"Nub\x86\x94a\x8c\x08decision\x94h\x03\x8c\x08Decision\x94\x93\x94)\x81\x94}\x94(h\n"
    b"h\x0bh\x0c\x8a\x06\x00h\xe5\xcf\x8b\x01h\rh\x0eh\x0fh\x10\x8c\x04risk\x94G?\xe0\x00\x00\x00\x00\x00\x00\x8c\x0ctr"
    b"ust_weight\x94G?\xe0\x00\x00\x00\x00\x00\x00\x8c\x06action\x94\x8c\x05scale\x94\x8c\x16r"
    b"ebate_requested_cents\x94K\x05\x8c\x14rebate_granted"
    b"_cents\x94K\x02\x8c\x07reasons\x94]\x94\x8c\x01x\x94a\x8c\rmodel_versio"
    b"n\x94\x8c\x01v\x94\x8c\ndecided_at\x94K\x01\x8c\x0epolicy_version\x94\x8c\x01"
    b"p\x94\x8c\x10commission_tiers\x94K\x00\x8c\x11threshold_versi"
    b"on\x94\x8c\x05fixed\x94h\x08\x8f\x94ubu."
)


def test_checkpoints_of_the_faust_era_still_load() -> None:
    state = load_checkpoint(FAUST_ERA_PICKLE)
    [(_, tx)] = state["events"]
    assert isinstance(tx, Transaction) and isinstance(state["decision"], Decision)
    assert tx == Transaction(
        tx_id="t-1",
        ts=1_700_000_000_000,
        user_id="u-1",
        merchant_id="m-1",
        amount_cents=100,
        rebate_rate=0.05,
        kind="payment",
        device_id="d-1",
    )
    assert state["decision"].asdict() == {
        **CASES[4].asdict(),
        "risk": 0.5,
        "trust_weight": 0.5,
        "action": "scale",
        "rebate_requested_cents": 5,
        "rebate_granted_cents": 2,
        "reasons": ["x"],
        "model_version": "v",
        "decided_at": 1,
        "policy_version": "p",
        "commission_tiers": 0,
        "threshold_version": "fixed",
    }
