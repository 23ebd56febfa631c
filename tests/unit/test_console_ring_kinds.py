"""The console's rings page shows every ring kind the graph finds (issue #21): the kind filter
offers `graph.rings.KINDS`, the flows' kinds among them, and a ring's kind is shown from its
data, escaped, whatever it is."""

from __future__ import annotations

from types import SimpleNamespace

from graph.rings import BINDING_RING, COMMISSION_CYCLE, KINDS, POINTS_COLLECTOR
from streams.console.render import render
from streams.console.views import RING_KINDS


def _rings_page(rings: list[dict[str, object]], kind: str = "") -> str:
    who = SimpleNamespace(user="vera", role="viewer")
    return render(
        "rings.html", here="/console/rings", identity=who, csrf="t", message="", error="",
        may_review=False, title="Rings", rings=rings, kinds=RING_KINDS, kind=kind,
        min_amount="0",
    )  # fmt: skip


def _ring(ring_id: str, kind: str) -> dict[str, object]:
    return {
        "ring_id": ring_id, "kind": kind, "users": ["u1", "u2", "u3"], "merchants": ["m1"],
        "score": 0.9, "rebate_at_risk_cents": 12_345, "version": 1, "detected_at": 0,
    }  # fmt: skip


def test_the_kind_filter_offers_every_kind_the_graph_finds() -> None:
    assert RING_KINDS == KINDS
    body = _rings_page([], kind=COMMISSION_CYCLE)
    for kind in (BINDING_RING, POINTS_COLLECTOR, COMMISSION_CYCLE):
        assert f'<option value="{kind}"' in body
    assert f'<option value="{COMMISSION_CYCLE}" selected>' in body


def test_a_rings_kind_is_shown_from_its_data_escaped() -> None:
    body = _rings_page([_ring("commission_cycle-7", COMMISSION_CYCLE), _ring("r<9>", "<b>new</b>")])
    assert f"<td>{COMMISSION_CYCLE}</td>" in body and "123.45" in body
    assert "<td>&lt;b&gt;new&lt;/b&gt;</td>" in body and "<b>new</b>" not in body
    assert "r&lt;9&gt;" in body
