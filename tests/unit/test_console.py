"""The risk team's console over HTTP, on a simulated world decided by the worker's real
processor (broker-free): pages per role, the review queue's labels reaching the labels topic,
the models and the ledger, policy drafts backtested and published, suppressions, PII masking,
and hostile ids escaped."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote

import pytest
from markupsafe import escape

from rebate_guard.contract.order import Event
from rebate_guard.contract.records import Label, Transaction
from rebate_guard.core.backtest import HistoryRow
from rebate_guard.core.budget import sampled_for_review
from rebate_guard.core.policy import REVIEW_SAMPLE, Policy
from streams.console import data
from tests.console_world import POLICY, Feed, Session, console_settings, console_world, world_events
from tests.factories import tx
from tests.web import Served, served


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return world_events()


def _last_ts(events: list[Event]) -> int:
    return max(e.ts for e in events if isinstance(e, Transaction))


def _queue(server: Served) -> list[tuple[str, int]]:
    """The review queue's (tx_id, cents held), in its order."""
    queue = server.run(server.worker.runtime.console.review_queue(1000))
    return [(tx_id, cents) for tx_id, cents, _ in queue]


def _labels_sent(server: Served) -> list[Label]:
    topic = server.worker.runtime.settings.topic("labels")
    return [Label.loads(v) for _, v in server.worker.runtime.sink.sent[topic]]  # type: ignore[attr-defined]


def test_every_page_renders_for_every_role_and_viewers_cannot_write(
    tmp_path: Path, events: list[Event]
) -> None:
    with console_world(tmp_path, events) as (server, _):
        held = _queue(server)
        assert held, "the test policy holds what it doubts"
        rings = server.run(server.store.rings())
        for user in ("vera", "rita", "adam"):
            s = Session(server, user)
            for path in ("/console/", "/console/review", "/console/rings", "/console/policy",
                         "/console/solvency", "/console/audit",
                         f"/console/search?q={held[0][0]}"):  # fmt: skip
                status, body = s.get(path)
                assert status == 200, (user, path, body[:200])
                assert f"{user} · " in body
            status, body = s.get("/console/review")
            assert held[0][0] in body
            has_forms = 'action="/console/review/' in body
            assert has_forms == (user != "vera")
        series = json.loads(Session(server, "vera").get("/console/api/series?minutes=60")[1])
        assert sum(series["decisions"]) == server.run(server.store.stats())["counters"]["decisions"]
        assert rings, "the world has rings"
        status, body = Session(server, "vera").get(f"/console/rings/{rings[0]['ring_id']}")
        assert status == 200 and 'id="ring-data"' in body
        versions = server.run(server.worker.runtime.console.ring_versions(rings[0]["ring_id"]))
        assert versions and versions[0]["version"] == rings[0]["version"]
        assert f"<td>{rings[0]['version']}</td><td>active</td>" in body
        # A viewer's write is refused before any view runs; a reviewer may not publish.
        vera, rita = Session(server, "vera"), Session(server, "rita")
        assert vera.post(f"/console/review/{held[0][0]}", do="legit")[0] == 403
        assert rita.post("/console/policy/draft", name="d", fmt="json", text="{}")[0] == 403
        assert _labels_sent(server) == []


