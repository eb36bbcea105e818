"""The webhook receiver over real HTTP (uvicorn on loopback), with real burst workers.

Signature checks are also tested as pure functions, and Stripe's cases are cross-checked
against the official ``stripe`` package (``Webhook.construct_event``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
import stripe as stripe_sdk
from payments_support import (
    MOLLIE_SECRET,
    PAYPAL_WEBHOOK_ID,
    STRIPE_SECRET,
    PayEnv,
    add_donation,
    count,
    drain,
    pay,
    paypal_event,
    receiver,
    row,
    stripe_event,
    stripe_headers,
)

from acmeq.storage.models import Campaign, Donation
from acmeq.web import mollie
from acmeq.web import stripe as stripe_verify
from acmeq.web.admin import list_events
from acmeq.web.verify import VerificationError

__all__ = ["pay"]  # the fixture

SECRETS = [STRIPE_SECRET, "whsec_rotated_in"]


def events_count(p: PayEnv) -> int:
    return count(p.engine, "SELECT count(*) FROM webhook_events")


def queued(client: redis.Redis) -> list[str]:
    return [m.decode() for m in client.lrange("rq:queue:payments", 0, -1)]


# -- 1. Stripe signature cases, checked against the stripe package --------------------------------

BODY = stripe_event(1, 25_00)
NOW = int(time.time())


def _sig(body: bytes, secret: str, t: int) -> str:
    return stripe_verify.sign(body, secret, t)


CASES: list[tuple[str, Callable[[], tuple[bytes, str | None]], bool, str]] = [
    ("valid", lambda: (BODY, f"t={NOW},v1={_sig(BODY, STRIPE_SECRET, NOW)}"), True, ""),
    ("missing header", lambda: (BODY, None), False, "missing Stripe-Signature header"),
    ("no t", lambda: (BODY, f"v1={_sig(BODY, STRIPE_SECRET, NOW)}"), False, "no timestamp"),
    ("only v0", lambda: (BODY, f"t={NOW},v0={_sig(BODY, STRIPE_SECRET, NOW)}"), False, "no v1"),
    ("wrong secret", lambda: (BODY, f"t={NOW},v1={_sig(BODY, 'whsec_x', NOW)}"), False, "match"),
    (
        "re-serialized body",
        lambda: (
            json.dumps(json.loads(BODY), indent=1).encode(),
            f"t={NOW},v1={_sig(BODY, STRIPE_SECRET, NOW)}",
        ),
        False,
        "does not match",
    ),
    (
        "301 s old",
        lambda: (BODY, f"t={NOW - 301},v1={_sig(BODY, STRIPE_SECRET, NOW - 301)}"),
        False,
        "tolerance",
    ),
    (
        "two v1, one good",
        lambda: (BODY, f"t={NOW},v1={'0' * 64},v1={_sig(BODY, STRIPE_SECRET, NOW)}"),
        True,
        "",
    ),
    (
        "rotation: new secret",
        lambda: (BODY, f"t={NOW},v1={_sig(BODY, 'whsec_rotated_in', NOW)}"),
        True,
        "",
    ),
]


def _stripe_accepts(body: bytes, header: str | None) -> bool:
    # The official library takes one secret: it accepts if any configured secret works.
    for secret in SECRETS:
        try:
            stripe_sdk.Webhook.construct_event(body.decode(), header or "", secret, tolerance=300)
            return True
        except (stripe_sdk.SignatureVerificationError, ValueError):
            continue
    return False


@pytest.mark.parametrize(("name", "make", "ok", "reason"), CASES, ids=[c[0] for c in CASES])
def test_stripe_signature_cases_agree_with_the_stripe_package(
    name: str, make: Callable[[], tuple[bytes, str | None]], ok: bool, reason: str
) -> None:
    # Given a delivery built for this case
    body, header = make()
    # When acmeq and the stripe package check it
    try:
        event = stripe_verify.verify(body, header, SECRETS, 300, now=NOW)
        accepted, why = True, ""
        assert event.event_id == "evt_1_payment_intent_succeeded"
    except VerificationError as exc:
        accepted, why = False, exc.reason
    # Then both decide alike, and a refusal says why
    assert accepted is ok
    assert _stripe_accepts(body, header) is ok
    assert reason in why


def test_mollie_signature_with_and_without_prefix_and_rotation() -> None:
    body = b'{"id":"event_1","type":"payment-link.paid","entityId":"tr_1"}'
    good = mollie.sign(body, "second")
    assert mollie.verify(body, good, ["first", "second"]).event_id == "event_1"
    assert mollie.verify(body, good.removeprefix("sha256="), ["second"]).event_type
    with pytest.raises(VerificationError, match="does not match"):
        mollie.verify(body + b" ", good, ["first", "second"])
    with pytest.raises(VerificationError, match="expected id=tr_"):
        mollie.verify(b"id=evil&x=1", None, [])


# -- 2. the receiver over HTTP ---------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_signed_stripe_event_is_recorded_enqueued_and_completes_the_donation(
    pay: PayEnv, redis_client: redis.Redis
) -> None:
    s = pay.seeded
    donation = add_donation(pay.engine, s.campaign, s.employee, 40_00)
    body = stripe_event(donation, 40_00)
    with receiver(pay.settings) as rcv:
        # When Stripe delivers the event
        reply = rcv.post("stripe", body, stripe_headers(body))
        # Then it is acknowledged, recorded once and one job is queued
        assert reply.status_code == 200, reply.text
        assert reply.json()["status"] == "accepted"
        assert events_count(pay) == 1
        assert queued(redis_client) == [f"webhook-{reply.json()['event']}"]
        # And a redelivery gets 2xx and no second job
        again = rcv.post("stripe", body, stripe_headers(body))
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
        assert len(queued(redis_client)) == 1
        # And a forged one is refused with a reason, nothing recorded
        forged = rcv.post("stripe", body, stripe_headers(body, secret="whsec_forged"))
        assert forged.status_code == 400 and forged.json() == {"error": "signature does not match"}
        assert events_count(pay) == 1
        metrics = httpx.get(rcv.url + "/metrics", timeout=10).text
        health = httpx.get(rcv.url + "/healthz", timeout=10)
    # When a worker runs the job
    drain()
    # Then the donation is completed with its match, and the campaign counts both
    d = row(pay.engine, Donation, donation)
    assert (d.status, d.gateway_transaction_id, d.matched_minor) == (
        "completed",
        f"pi_{donation}",
        40_00,
    )
    c = row(pay.engine, Campaign, s.campaign)
    assert (c.raised_minor, c.matched_minor, c.donation_count) == (40_00, 40_00, 1)
    assert count(pay.engine, "SELECT count(*) FROM webhook_events WHERE status='processed'") == 1
    # And the receiver reported what happened
    assert 'acmeq_webhook_requests_total{outcome="accepted",provider="stripe"} 1.0' in metrics
    assert 'acmeq_webhook_requests_total{outcome="duplicate",provider="stripe"} 1.0' in metrics
    assert 'acmeq_webhook_verification_failures_total{provider="stripe"} 1.0' in metrics
    assert "acmeq_webhook_ack_seconds_bucket" in metrics
    own = [m for m in metrics.splitlines() if m.startswith("acmeq_") and "webhook" not in m]
    assert own  # acmeq's own exposition (queues, jobs) on the same page
    assert health.status_code == 200 and health.json() == {"redis": "ok", "database": "ok"}


@pytest.mark.timeout(120)
def test_fifty_concurrent_deliveries_of_one_event_complete_the_donation_once(
    pay: PayEnv, redis_client: redis.Redis
) -> None:
    s = pay.seeded
    donation = add_donation(pay.engine, s.campaign, s.outsider, 12_34)
    body = stripe_event(donation, 12_34)
    # When the same event arrives 50 times at once
    with receiver(pay.settings) as rcv, ThreadPoolExecutor(16) as pool:
        replies = list(
            pool.map(lambda _: rcv.post("stripe", body, stripe_headers(body)), range(50))
        )
    # Then every delivery is acknowledged, one is accepted, one job exists
    assert [r.status_code for r in replies] == [200] * 50
    outcomes = sorted(r.json()["status"] for r in replies)
    assert outcomes.count("accepted") == 1
    assert set(outcomes) <= {"accepted", "duplicate", "requeued"}
    assert len(queued(redis_client)) == 1
    drain()
    c = row(pay.engine, Campaign, s.campaign)
    assert (c.raised_minor, c.donation_count) == (12_34, 1)
    assert (
        count(pay.engine, "SELECT count(*) FROM audit_log WHERE action='donation.completed'") == 1
    )


@pytest.mark.timeout(60)
def test_refusals_bad_signature_stale_malformed_too_large(
    pay: PayEnv, redis_client: redis.Redis
) -> None:
    body = stripe_event(1, 1_00)
    old = int(time.time()) - 301
    with receiver(pay.settings) as rcv:
        cases = {
            "missing": rcv.post("stripe", body, {"Content-Type": "application/json"}),
            "stale": rcv.post("stripe", body, stripe_headers(body, t=old)),
            "not json": rcv.post("stripe", b"{nope", stripe_headers(b"{nope")),
            "no type": rcv.post("stripe", b'{"id":"evt_x"}', stripe_headers(b'{"id":"evt_x"}')),
        }
        big = b"{" + b" " * (pay.settings.payments.webhooks.max_body_bytes + 1) + b"}"
        too_large = rcv.post("stripe", big, stripe_headers(big))
    assert {k: r.status_code for k, r in cases.items()} == dict.fromkeys(cases, 400)
    assert cases["missing"].json()["error"] == "missing Stripe-Signature header"
    assert cases["stale"].json()["error"] == "timestamp outside the tolerance"
    assert "malformed body" in cases["not json"].json()["error"]
    assert too_large.status_code == 413
    assert events_count(pay) == 0 and queued(redis_client) == []


@pytest.mark.timeout(90)
def test_redis_down_gives_503_and_the_recorded_event_is_enqueued_on_redelivery(
    pay: PayEnv, redis_client: redis.Redis, redis_url: str
) -> None:
    s = pay.seeded
    donation = add_donation(pay.engine, s.campaign, s.outsider, 5_00)
    body = stripe_event(donation, 5_00)
    # Given a receiver whose Redis is down
    dead = pay.reload(REDIS_URL="redis://127.0.0.1:1/1")
    with receiver(dead) as rcv:
        reply = rcv.post("stripe", body, stripe_headers(body))
    # Then the provider is told to retry; the event is recorded but has no job
    assert reply.status_code == 503 and "redis unavailable" in reply.json()["error"]
    assert events_count(pay) == 1 and queued(redis_client) == []
    # When the provider retries against a healthy receiver, the recorded event gets its job
    with receiver(pay.settings) as rcv:
        retry = rcv.post("stripe", body, stripe_headers(body))
        assert retry.status_code == 200 and retry.json()["status"] == "requeued"
        again = rcv.post("stripe", body, stripe_headers(body))
        assert again.json()["status"] == "duplicate"
    assert len(queued(redis_client)) == 1


@pytest.mark.timeout(60)
def test_database_down_gives_503_and_nothing_is_enqueued(
    pay: PayEnv, redis_client: redis.Redis
) -> None:
    body = stripe_event(1, 1_00)
    dead = pay.reload(DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    with receiver(dead) as rcv:
        reply = rcv.post("stripe", body, stripe_headers(body))
        health = httpx.get(rcv.url + "/healthz", timeout=10)
    assert reply.status_code == 503 and "database unavailable" in reply.json()["error"]
    assert health.status_code == 503 and health.json()["redis"] == "ok"
    assert queued(redis_client) == []


@pytest.mark.timeout(120)
def test_reconcile_enqueues_recorded_events_that_have_no_job(
    pay: PayEnv,
    redis_client: redis.Redis,
    cli,  # type: ignore[no-untyped-def]
) -> None:
    from acmeq.web.admin import list_events, replay

    s = pay.seeded
    donation = add_donation(pay.engine, s.campaign, s.outsider, 7_00)
    body = stripe_event(donation, 7_00)
    # Given an event recorded while Redis was down (503), which the provider never retried
    with receiver(pay.reload(REDIS_URL="redis://127.0.0.1:1/1")) as rcv:
        assert rcv.post("stripe", body, stripe_headers(body)).status_code == 503
    received = list_events(pay.engine, status="received")
    assert [e.event_id for e in received] == [f"evt_{donation}_payment_intent_succeeded"]
    # When an operator reconciles
    done = cli("webhook", "reconcile", "--older-than", "0s")
    assert done.returncode == 0, done.stderr
    assert "1 event(s) enqueued" in done.stdout
    assert len(queued(redis_client)) == 1
    # And replays it on top (a second job for the same event)
    replay(pay.settings, pay.engine, received[0].event_id)
    assert len(queued(redis_client)) == 2
    drain()
    # Then the donation completed once
    assert row(pay.engine, Donation, donation).status == "completed"
    assert row(pay.engine, Campaign, s.campaign).raised_minor == 7_00
    assert [e.status for e in list_events(pay.engine, provider="stripe")] == ["processed"]
    bad = cli("webhook", "events", "--provider", "adyen")
    assert bad.returncode == 2 and "unknown provider 'adyen'" in bad.stderr


# -- 3. Mollie ------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_mollie_classic_and_signed_webhooks_act_on_the_fetched_payment(
    pay: PayEnv, redis_client: redis.Redis
) -> None:
    s = pay.seeded
    paid = add_donation(pay.engine, s.campaign, s.outsider, 10_00, gateway="mollie")
    expired = add_donation(pay.engine, s.campaign, s.outsider, 3_00, gateway="mollie")
    pay.fake.mollie_payments["tr_paid1"] = {
        "id": "tr_paid1",
        "status": "paid",
        "amount": {"value": "10.00", "currency": "EUR"},
        "metadata": {"donation_id": paid},
    }
    pay.fake.mollie_payments["tr_exp1"] = {
        "id": "tr_exp1",
        "status": "expired",
        "amount": {"value": "3.00", "currency": "EUR"},
        "metadata": {"donation_id": expired},
    }
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    signed = json.dumps(
        {"id": "event_9", "type": "payment.updated", "entityId": "tr_exp1"}
    ).encode()
    with receiver(pay.settings) as rcv:
        # Classic: unsigned form body; a fake id is accepted but changes nothing
        assert rcv.post("mollie", b"id=tr_paid1", form).status_code == 200
        assert rcv.post("mollie", b"id=tr_forged", form).status_code == 200
        assert rcv.post("mollie", b"id=../../x", form).status_code == 400
        # Signed: with and without the sha256= prefix, and a bad signature
        sig = mollie.sign(signed, MOLLIE_SECRET)
        assert rcv.post("mollie", signed, {"X-Mollie-Signature": sig}).status_code == 200
        assert (
            rcv.post("mollie", signed, {"X-Mollie-Signature": sig[7:]}).json()["status"]
            == "duplicate"
        )
        assert (
            rcv.post("mollie", signed, {"X-Mollie-Signature": "sha256=" + "0" * 64}).status_code
            == 400
        )
    drain()
    assert row(pay.engine, Donation, paid).status == "completed"
    assert row(pay.engine, Donation, expired).status == "failed"
    assert row(pay.engine, Campaign, s.campaign).raised_minor == 10_00
    failed = count(
        pay.engine,
        "SELECT count(*) FROM webhook_events WHERE status='failed' AND error LIKE '%tr_forged%'",
    )
    assert failed == 1  # permanent failure tracking: Mollie does not know the payment


# -- 4. PayPal ------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_paypal_transmission_signatures(pay: PayEnv, redis_client: redis.Redis) -> None:
    s = pay.seeded
    donation = add_donation(pay.engine, s.campaign, s.outsider, 20_00, gateway="paypal")
    body = paypal_event(donation, "20.00")
    keys = pay.paypal
    with receiver(pay.settings) as rcv:
        tampered = rcv.post("paypal", body.replace(b"20.00", b"2000.00"), keys.headers(body))
        foreign = rcv.post(
            "paypal", body, keys.headers(body, cert_url="https://paypal.com.evil.example/cert")
        )
        http_url = rcv.post(
            "paypal", body, keys.headers(body, cert_url="http://api.paypal.com/cert")
        )
        algo = rcv.post("paypal", body, keys.headers(body, algo="SHA1withRSA"))
        other_hook = rcv.post("paypal", body, keys.headers(body, webhook_id="WH-SOMEONE-ELSE"))
        assert events_count(pay) == 0
        good = rcv.post("paypal", body, keys.headers(body))
    assert tampered.status_code == 400 and tampered.json()["error"] == "signature does not match"
    assert foreign.status_code == 400 and "not under paypal.com" in foreign.json()["error"]
    assert http_url.status_code == 400
    assert algo.status_code == 400 and "PAYPAL-AUTH-ALGO" in algo.json()["error"]
    assert other_hook.status_code == 400
    assert good.status_code == 200, good.text
    # No certificate was fetched from anywhere: the foreign host was refused before fetching
    assert not [c for c in pay.fake.calls if "cert" in c[1]]
    drain()
    assert row(pay.engine, Donation, donation).status == "completed"
    assert row(pay.engine, Donation, donation).gateway_transaction_id == f"CAP-{donation}"


@pytest.mark.timeout(60)
def test_paypal_verification_by_api_postback(pay: PayEnv) -> None:
    s = pay.seeded
    donation = add_donation(pay.engine, s.campaign, s.outsider, 20_00, gateway="paypal")
    body = paypal_event(donation, "20.00")
    settings = pay.reload(ACMEQ_PAYPAL_VERIFY="api")
    with receiver(settings) as rcv:
        ok = rcv.post("paypal", body, pay.paypal.headers(body))
        pay.fake.paypal_verify_ok = False
        other = paypal_event(donation, "20.00", kind="PAYMENT.CAPTURE.DENIED")
        refused = rcv.post("paypal", other, pay.paypal.headers(other))
    assert ok.status_code == 200 and refused.status_code == 400
    posted = [c for c in pay.fake.calls if c[1] == "/v1/notifications/verify-webhook-signature"]
    assert posted[0][2]["webhook_id"] == PAYPAL_WEBHOOK_ID  # from config, never the request


# -- 5. event mapping outcomes, and the real `acmeq webhook serve` ---------------------------


@pytest.mark.timeout(120)
def test_unknown_types_are_ignored_and_mismatches_fail_for_good(
    pay: PayEnv, redis_client: redis.Redis
) -> None:
    s = pay.seeded
    donation = add_donation(pay.engine, s.campaign, s.outsider, 10_00)
    unknown = stripe_event(donation, 10_00, kind="customer.created")
    wrong_amount = stripe_event(donation, 99_00)
    refunded = stripe_event(donation, 10_00, kind="charge.refunded", refunded=4_00)
    with receiver(pay.settings) as rcv:
        for body in (unknown, wrong_amount):
            assert rcv.post("stripe", body, stripe_headers(body)).status_code == 200
    drain()
    rows = {e.event_type: e for e in list_events(pay.engine)}
    assert rows["customer.created"].status == "ignored"
    assert rows["payment_intent.succeeded"].status == "failed"
    assert "amount mismatch" in (rows["payment_intent.succeeded"].error or "")
    assert row(pay.engine, Donation, donation).status == "pending"
    # A correct completion, then the provider's partial refund, through the receiver
    good = stripe_event(donation, 10_00, event_id="evt_good")
    with receiver(pay.settings) as rcv:
        assert rcv.post("stripe", good, stripe_headers(good)).status_code == 200
    drain()
    with receiver(pay.settings) as rcv:
        assert rcv.post("stripe", refunded, stripe_headers(refunded)).status_code == 200
    drain()
    d = row(pay.engine, Donation, donation)
    assert (d.status, d.refunded_minor) == ("partially_refunded", 4_00)
    assert row(pay.engine, Campaign, s.campaign).raised_minor == 6_00


@pytest.mark.timeout(120)
def test_acmeq_webhook_serve_runs_the_receiver(pay: PayEnv, redis_client: redis.Redis) -> None:
    import subprocess
    import sys

    from conftest import free_port, wait_until

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "acmeq", "webhook", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                return False

        wait_until("receiver healthy", healthy, timeout=60, every=0.2)
        body = stripe_event(1, 1_00)
        reply = httpx.post(
            f"http://127.0.0.1:{port}/webhooks/stripe", content=body, headers=stripe_headers(body)
        )
        assert reply.status_code == 200 and reply.json()["status"] == "accepted"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert queued(redis_client) == ["webhook-1"]
