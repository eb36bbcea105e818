"""The payments domain: completion with corporate matching and milestones, refunds through a
fake gateway API on loopback, exactly-once under redelivery, concurrency and kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from payments_support import PayEnv, add_donation, count, drain, pay, row, start_worker

from acmeq.config.settings import Settings
from acmeq.errors import RefundError
from acmeq.payments import refunds
from acmeq.payments.donations import (
    MatchRule,
    complete_donation,
    compute_match,
    crossed_milestones,
)
from acmeq.payments.gateways import gateway_for
from acmeq.payments.refunds import reversed_match
from acmeq.queues import Enqueuer
from acmeq.storage.models import Campaign, Donation
from acmeq.worker.recovery import recover_dead_worker

from conftest import wait_until

__all__ = ["pay"]  # the fixture


def ledger(p: PayEnv, user: int, year: int | None = None) -> int:
    return count(
        p.engine,
        "SELECT coalesce(sum(matched_minor), 0) FROM employee_match_totals "
        "WHERE user_id = :u AND year = :y",
        u=user,
        y=year or datetime.now(UTC).year,
    )


def totals(p: PayEnv) -> tuple[int, int, int]:
    c = row(p.engine, Campaign, p.seeded.campaign)
    return c.raised_minor, c.matched_minor, c.donation_count


# -- pure rules ------------------------------------------------------------------------------------


def test_match_rule_ratio_then_caps() -> None:
    rule = MatchRule(1, 5_000, 20_00, 50_00, "EUR")
    assert compute_match(rule, 30_00, 0) == 15_00  # 50 %
    assert compute_match(rule, 100_00, 0) == 20_00  # per-donation cap
    assert compute_match(rule, 100_00, 45_00) == 5_00  # what is left of the year
    assert compute_match(rule, 100_00, 60_00) == 0
    assert compute_match(MatchRule(1, 10_000, None, None, "EUR"), 3, 0) == 3


def test_match_reversal_is_proportional_and_ends_at_zero() -> None:
    # 40 paid, 30 matched: refund 10, then 10, then the last 20
    matched, remaining = 30_00, 40_00
    steps = []
    for part in (10_00, 10_00, 20_00):
        back = reversed_match(matched, remaining, part)
        steps.append(back)
        matched, remaining = matched - back, remaining - part
    assert steps == [7_50, 7_50, 15_00] and matched == 0


def test_milestones_are_the_thresholds_crossed() -> None:
    assert crossed_milestones(0, 30, 100) == [25]
    assert crossed_milestones(20, 100, 100) == [25, 50, 75, 100]
    assert crossed_milestones(50, 60, 100) == []
    assert crossed_milestones(0, 10, 0) == []


# -- completion ------------------------------------------------------------------------------------


def test_matching_caps_per_donation_and_per_employee_per_year(pay: PayEnv) -> None:
    s = pay.seeded  # 1:1, cap 50 per donation, 80 per employee and year
    year = datetime.now(UTC).year
    with pay.engine.begin() as conn:  # last year's matches do not count against this year
        conn.execute(
            sa.text(
                "INSERT INTO employee_match_totals (company_id, user_id, year, matched_minor, "
                "updated_at) VALUES (:c, :u, :y, 8000, :t)"
            ),
            {"c": s.company, "u": s.employee, "y": year - 1, "t": datetime.now(UTC)},
        )
    amounts = [40_00, 60_00, 10_00]
    matched = [
        complete_donation(
            pay.engine, add_donation(pay.engine, s.campaign, s.employee, a)
        ).matched_minor
        for a in amounts
    ]
    other = complete_donation(pay.engine, add_donation(pay.engine, s.campaign, s.employee2, 10_00))
    outsider = complete_donation(
        pay.engine, add_donation(pay.engine, s.campaign, s.outsider, 10_00)
    )
    # Then: 40; min(60, cap 50, 80 - 40 = 40) = 40; nothing left; a colleague has her own cap
    assert matched == [40_00, 40_00, 0]
    assert (other.matched_minor, outsider.matched_minor) == (10_00, 0)
    assert ledger(pay, s.employee) == 80_00 and ledger(pay, s.employee, year - 1) == 80_00
    assert totals(pay) == (130_00, 90_00, 5)


def test_completion_is_exactly_once_with_milestones_and_audit(pay: PayEnv) -> None:
    s = pay.seeded  # goal 1,000 EUR
    first = add_donation(pay.engine, s.campaign, s.outsider, 300_00)
    done = complete_donation(pay.engine, first, "pi_first")
    again = complete_donation(pay.engine, first, "pi_first")
    second = complete_donation(pay.engine, add_donation(pay.engine, s.campaign, s.outsider, 500_00))
    assert (done.completed, done.milestones) == (True, (25,))
    assert (again.completed, again.status) == (False, "completed")
    assert second.milestones == (50, 75)
    assert totals(pay) == (800_00, 0, 2)
    milestones = count(pay.engine, "SELECT count(*) FROM campaign_milestones")
    audits = count(pay.engine, "SELECT count(*) FROM audit_log WHERE action='donation.completed'")
    assert (milestones, audits) == (3, 2)


@pytest.mark.timeout(60)
def test_concurrent_completions_of_one_donation_count_once(pay: PayEnv) -> None:
    s = pay.seeded
    donation = add_donation(pay.engine, s.campaign, s.employee, 20_00)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def complete() -> None:
        barrier.wait(timeout=10)
        results.append(complete_donation(pay.engine, donation).completed)

    threads = [threading.Thread(target=complete) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == [False] * 7 + [True]
    assert totals(pay) == (20_00, 20_00, 1)
    assert ledger(pay, s.employee) == 20_00


@pytest.mark.timeout(120)
def test_a_worker_killed_inside_process_donation_leaves_exact_totals(
    pay: PayEnv, redis_client: redis.Redis, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = pay.seeded
    Path("acmeq.toml").write_text("[queues.payments]\nbackoff = [0]\n")  # retry at once
    settings = Settings.load()
    donation = add_donation(pay.engine, s.campaign, s.employee, 30_00)
    # Given the campaign row is locked, so process_donation blocks inside its transaction
    release = _hold_lock(pay, database_url)
    worker = start_worker(burst=False)
    try:
        job = Enqueuer(settings, redis_client).enqueue("process_donation", donation)
        wait_until(
            "job started",
            lambda: any(
                m.decode().startswith(job.id) for m in redis_client.zrange("rq:wip:payments", 0, -1)
            ),
            timeout=30,
        )
        wait_until("worker waits on the lock", lambda: _waiting(pay, database_url), timeout=30)
        # When the worker is killed -9 in the middle of the transaction
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        release()
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
    # Then nothing of the half-done transaction is left
    assert row(pay.engine, Donation, donation).status == "pending"
    assert totals(pay) == (0, 0, 0)
    # When recovery retries the job and a worker runs it
    assert recover_dead_worker(
        redis_client, f"pay.{worker.pid}", "payments", "kill -9", settings
    ) == [job.id]
    drain()
    # Then the donation counts exactly once, with its match
    assert row(pay.engine, Donation, donation).status == "completed"
    assert totals(pay) == (30_00, 30_00, 1)
    assert ledger(pay, s.employee) == 30_00
    # And a redelivery of the job changes nothing
    Enqueuer(settings, redis_client).enqueue("process_donation", donation)
    drain()
    assert totals(pay) == (30_00, 30_00, 1)


def _hold_lock(p: PayEnv, database_url: str):  # type: ignore[no-untyped-def]
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")

        def release_sqlite() -> None:
            conn.rollback()
            conn.close()

        return release_sqlite
    pg = p.engine.connect()
    tx = pg.begin()
    pg.execute(
        sa.text("SELECT id FROM campaigns WHERE id = :c FOR UPDATE"), {"c": p.seeded.campaign}
    )

    def release_pg() -> None:
        tx.rollback()
        pg.close()

    return release_pg


def _waiting(p: PayEnv, database_url: str) -> bool:
    if database_url.startswith("sqlite"):
        return True  # the whole database is locked: the worker waits at its first write
    with p.engine.connect() as conn:
        n = conn.execute(
            sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
        ).scalar_one()
    return bool(n)


# -- refunds ---------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_partial_then_full_refund_through_the_cli_and_a_worker(
    pay: PayEnv,
    redis_client: redis.Redis,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    from acmeq.payments.admin import refund_donation

    s = pay.seeded
    donation = add_donation(pay.engine, s.campaign, s.employee, 40_00, tx="pi_refund_me")
    complete_donation(pay.engine, donation)
    assert totals(pay) == (40_00, 40_00, 1)
    # When an operator refunds 10.00, then the rest
    partial = cli("donation", "refund", str(donation), "--amount", "10.00", "--reason", "duplicate")
    assert partial.returncode == 0, partial.stderr
    assert "refund 1 of 10.00 EUR requested" in partial.stdout
    rest = refund_donation(pay.settings, donation, None)
    assert (rest["amount_minor"], rest["created"]) == (30_00, True)
    drain()
    # Then the donation, its match, the campaign and the yearly ledger are all back to zero
    d = row(pay.engine, Donation, donation)
    assert (d.status, d.refunded_minor, d.matched_minor) == ("refunded", 40_00, 0)
    assert totals(pay) == (0, 0, 0) and ledger(pay, s.employee) == 0
    reversed_ = count(
        pay.engine, "SELECT sum(matched_reversed_minor) FROM refunds WHERE status='succeeded'"
    )
    assert reversed_ == 40_00
    # And the gateway was asked twice, with idempotency keys, for exactly these amounts
    calls = pay.fake.refund_calls()
    assert [c[2]["amount"] for c in calls] == ["1000", "3000"]
    assert all(c[2]["payment_intent"] == "pi_refund_me" for c in calls)
    assert all(c[3].get("Idempotency-Key") for c in calls)
    # And nothing is left to refund; bad input is one line and exit 2
    with pytest.raises(RefundError, match="is refunded"):
        refund_donation(pay.settings, donation, "0.01")
    bad = cli("donation", "refund", str(donation), "--amount", "abc")
    assert bad.returncode == 2 and "invalid amount 'abc'" in bad.stderr
    assert count(pay.engine, "SELECT count(*) FROM audit_log WHERE action='refund.processed'") == 2


def test_the_same_refund_request_twice_is_a_no_op(pay: PayEnv) -> None:
    s = pay.seeded
    donation = add_donation(pay.engine, s.campaign, s.outsider, 25_00, tx="pi_twice")
    complete_donation(pay.engine, donation)
    first = refunds.request_refund(pay.engine, donation, 5_00, key="ticket-17")
    second = refunds.request_refund(pay.engine, donation, 5_00, key="ticket-17")
    assert (first.created, second.created, second.refund_id) == (True, False, first.refund_id)
    gw = pay.settings.payments.gateways
    done = refunds.process_refund(pay.engine, first.refund_id, lambda p: gateway_for(p, gw))
    again = refunds.process_refund(pay.engine, first.refund_id, lambda p: gateway_for(p, gw))
    assert (done.applied, again.applied) == (True, False)
    assert len(pay.fake.refund_calls()) == 1
    assert row(pay.engine, Donation, donation).refunded_minor == 5_00
    # A refund never exceeds what was paid
    with pytest.raises(RefundError, match=r"20\.00 EUR is left"):
        refunds.request_refund(pay.engine, donation, 20_01)


@pytest.mark.timeout(60)
def test_transient_gateway_errors_are_retried_permanent_ones_are_not(pay: PayEnv) -> None:
    s = pay.seeded
    gw = pay.settings.payments.gateways
    donation = add_donation(pay.engine, s.campaign, s.employee, 20_00, tx="pi_flaky")
    complete_donation(pay.engine, donation)
    # Given the provider fails twice with 503, then answers
    pay.fake.fail_next[:] = [503, 503]
    first = refunds.request_refund(pay.engine, donation, 10_00)
    outcome = refunds.process_refund(
        pay.engine, first.refund_id, lambda p: gateway_for(p, gw), tries=4
    )
    assert (outcome.status, outcome.applied, outcome.matched_reversed_minor) == (
        "succeeded",
        True,
        10_00,
    )
    assert len(pay.fake.refund_calls()) == 3
    # Given the provider refuses (400): one call, refund failed, nothing changed
    pay.fake.fail_next[:] = [400]
    second = refunds.request_refund(pay.engine, donation, 10_00)
    failed = refunds.process_refund(
        pay.engine, second.refund_id, lambda p: gateway_for(p, gw), tries=4
    )
    assert failed.status == "failed" and "HTTP 400" in (failed.error or "")
    assert len(pay.fake.refund_calls()) == 4
    d = row(pay.engine, Donation, donation)
    assert (d.refunded_minor, d.matched_minor, d.status) == (10_00, 10_00, "partially_refunded")
    assert totals(pay) == (10_00, 10_00, 1)


def test_provider_reported_refunds_apply_the_difference_once(pay: PayEnv) -> None:
    from acmeq.payments.refunds import provider_refund

    s = pay.seeded
    donation = add_donation(pay.engine, s.campaign, s.employee, 40_00, tx="pi_dash")
    complete_donation(pay.engine, donation)
    # Stripe's charge.refunded carries the cumulative amount refunded
    a = provider_refund(pay.engine, donation, "stripe:pi_dash:1000", total_refunded_minor=10_00)
    b = provider_refund(pay.engine, donation, "stripe:pi_dash:1000", total_refunded_minor=10_00)
    c = provider_refund(pay.engine, donation, "stripe:pi_dash:4000", total_refunded_minor=40_00)
    assert (a and a.amount_minor, b, c and c.amount_minor) == (10_00, None, 30_00)
    assert totals(pay) == (0, 0, 0)