def test_a_reviewers_label_reaches_the_topic_the_models_and_the_ledger(
    tmp_path: Path, events: list[Event]
) -> None:
    with console_world(tmp_path, events) as (server, feed):
        runtime = server.worker.runtime
        [(tx_id, held_cents), *_] = _queue(server)
        rita, adam = Session(server, "rita"), Session(server, "adam")
        status, where = rita.post(f"/console/review/{tx_id}", do="claim")
        assert status == 303 and "claimed+by+rita" in where
        adam.post(f"/console/review/{tx_id}", do="claim")  # first claimer keeps it
        assert server.run(runtime.console.claims([tx_id])) == {tx_id: "rita"}
        # A reviewer may hand it to another reviewer; not to a viewer or a stranger.
        for nobody in ("vera", "mallory"):
            status, where = rita.post(f"/console/review/{tx_id}", do="assign", assignee=nobody)
            assert "is+no+reviewer" in where
        rita.post(f"/console/review/{tx_id}", do="assign", assignee="adam")
        assert server.run(runtime.console.claims([tx_id])) == {tx_id: "adam"}
        rita.post(f"/console/review/{tx_id}", do="assign", assignee="rita")
        status, where = rita.post(f"/console/review/{tx_id}", do="legit")
        assert status == 303 and where.startswith("/console/review?msg=")
        [label] = _labels_sent(server)
        assert (label.tx_id, label.label, label.source, label.reviewer) == (
            tx_id, "legit", "review", "rita",
        )  # fmt: skip
        # The stream takes the label in (here from the topic by hand: no broker).
        learned_before = _examples_learned(server)
        shown_before = _labels_learned_shown(rita)
        feed.put([label])
        # The overview shows the models learning it (their versions: l<labels learned>).
        assert _labels_learned_shown(rita) > shown_before
        assert tx_id not in dict(_queue(server))
        ledger = server.run(server.store.get_ledger(tx_id))
        assert ledger is not None and ledger["granted_cents"] == held_cents
        assert ledger["held_cents"] == 0
        assert _examples_learned(server) > learned_before
        status, body = rita.get(f"/console/search?q={tx_id}")
        assert "Labelled <strong>legit</strong> by review (rita)" in body
        audit = server.run(runtime.console.audit_log(10))
        assert [(e["who"], e["action"]) for e in audit][:4] == [
            ("rita", "label"),
            ("rita", "assign"),
            ("rita", "assign"),
            ("rita", "claim"),
        ]
        assert audit[1]["detail"] == {"tx_id": tx_id, "to": "rita", "from": "adam"}


def _labels_learned_shown(session: Session) -> int:
    page = session.get("/console/")[1]
    models = page[page.index('id="models"') :].split("</p>")[0]
    return sum(int(n) for n in re.findall(r"\.l(\d+)\.", models))


def _examples_learned(server: Served) -> int:
    shards = server.worker.runtime.processor.users.values()
    return sum(s.decider.model.classifier.n_learned for s in shards)


def test_a_draft_is_validated_backtested_and_published_with_every_step_audited(
    tmp_path: Path, events: list[Event]
) -> None:
    with console_world(tmp_path, events) as (server, _):
        runtime = server.worker.runtime
        adam = Session(server, "adam")
        status, where = adam.post("/console/policy/draft", name="bad", fmt="toml", text="x = ")
        assert "draft+not+saved" in where
        assert server.run(runtime.console.drafts()) == {}
        stricter = (
            POLICY.replace("console-test-1", "console-test-2")
            .replace("scale_at = 0.8", "scale_at = 0.95")
            .replace("allow_at = 0.9", "allow_at = 0.97")
        )
        status, where = adam.post("/console/policy/draft", name="strict", fmt="toml", text=stricter)
        assert status == 303 and "saved" in where, where
        assert "Diff against the live policy" in adam.get("/console/policy")[1]
        status, where = adam.post("/console/policy/draft/strict", do="backtest", days="30")
        assert "backtested" in where, where
        report = server.run(runtime.console.drafts())["strict"]["backtest"]["report"]
        rows = [HistoryRow.from_json(r) for r in server.run(runtime.console.history(0, 10**6))]
        payments = sum(1 for e in events if isinstance(e, Transaction) and e.kind == "payment")
        assert len(rows) == payments and report["rows"] == payments
        assert report["agreement"] == 1.0  # the live policy re-decides what was stored
        live_withheld = report["live"]["money"]["withheld_cents"]
        assert report["draft"]["money"]["withheld_cents"] > live_withheld
        assert report["diff"]["users_newly_hit"] > 0
        status, page = adam.get("/console/policy")
        assert "console-test-2" in page and "Users newly hit" in page
        status, where = adam.post("/console/policy/draft/strict", do="publish")
        assert "published+console-test-2" in where, where
        assert Policy.from_text(server.store.policy or b"").version == "console-test-2"
        assert runtime.processor.policy.version == "console-test-2"
        actions = [(e["who"], e["action"]) for e in server.run(runtime.console.audit_log(10))]
        assert actions[:3] == [("adam", "publish"), ("adam", "backtest"), ("adam", "draft")]
        status, page = adam.get("/console/policy")
        assert "console-test-1 → console-test-2" in page


