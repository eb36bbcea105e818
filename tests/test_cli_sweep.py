"""Every command, found by walking the Typer app (so commands added later are swept too), meets
broken Redis, a non-Redis server, a broken database and malformed arguments: it answers with
one line on stderr and a named exit code, never a traceback and never a hang.

Commands run in forked children of the test process (acmeq is imported once, here), four at a
time, each with its own stdout/stderr files and a time limit: ~250 runs cost about a CPU-minute.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import typer.main

from conftest import RedisServer, free_port

# Commands that serve or supervise until stopped: with a working Redis they would run forever,
# so they meet only the broken-Redis cases. `demo` runs the whole product on its own embedded
# Redis and SQLite (whatever is configured), for minutes: tests/test_demo.py covers it.
DAEMONS = {"worker start", "metrics serve", "webhook serve", "dashboard"}
SKIPPED = {"demo"}
LIMIT_S = 45.0  # per command, on a loaded machine; a healthy one answers in well under 5 s
PARALLEL = 4


@dataclass
class Outcome:
    argv: list[str]
    code: int | None  # None: killed after LIMIT_S
    stdout: str
    stderr: str

    def problem(self) -> str | None:
        shown = " ".join(self.argv)
        if self.code is None:
            return f"{shown}: still running after {LIMIT_S:.0f} s"
        if "Traceback" in self.stderr + self.stdout or "internal error:" in self.stderr:
            return f"{shown}: traceback (or the CLI's last-resort 'internal error'):\n{self.stderr}"
        lines = self.stderr.strip().splitlines()
        if self.code != 0 and (len(lines) != 1 or not lines[0].startswith("acmeq: error: ")):
            return f"{shown}: exit {self.code} with {len(lines)} stderr lines: {self.stderr!r}"
        return None


def commands() -> Iterator[tuple[list[str], click.Command]]:
    """Every runnable command path of the app (a group that runs without a subcommand too)."""
    from acmeq.cli import app

    def walk(cmd: click.Command, path: list[str]) -> Iterator[tuple[list[str], click.Command]]:
        if isinstance(cmd, click.Group):
            if path and cmd.invoke_without_command:
                yield path, cmd
            for name, sub in sorted(cmd.commands.items()):
                yield from walk(sub, [*path, name])
        else:
            yield path, cmd

    yield from walk(typer.main.get_command(app), [])


def placeholder_args(cmd: click.Command, value: str) -> list[str]:
    """``value`` for each required positional argument (an integer one gets 987654)."""
    args = []
    for param in cmd.params:
        if isinstance(param, click.Argument) and param.required:
            args.append("987654" if "integer" in param.type.name else value)
    return args


def _child(argv: list[str], env: dict[str, str], out: Path, err: Path) -> int:
    os.environ.clear()
    os.environ.update(env)
    for fd, path, flags in (
        (0, os.devnull, os.O_RDONLY),
        (1, str(out), os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        (2, str(err), os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
    ):
        os.dup2(os.open(path, flags), fd)
    # pytest replaced sys.stdout/err with its capture buffers: write to the real descriptors.
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    code = 0
    try:
        from acmeq import cli

        cli.main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 99
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    return code


def run_all(runs: list[tuple[list[str], dict[str, str]]], workdir: Path) -> list[Outcome]:
    """Run each (argv, env) in a forked child, PARALLEL at a time; kill any after LIMIT_S."""
    pending = list(enumerate(runs))
    running: dict[int, tuple[int, float]] = {}
    codes: dict[int, int | None] = {}
    sys.stdout.flush()
    sys.stderr.flush()
    while pending or running:
        while pending and len(running) < PARALLEL:
            index, (argv, env) = pending.pop(0)
            pid = os.fork()
            if pid == 0:  # the child never returns into pytest
                code = 98
                try:
                    code = _child(argv, env, workdir / f"{index}.out", workdir / f"{index}.err")
                finally:
                    os._exit(code)
            running[pid] = (index, time.monotonic())
        time.sleep(0.02)
        for pid, (index, started) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes[index] = os.waitstatus_to_exitcode(status)
                del running[pid]
            elif time.monotonic() - started > LIMIT_S:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                codes[index] = None
                del running[pid]
    return [
        Outcome(
            argv,
            codes[i],
            (workdir / f"{i}.out").read_text(errors="replace"),
            (workdir / f"{i}.err").read_text(errors="replace"),
        )
        for i, (argv, _) in enumerate(runs)
    ]


@contextlib.contextmanager
def text_protocol_server() -> Iterator[int]:
    """A server that greets like SMTP and hangs up: what REDIS_URL must not be pointed at."""
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"220 mail.example.test ESMTP ready\r\n")
                conn.settimeout(0.5)
                conn.recv(256)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _preload() -> None:
    # Import what the commands import lazily once, here: each child then starts at once.
    import acmeq.cli
    import acmeq.observability.status
    import acmeq.storage.sql
    import acmeq.tracking.cancel
    import acmeq.tracking.watch  # noqa: F401


@pytest.mark.timeout(400)  # ~1 CPU-minute; minutes of wall time on a loaded machine
def test_every_command_fails_in_one_line_without_a_traceback(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    _preload()
    base = dict(os.environ, COLUMNS="120", NO_COLOR="1")
    sqlite = f"sqlite:///{tmp_path / 'acmeq.db'}"
    closed = free_port()
    all_commands = [(p, c) for p, c in commands() if " ".join(p) not in SKIPPED]
    assert len(all_commands) > 30  # the walk found the app's commands
    runs: list[tuple[list[str], dict[str, str]]] = []
    redis_server.client.flushall()
    working_redis = redis_server.url(3)

    with text_protocol_server() as smtp_port:
        broken = {
            "redis refused": {"REDIS_URL": f"redis://127.0.0.1:{closed}/0"},
            "not redis": {"REDIS_URL": f"redis://127.0.0.1:{smtp_port}/0"},
            "database refused": {
                "REDIS_URL": working_redis,
                "DATABASE_URL": f"postgresql://acmeq@127.0.0.1:{closed}/acmeq",
            },
        }
        for case, env in broken.items():
            for path, cmd in all_commands:
                if case == "database refused" and " ".join(path) in DAEMONS:
                    continue
                argv = [*path, *placeholder_args(cmd, "abcdef0123")]
                runs.append((argv, {**base, "DATABASE_URL": sqlite, **env}))
        # Malformed arguments against working services: a bogus option, a number option given
        # a word, and odd positional values.
        good = {**base, "REDIS_URL": working_redis, "DATABASE_URL": sqlite}
        for path, cmd in all_commands:
            runs.append(([*path, *placeholder_args(cmd, "x"), "--no-such-option"], good))
            for param in cmd.params:
                if isinstance(param, click.Option) and param.type.name.startswith(
                    ("integer", "float")
                ):
                    runs.append(([*path, *placeholder_args(cmd, "x"), param.opts[0], "abc"], good))
            if " ".join(path) in DAEMONS:
                continue
            if any(isinstance(p, click.Argument) and p.required for p in cmd.params):
                for odd in ("has space", ""):
                    runs.append(([*path, *placeholder_args(cmd, odd)], good))

        outcomes = run_all(runs, tmp_path)

    problems = [p for p in (o.problem() for o in outcomes) if p]
    assert problems == [], "\n".join(problems)
    refused = [o for o in outcomes[: len(all_commands)] if o.code == 3]
    assert any("cannot reach Redis" in o.stderr for o in refused)
    not_redis = [o for o in outcomes if "not a Redis server at" in o.stderr]
    assert not_redis and all(o.code == 3 for o in not_redis)
