"""`acmeq dashboard`: rq-dashboard shows acmeq's queues, workers and failed jobs over real HTTP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from master_support import MasterStarter, master_env

from acmeq.config.settings import Settings
from acmeq.queues import Enqueuer

from conftest import free_port, run_cli, wait_until

pytest.importorskip("rq_dashboard", reason="the dashboard extra: pip install 'acmeq[dashboard]'")

CONFIG = """
[profiles.dash.supervisors.main]
queues = ["notifications"]
balance = "off"
min_processes = 1
max_processes = 1
mode = "inline"

[profiles.dash.supervisors.bulk]
queues = ["bulk"]
balance = "off"
min_processes = 1
max_processes = 1
mode = "inline"
"""


class Dashboard:
    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = tmp_path / f"dashboard-{self.port}.log"
        environ = master_env(**(env or {}))
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "acmeq", "dashboard", "--port", str(self.port), *args],
                cwd=tmp_path,
                env=environ,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.base = f"http://127.0.0.1:{self.port}"

    def wait(self, auth: tuple[str, str] | None = None) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                httpx.get(self.base + "/", auth=auth, timeout=2)
            except httpx.TransportError:
                return False
            return True

        wait_until("dashboard answering", up, timeout=30)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.base + path, timeout=10, follow_redirects=True, **kwargs)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def acmeq_toml(tmp_path: Path) -> Path:
    path = tmp_path / "acmeq.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def pool(
    redis_url: str, job_modules: str, acmeq_toml: Path, tmp_path: Path
) -> Iterator[MasterStarter]:
    start = MasterStarter(tmp_path, redis_url)
    yield start
    start.cleanup()


@pytest.fixture
def dashboards(tmp_path: Path) -> Iterator[list[Dashboard]]:
    started: list[Dashboard] = []
    yield started
    for d in started:
        d.stop()
        print(d.log.read_text())


def test_dashboard_shows_queues_workers_and_failed_jobs(
    pool: MasterStarter,
    dashboards: list[Dashboard],
    redis_client: redis.Redis,
    acmeq_toml: Path,
    tmp_path: Path,
) -> None:
    master = pool("dash", "dash-host")
    enqueuer = Enqueuer(Settings.load(acmeq_toml), redis_client)
    done = [enqueuer.enqueue("noop").id for _ in range(5)]
    failed = enqueuer.enqueue("explode", "dashboard-test").id
    wait_until(
        "jobs finished and failed",
        lambda: (
            redis_client.zscore("rq:failed:bulk", failed) is not None
            and all(redis_client.zscore("rq:finished:notifications", j) for j in done)
        ),
    )
    waiting = enqueuer.enqueue("sleep_for", 0.1).id  # reports: no pool of this profile serves it

    dash = Dashboard(tmp_path)
    dashboards.append(dash)
    dash.wait()

    queues = {q["name"]: q for q in dash.get("/0/data/queues.json").json()["queues"]}
    assert {"notifications", "bulk", "reports"} <= set(queues)
    assert queues["reports"]["count"] == 1
    workers = dash.get("/0/data/workers.json").json()["workers"]
    names = {w["name"] for w in workers}
    assert any(n.startswith("dash-host.main.notifications.") for n in names), names
    assert {w["pid"] for w in workers} <= {p.pid for p in master.tree()}
    failed_jobs = dash.get("/0/data/jobs/bulk/failed/10/asc/1.json").json()["jobs"]
    assert [j["id"] for j in failed_jobs] == [failed]
    assert failed_jobs[0]["description"] == "explode"
    finished = dash.get("/0/data/jobs/notifications/finished/10/asc/1.json").json()["jobs"]
    assert {j["id"] for j in finished} >= set(done)
    job = dash.get(f"/0/data/job/{failed}.json").json()
    assert "ValueError" in job["exc_info"]
    queued = dash.get("/0/data/jobs/reports/queued/10/asc/1.json").json()["jobs"]
    assert [j["id"] for j in queued] == [waiting]
    for page in ("/0/view/queues", "/0/view/workers", "/0/view/jobs/bulk/failed/8/asc/1"):
        assert dash.get(page).status_code == 200, page

    # Read-only: nothing that changes Redis gets through.
    assert httpx.post(f"{dash.base}/job/{failed}/requeue", timeout=10).status_code == 403
    assert dash.get("/requeue/bulk").status_code == 403
    assert httpx.post(f"{dash.base}/queue/reports/queued/empty", timeout=10).status_code == 403
    assert httpx.post(f"{dash.base}/job/{failed}/delete", timeout=10).status_code == 403
    assert redis_client.zscore("rq:failed:bulk", failed) is not None
    assert redis_client.llen("rq:queue:reports") == 1


def test_off_loopback_requires_basic_auth(
    redis_url: str, dashboards: list[Dashboard], tmp_path: Path
) -> None:
    refused = run_cli("dashboard", "--host", "0.0.0.0", "--port", str(free_port()))
    assert refused.returncode == 2
    assert "basic auth" in refused.stderr and "Traceback" not in refused.stderr

    creds = ("ops", "s3cret-dashboard")
    dash = Dashboard(
        tmp_path,
        "--host",
        "0.0.0.0",
        "--username",
        creds[0],
        env={"ACMEQ_DASHBOARD_PASSWORD": creds[1]},
    )
    dashboards.append(dash)
    dash.wait()
    assert dash.get("/0/data/queues.json").status_code == 401
    assert dash.get("/0/data/queues.json", auth=("ops", "wrong")).status_code == 401
    assert dash.get("/0/data/queues.json", auth=creds).status_code == 200


def test_writable_dashboard_requeues(
    redis_url: str,
    redis_client: redis.Redis,
    job_modules: str,
    dashboards: list[Dashboard],
    acmeq_toml: Path,
    tmp_path: Path,
) -> None:
    enqueuer = Enqueuer(Settings.load(acmeq_toml), redis_client)
    job = enqueuer.enqueue("sleep_for", 0.1)
    dash = Dashboard(tmp_path, "--writable")
    dashboards.append(dash)
    dash.wait()
    response = httpx.post(f"{dash.base}/queue/reports/queued/empty", timeout=10)
    assert response.status_code == 200, response.text
    assert redis_client.llen("rq:queue:reports") == 0
    assert job.id