def test_a_suppression_allows_the_users_next_payments_as_a_new_policy_version(
    tmp_path: Path, events: list[Event]
) -> None:
    with console_world(tmp_path, events) as (server, feed):
        runtime = server.worker.runtime
        rita = Session(server, "rita")
        [(tx_id, _), *_] = _queue(server)
        user = server.run(server.worker.runtime.store.get_many([tx_id]))
        user_id = json.loads(user[tx_id])["user_id"]
        status, where = rita.post("/console/suppress", user_id=user_id, days="7", reason="fp")
        assert status == 303 and "suppressed" in where, where
        assert "+suppress-" in runtime.processor.policy.version
        after = _last_ts(events) + 1
        payment = Transaction(**tx(tx_id="after-suppression", ts=after, user_id=user_id,
                                   amount_cents=900_000, rebate_rate=0.3))  # fmt: skip
        feed.put([payment])
        decision = json.loads(server.run(runtime.store.get_many([payment.tx_id]))[payment.tx_id])
        # The model still says why it doubted the user; the suppression decided.
        assert decision["action"] == "allow" and "suppressed" in decision["reasons"]
        assert decision["threshold_version"] == "suppressed"
        [entry] = [
            e for e in server.run(runtime.console.audit_log(10)) if e["action"] == "suppress"
        ]
        assert entry["who"] == "rita" and user_id in entry["detail"]["document"]


def test_pii_is_masked_unless_an_admin_asks_and_hostile_ids_stay_text(
    tmp_path: Path, events: list[Event]
) -> None:
    hostile = '<img src=x onerror="alert(1)">'
    device = "device-0123456789"
    with console_world(tmp_path, events) as (server, feed):
        payment = Transaction(**tx(tx_id=hostile, user_id=hostile, merchant_id=hostile,
                                   device_id=device, ts=_last_ts(events) + 1))  # fmt: skip
        feed.put([payment])
        for user in ("rita", "adam"):
            status, page = Session(server, user).get(f"/console/search?q={device}&unmask=1")
            assert status == 200
            # (The search box echoes what the person typed; the results show it masked.)
            shown = device if user == "adam" else "dev" + "*" * 11 + "789"
            assert f"<h2>Device {shown}</h2>" in page
        for path in ("/console/", "/console/review", f"/console/search?q={quote(hostile)}"):
            status, page = Session(server, "vera").get(path)
            assert status == 200
            assert hostile not in page
        status, page = Session(server, "vera").get("/console/search?q=" + quote(hostile))
        assert (
            f'<td><a href="/console/search?q={quote(hostile)}">{escape(hostile)}</a></td>' in page
        )
        assert not re.search(r"<img[^>]*onerror", page)
        audit = server.run(server.worker.runtime.console.audit_log(10))
        assert [e["who"] for e in audit if e["action"] == "unmask"] == ["adam"]


def _live_policy(server: Served, version: str, budget: str) -> None:
    """Publishes `POLICY` with a `[budget]` table as the live policy (Redis, hot reload)."""
    text = POLICY.replace("console-test-1", version) + f"[budget]\n{budget}\n"
    policy = Policy.from_text(text, "toml")
    server.run(server.store.push_policy(policy.version, policy.to_json()))
    server.run(server.worker.runtime.refresh_policy())
    assert server.worker.runtime.processor.policy.version == version


def _queue_rows(page: str) -> list[tuple[str, bool]]:
    """The review queue's rows, in order: (tx_id, whether it carries the sample badge)."""
    table = page[page.index('<table id="queue">') :].split("</table>")[0]
    rows = table.split('<tr data-tx="')[1:]
    return [(r.split('"')[0], "in the review sample" in r) for r in rows]


