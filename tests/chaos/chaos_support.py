"""What the chaos scenarios share: the receiver as a real `acmeq webhook serve` subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from payments_support import stripe_headers

from conftest import free_port, wait_until


class Receiver:
    """`acmeq webhook serve` as a real subprocess."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "receiver.log"
        env = dict(os.environ)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "acmeq", "webhook", "serve", "--port", str(self.port)],
                cwd=workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def healthy() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until("receiver healthy", healthy, timeout=60, every=0.2)

    def post(self, body: bytes) -> int:
        try:
            reply = httpx.post(
                self.url + "/webhooks/stripe",
                content=body,
                headers=stripe_headers(body),
                timeout=30,
            )
        except httpx.TransportError:
            return 0
        return reply.status_code

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
