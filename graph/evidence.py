"""Ring evidence as classifier features: what a transaction's ring looks like to the models.

The scoring path gets a transaction's strongest ring as (score, ["ring:<kind>"]) from
`GraphLayer.ring_score` in replay and from the graph shard's ring scores in Redis in the
worker (`streams.shards.ring_of`): the same two facts in both, so the features are made from
those alone. `ring_score` is the ring's score (0 when the transaction is in no ring) and
`ring_<kind>` is 1 for the ring's kind and 0 for the others; the classifier learns from a
label what each is worth, and `detectors.ring_say` calibrates each kind's say from the labels
of the payments scored with it. A ring's reason names its kind, and so what it was found in:
`ring:binding_ring` a merchant's bindings (and its commission on customers buying elsewhere),
`ring:points_collector` points transfers, `ring:commission_cycle` a merchant's bindings with
its payments and its bound payers' identifiers, `ring:coupon_farm` young accounts' coupon uses
with their identifiers, the others payments, identifiers and referrals
(docs/graph.md); the ring event's evidence has the figures.
"""

from __future__ import annotations

from graph.rings import KINDS

RING_SCORE = "ring_score"
#: Reason codes of a ring are "ring:<kind>".
RING_REASON = "ring:"


def kind_feature(kind: str) -> str:
    return f"ring_{kind}"


#: The ring features, in vector order: the score, then one indicator per kind.
RING_FEATURES = (RING_SCORE, *(kind_feature(kind) for kind in KINDS))
_NO_RING = dict.fromkeys(RING_FEATURES, 0.0)


def ring_features(ring: tuple[float, list[str]] | None) -> dict[str, float]:
    """The ring features of a transaction scored with `ring` (None: in no ring). A kind
    this build does not know adds its score without an indicator."""
    out = dict(_NO_RING)
    if ring is None or ring[0] <= 0.0:
        return out
    score, reasons = ring
    out[RING_SCORE] = float(score)
    for reason in reasons:
        name = kind_feature(reason.removeprefix(RING_REASON))
        if reason.startswith(RING_REASON) and name in out:
            out[name] = 1.0
    return out