def test_the_review_queue_marks_and_lists_first_the_payments_in_the_review_sample(
    tmp_path: Path, events: list[Event]
) -> None:
    """The decisions say which holds are in the sample (`review_sample:hold`), and the queue
    keeps them first, each part by money: a small sampled hold comes before every bigger
    unsampled one, so the whole sample is shown before the rest (the page shows 100)."""
    with served(console_settings(tmp_path)) as server:
        vera = Session(server, "vera")
        # A budget (too few payments for its cut: the fixed thresholds decide, and their
        # holds are the budget's) with a review sample of 30%, live before the payments.
        _live_policy(server, "console-test-sample", "review_share = 0.3")
        Feed(server).put(events)
        queue = server.run(server.worker.runtime.console.review_queue(1000))
        decided = {
            d.tx_id: d
            for d in server.run(data.decisions(server.worker.runtime, [t for t, _, _ in queue]))
        }
        sampled = [t for t, _, in_sample in queue if in_sample]
        rest = [t for t, _, in_sample in queue if not in_sample]
        assert 0 < len(sampled) < len(queue), "the world holds sampled and unsampled payments"
        assert [t for t, _, _ in queue] == sampled + rest
        for tx_id, cents, in_sample in queue:
            reasons = decided[tx_id].reasons
            assert in_sample == (REVIEW_SAMPLE in reasons) == sampled_for_review(tx_id, 0.3)
            assert cents == decided[tx_id].rebate_requested_cents
        money = {t: c for t, c, _ in queue}
        for part in (sampled, rest):
            assert [money[t] for t in part] == sorted((money[t] for t in part), reverse=True)
        assert money[sampled[-1]] < max(money[t] for t in rest), "the sample first, not money"
        page = vera.get("/console/review")[1]
        shown = [(t, True) for t in sampled] + [(t, False) for t in rest]
        assert _queue_rows(page) == shown[:100]
        in_sample = sum(badge for _, badge in shown[:100])
        assert (
            f"Review sample: 30.00% of withheld payments, drawn by transaction id; "
            f"{in_sample} of the {min(100, len(shown))} shown, listed first." in page
        )
        # review_share 0: the page says there is no sample (holds keep what they were).
        _live_policy(server, "console-test-no-sample", "review_share = 0")
        assert "No review sample in the policy in force." in vera.get("/console/review")[1]


def test_without_a_budget_no_hold_is_in_a_review_sample(
    tmp_path: Path, events: list[Event]
) -> None:
    with console_world(tmp_path, events) as (server, _):
        page = Session(server, "vera").get("/console/review")[1]
        assert [t for t, _ in _queue_rows(page)] == [t for t, _ in _queue(server)[:100]]
        assert not any(badge for _, badge in _queue_rows(page))
        assert "No review sample in the policy in force." in page


def test_the_overview_shows_the_review_samples_figures_per_group_and_shard(
    tmp_path: Path, events: list[Event]
) -> None:
    with served(console_settings(tmp_path)) as server:
        # Every withheld payment in the sample: the world's labels on them are its reviews.
        _live_policy(server, "console-test-review", "review_share = 1.0")
        Feed(server).put(events)
        reports = server.worker.runtime.processor.reports.budgets()
        expected = [
            (unit, r["review_sample"])
            for unit, report in reports.items()
            for group, r in report["groups"].items()
            if group == "*" and r["review_sample"]["reviewed"]
        ]
        assert expected, "the world labels some withheld payments"
        page = Session(server, "vera").get("/console/")[1]
        assert "<h3>Review sample: 100.00% of withheld payments</h3>" in page
        figures = page[page.index('id="review-figures"') :].split("</table>")[0]
        for unit, r in expected:
            row = (
                f"<tr><td>*</td><td>{unit}</td><td>{r['reviewed']}</td><td>{r['legit']}</td>"
                f"<td>{r['expected_legit']:.1f}</td><td>{r['scale']:.3f}</td></tr>"
            )
            assert row in figures
