"""The SQL layer: engines, migrations, constraints, sessions and the `acmeq db` commands.

Every test taking ``database_url``/``engine``/``db_session`` runs on SQLite and, with
ACMEQ_TEST_DATABASE_URL set, on PostgreSQL as well (see tests/db_support.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, StatementError
from sqlmodel import Session, SQLModel, select
from typer.testing import CliRunner

from acmeq.commands import common
from acmeq.commands import db as db_cmd
from acmeq.errors import DatabaseUnreachableError, UsageError
from acmeq.storage import sql as db
from acmeq.storage.models import (
    Campaign,
    CampaignStatus,
    Donation,
    DonationStatus,
    Gateway,
    User,
    UserRole,
    WebhookEvent,
)

TABLES = {
    "companies", "users", "campaigns", "donations", "audit_log", "job_progress",
    "webhook_events", "failed_emails", "export_files", "failed_jobs",
}  # fmt: skip
UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/x"

# The newest revision: every later migration moves it; the tests follow.
HEAD = sorted(p.name.split("_")[0] for p in (db.MIGRATIONS_DIR / "versions").glob("[0-9]*_*.py"))[
    -1
]


def a_campaign(session: Session) -> Campaign:
    organizer = User(email="org@example.com", name="Olga Organizer", role=UserRole.ORGANIZER)
    session.add(organizer)
    session.flush()
    assert organizer.id is not None
    campaign = Campaign(
        title="Clean Water for Kisumu",
        goal_minor=1_000_000,
        currency="EUR",
        status=CampaignStatus.ACTIVE,
        organizer_id=organizer.id,
    )
    session.add(campaign)
    session.flush()
    return campaign


def a_donation(campaign: Campaign, transaction_id: str | None) -> Donation:
    assert campaign.id is not None
    return Donation(
        campaign_id=campaign.id,
        amount_minor=2500,
        currency="EUR",
        status=DonationStatus.COMPLETED,
        gateway=Gateway.STRIPE,
        gateway_transaction_id=transaction_id,
    )


# ---------------------------------------------------------------------------------------------
# Migrations


def test_upgrade_creates_every_table_with_its_keys(engine: Engine) -> None:
    # Given a database migrated to head
    inspector = sa.inspect(engine)

    # Then every table exists, with the unique keys that make effects idempotent
    assert set(inspector.get_table_names()) >= TABLES
    donation_uniques = {
        tuple(u["column_names"]) for u in inspector.get_unique_constraints("donations")
    }
    assert ("gateway_transaction_id",) in donation_uniques
    webhook_uniques = {
        tuple(u["column_names"]) for u in inspector.get_unique_constraints("webhook_events")
    }
    assert ("provider", "event_id") in webhook_uniques
    # And the indexes the queries rely on
    donation_indexes = {tuple(i["column_names"]) for i in inspector.get_indexes("donations")}
    assert {("campaign_id", "status"), ("created_at",)} <= donation_indexes
    assert ("status",) in {tuple(i["column_names"]) for i in inspector.get_indexes("campaigns")}
    progress_indexes = {tuple(i["column_names"]) for i in inspector.get_indexes("job_progress")}
    assert {("status",), ("user_id",)} <= progress_indexes


def test_the_migrations_match_the_models(engine: Engine) -> None:
    # Given a database migrated to head
    with engine.connect() as conn:
        # When alembic compares it with the SQLModel metadata
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, SQLModel.metadata)

    # Then there is nothing left to autogenerate
    assert differences == []


def test_current_revision_goes_from_none_to_head(database_url: str) -> None:
    # Given an empty database
    engine = db.make_engine(database_url)
    try:
        assert db.current_revision(engine) is None
        with pytest.raises(UsageError, match=rf"not up to date \(at none, head is {HEAD}\)"):
            db.require_schema(engine)

        # When it is upgraded (twice: deploys run it every time)
        first = db.upgrade(engine)
        second = db.upgrade(engine)

        # Then it reports head and the schema check passes
        assert first.current == second.current == db.head_revision() == HEAD
        assert second.up_to_date
        assert db.current_revision(engine) == HEAD
        db.require_schema(engine)
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# Constraints and types


def test_a_gateway_transaction_id_is_stored_once(db_session: Session) -> None:
    # Given a completed donation with a provider's transaction id
    campaign = a_campaign(db_session)
    db_session.add(a_donation(campaign, "pi_3AbC123"))
    db_session.commit()

    # When the same transaction is recorded again (a webhook redelivered)
    db_session.add(a_donation(campaign, "pi_3AbC123"))

    # Then the database refuses it
    with pytest.raises(IntegrityError):
        db_session.commit()
    db_session.rollback()
    # While donations without a transaction id yet are not constrained
    db_session.add_all([a_donation(campaign, None), a_donation(campaign, None)])
    db_session.commit()


def test_a_webhook_event_is_stored_once_per_provider(db_session: Session) -> None:
    # Given a Stripe event that was received
    db_session.add(WebhookEvent(provider="stripe", event_id="evt_1", event_type="charge.paid"))
    db_session.commit()

    # When Mollie happens to use the same id, that is a different event
    db_session.add(WebhookEvent(provider="mollie", event_id="evt_1", event_type="payment.paid"))
    db_session.commit()

    # But Stripe redelivering evt_1 is refused
    db_session.add(WebhookEvent(provider="stripe", event_id="evt_1", event_type="charge.paid"))
    with pytest.raises(IntegrityError):
        db_session.commit()


def test_foreign_keys_are_enforced(db_session: Session) -> None:
    # Given no campaign 424242, a donation to it is refused (SQLite too: PRAGMA foreign_keys)
    db_session.add(
        Donation(campaign_id=424242, amount_minor=100, currency="EUR", gateway=Gateway.MOLLIE)
    )
    with pytest.raises(IntegrityError):
        db_session.commit()


def test_states_are_stored_as_values_and_times_come_back_in_utc(engine: Engine) -> None:
    # Given a webhook event stored with an enum state, a JSON payload and a time
    received = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
    with db.session(engine) as session:
        event = WebhookEvent(
            provider="paypal",
            event_id="WH-1",
            event_type="PAYMENT.CAPTURE.COMPLETED",
            payload={"amount": {"value": "25.00", "currency": "EUR"}},
            received_at=received,
        )
        session.add(event)

    # Then SQL sees the state's value, not the member name
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM webhook_events")).scalar_one() == "received"

    # And reading it back gives the enum, the payload and an aware UTC time
    with db.session(engine) as session:
        loaded = session.exec(select(WebhookEvent)).one()
        assert loaded.status == "received" and loaded.status.name == "RECEIVED"
        assert loaded.payload == {"amount": {"value": "25.00", "currency": "EUR"}}
        assert loaded.received_at == received
        assert loaded.received_at.tzinfo is not None
        assert loaded.received_at.utcoffset() == UTC.utcoffset(None)


def test_a_naive_datetime_is_refused(db_session: Session) -> None:
    # Given a time without a zone, storing it fails instead of guessing the zone
    db_session.add(WebhookEvent(provider="x", event_id="1", event_type="t",
                                received_at=datetime(2025, 1, 1)))  # fmt: skip
    with pytest.raises(StatementError, match="naive datetime"):
        db_session.commit()


def test_session_commits_on_success_and_rolls_back_on_error(engine: Engine) -> None:
    # When one block succeeds and another raises halfway
    with db.session(engine) as session:
        session.add(WebhookEvent(provider="stripe", event_id="kept", event_type="t"))
    with pytest.raises(RuntimeError), db.session(engine) as session:
        session.add(WebhookEvent(provider="stripe", event_id="lost", event_type="t"))
        session.flush()
        raise RuntimeError("boom")

    # Then only the first block's row exists
    with db.session(engine) as session:
        ids = session.exec(select(WebhookEvent.event_id)).all()
    assert ids == ["kept"]


# ---------------------------------------------------------------------------------------------
# Engines and reachability


def test_an_unreachable_database_is_reported_quickly_in_one_line() -> None:
    # Given a PostgreSQL URL where nothing listens
    engine = db.make_engine(UNREACHABLE)
    started = time.monotonic()

    # When it is checked, or migrated
    with pytest.raises(DatabaseUnreachableError) as checked:
        db.check_reachable(engine)
    with pytest.raises(DatabaseUnreachableError) as upgraded:
        db.upgrade(engine)

    # Then both fail within seconds with one line naming the place and the cause
    assert time.monotonic() - started < 5
    message = str(checked.value)
    assert message == f"cannot reach database at {UNREACHABLE}: Connection refused"
    assert "\n" not in message
    assert str(upgraded.value) == message
    assert checked.value.exit_code == 3


def test_the_password_never_appears_in_the_error() -> None:
    engine = db.make_engine("postgresql://app:s3cret@127.0.0.1:1/acme")
    with pytest.raises(DatabaseUnreachableError) as caught:
        db.check_reachable(engine)
    assert "s3cret" not in str(caught.value)
    assert "app:***@127.0.0.1:1" in str(caught.value)


def test_the_reason_names_what_is_missing(database_url: str, tmp_path: Path) -> None:
    # Given a database that cannot exist: a PostgreSQL database nobody created, or a SQLite
    # file whose directory would have to be created inside a regular file
    if database_url.startswith("sqlite"):
        (tmp_path / "not-a-dir").write_text("")
        url, reason = f"sqlite:///{tmp_path / 'not-a-dir' / 'acmeq.db'}", "cannot create directory"
    else:
        missing = sa.make_url(database_url).set(database="acmeq_no_such_db")
        url = missing.render_as_string(hide_password=False)
        reason = 'database "acmeq_no_such_db" does not exist'

    # When it is checked, the message names the cause
    with pytest.raises(DatabaseUnreachableError, match=reason):
        db.check_reachable(db.make_engine(url))


def test_plain_postgresql_urls_get_the_psycopg_driver() -> None:
    for url in ("postgresql://u@db.internal/acme", "postgres://u@db.internal/acme"):
        engine = db.make_engine(url)
        assert engine.url.drivername == "postgresql+psycopg"
        engine.dispose()


def test_sqlite_gets_wal_a_busy_timeout_foreign_keys_and_its_directory(tmp_path: Path) -> None:
    # Given a SQLite file in a directory that does not exist yet
    path = tmp_path / "state" / "nested" / "acmeq.db"
    engine = db.make_engine(f"sqlite:///{path}")
    try:
        # When a connection is opened
        db.check_reachable(engine)
        with engine.connect() as conn:
            pragma = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "busy_timeout", "foreign_keys")
            }
        # Then the file exists with acmeq's settings
        assert path.exists()
        assert pragma == {"journal_mode": "wal", "busy_timeout": 5000, "foreign_keys": 1}
    finally:
        engine.dispose()


def test_engine_for_shares_one_engine_per_url(tmp_path: Path) -> None:
    from acmeq.config.settings import Settings

    try:
        one = Settings.load(env={"ACMEQ_STATE_DIR": str(tmp_path / "a")})
        same = Settings.load(env={"ACMEQ_STATE_DIR": str(tmp_path / "a")})
        other = Settings.load(env={"ACMEQ_STATE_DIR": str(tmp_path / "b")})
        assert db.engine_for(one) is db.engine_for(same)
        assert db.engine_for(one) is not db.engine_for(other)
        assert db.engine_for(one).url.database == str(tmp_path / "a" / "acmeq.db")
    finally:
        db.dispose_engines()


# ---------------------------------------------------------------------------------------------
# `acmeq db`


def run_acmeq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **env}
    full_env.pop("ACMEQ_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "acmeq", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        check=False,
    )


def test_acmeq_db_upgrade_migrates_the_configured_database(
    database_url: str, tmp_path: Path
) -> None:
    # Given DATABASE_URL names an empty database
    env = {"DATABASE_URL": database_url, "ACMEQ_STATE_DIR": str(tmp_path / "state")}

    # When an operator runs `acmeq db upgrade`
    result = run_acmeq("db", "upgrade", env=env)

    # Then it succeeds with one line naming the database and the revision
    assert result.returncode == 0, result.stderr
    assert f"upgraded to {HEAD} (head)" in result.stdout
    assert result.stdout.startswith("database ")
    # And `acmeq db current --json` agrees
    current = run_acmeq("db", "current", "--json", env=env)
    assert current.returncode == 0, current.stderr
    assert json.loads(current.stdout) | {"url": None} == {
        "url": None,
        "current": HEAD,
        "head": HEAD,
        "up_to_date": True,
    }


def test_acmeq_db_upgrade_without_database_url_uses_the_state_dir(tmp_path: Path) -> None:
    # Given no DATABASE_URL, the SQLite file lives in the state directory
    state = tmp_path / "state"
    result = run_acmeq("db", "upgrade", env={"ACMEQ_STATE_DIR": str(state), "DATABASE_URL": ""})
    assert result.returncode == 0, result.stderr
    assert (state / "acmeq.db").exists()
    assert str(state / "acmeq.db") in result.stdout


def test_acmeq_db_upgrade_on_an_unreachable_database_exits_3(tmp_path: Path) -> None:
    result = run_acmeq(
        "db", "upgrade", env={"DATABASE_URL": UNREACHABLE, "ACMEQ_STATE_DIR": str(tmp_path)}
    )
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        f"acmeq: error: cannot reach database at {UNREACHABLE}: Connection refused"
    ]


@pytest.fixture
def db_app_env(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CliRunner]:
    """The `db` Typer app alone, configured through the environment like the real CLI."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("ACMEQ_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("ACMEQ_CONFIG", raising=False)
    common.state._settings = None
    yield CliRunner()
    common.state._settings = None
    db.dispose_engines()


def test_the_db_commands_report_before_and_after_upgrade(db_app_env: CliRunner) -> None:
    # Given an empty database, `db current` says it is not migrated
    before = db_app_env.invoke(db_cmd.app, ["current"])
    assert before.exit_code == 0, before.output
    assert f"is not migrated (head is {HEAD})" in before.output

    # When `db upgrade` runs
    upgraded = db_app_env.invoke(db_cmd.app, ["upgrade", "--revision", "head"])
    assert upgraded.exit_code == 0, upgraded.output
    assert f"upgraded to {HEAD} (head)" in upgraded.output

    # Then `db current` reports head, as text and as JSON
    after = db_app_env.invoke(db_cmd.app, ["current"])
    assert f"is at {HEAD} (head)" in after.output
    as_json = db_app_env.invoke(db_cmd.app, ["current", "--json"])
    assert json.loads(as_json.output)["up_to_date"] is True


def test_an_unknown_revision_is_a_usage_error(engine: Engine) -> None:
    with pytest.raises(UsageError, match="cannot upgrade to revision 'zzzz'"):
        db.upgrade(engine, "zzzz")
