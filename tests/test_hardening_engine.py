"""Issue 8, below the HTTP edge: one writer per embedded log, a log that does not match its
record, writes retried while the disk is full, private file modes, serialized policy writes,
and the id and reference checks."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

from rendezvous import ModelSpec, Policy, Registry, Role, config
from rendezvous.errors import ConfigError, ConflictError, LogInUseError, LogMismatchError
from rendezvous.ids import ModelRef, check_name
from rendezvous.roles.monitor import stats_from_log
from rendezvous.streams.embedded import EmbeddedStream
from tests.conftest import register_callable


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def wait_for(check, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not check():
        assert loop.time() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


# -- item 2: one writer per log ---------------------------------------------------------------


async def test_a_second_writer_is_refused_naming_the_first(tmp_path: Path) -> None:
    log = tmp_path / "streams.db"
    first = await EmbeddedStream.open(log)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "dep.json").write_text(json.dumps(
        {"url": "http://127.0.0.1:8123", "pid": os.getpid(), "token": "t"}))
    try:
        await first.append("t", [b"a"], ["1"])
        with pytest.raises(LogInUseError) as info:
            await EmbeddedStream.open(log)
        assert f"process {os.getpid()}" in str(info.value)
        assert "http://127.0.0.1:8123" in str(info.value)
        # Readers (``rendezvous status``) still read beside the writer.
        reader = await EmbeddedStream.open(log, read_only=True)
        assert [r.data for r in await reader.read("t", from_offset=1)] == [b"a"]
        await reader.close()
    finally:
        await first.close()
    again = await EmbeddedStream.open(log)  # the lock went with the first writer
    await again.close()


async def test_status_reads_the_log_while_a_server_writes_it(tmp_path: Path) -> None:
    stream = await EmbeddedStream.open(tmp_path / "streams.db")
    try:
        stats = await stats_from_log(tmp_path, "dep")
        assert stats.to_dict()["requests"] == 0
    finally:
        await stream.close()


# -- item 7: a log that does not match its record ---------------------------------------------


async def _log_with_records(tmp_path: Path) -> Path:
    log = tmp_path / "streams.db"
    stream = await EmbeddedStream.open(log)
    await stream.append("t", [b"a", b"b", b"c"], ["1", "2", "3"])
    await stream.close()
    return log


async def test_an_emptied_log_is_refused_until_reset(tmp_path: Path) -> None:
    log = await _log_with_records(tmp_path)
    log.write_bytes(b"")
    with pytest.raises(LogMismatchError, match=r"missing or empty.*3 records.*--reset-log"):
        await EmbeddedStream.open(log)
    log.unlink()
    with pytest.raises(LogMismatchError, match="missing or empty"):
        await EmbeddedStream.open(log)
    fresh = await EmbeddedStream.open(log, reset=True)
    try:
        assert await fresh.last_offset("t") == 0
    finally:
        await fresh.close()
    reopened = await EmbeddedStream.open(log)  # the new log is the recorded one now
    await reopened.close()


async def test_another_log_file_is_refused(tmp_path: Path) -> None:
    log = await _log_with_records(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    await _log_with_records(other)
    shutil.copy(other / "streams.db", log)
    with pytest.raises(LogMismatchError, match="is another log"):
        await EmbeddedStream.open(log)


async def test_an_empty_log_with_a_stale_wal_says_so(tmp_path: Path) -> None:
    log = tmp_path / "streams.db"
    stream = await EmbeddedStream.open(log)
    await stream.append("t", [b"x" * 10_000], ["1"])
    wal = log.with_name("streams.db-wal")
    saved = wal.read_bytes()
    await stream.close()
    log.write_bytes(b"")
    wal.write_bytes(saved)
    with pytest.raises(LogMismatchError, match="write-ahead log"):
        await EmbeddedStream.open(log)
    aside = await EmbeddedStream.open(log, reset=True)
    await aside.close()
    assert list(tmp_path.glob("streams.db.reset-*-wal"))


# -- item 10: writes that fail while the disk is full -------------------------------------------


def fill_disk(stream: EmbeddedStream) -> None:
    """Make the log's file unable to grow: SQLite then fails writes with 'database or disk is
    full', as on a full disk."""
    assert stream._writer is not None
    conn = stream._writer.conn
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")


def free_disk(stream: EmbeddedStream) -> None:
    assert stream._writer is not None
    stream._writer.conn.execute("PRAGMA max_page_count = 1073741823")


async def test_failed_writes_are_kept_and_retried_while_running(tmp_path: Path) -> None:
    stream = await EmbeddedStream.open(tmp_path / "streams.db")
    try:
        await stream.append("t", [b"first"], ["0"])
        fill_disk(stream)
        with pytest.raises(Exception, match="full"):
            await stream.append("t", [b"y" * 200_000], ["1"])
        health = stream.health()
        assert not health.writable and health.backlog >= 1 and "full" in health.error
        with pytest.raises(Exception, match="not durable yet"):  # a client's retry
            await stream.append("t", [b"y" * 200_000], ["1"])
        free_disk(stream)
        await wait_for(lambda: stream.health().writable)
        assert stream.health().backlog == 0
        assert await stream.append("t", [b"y" * 200_000], ["1"]) == [2]
    finally:
        await stream.close()
    reopened = await EmbeddedStream.open(tmp_path / "streams.db")
    try:
        assert [len(r.data) for r in await reopened.read("t", from_offset=1)] == [5, 200_000]
    finally:
        await reopened.close()


# -- item 9: private files ------------------------------------------------------------------


async def test_home_and_files_are_private_unless_the_operator_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    reg = Registry(home)
    register_callable(reg, "m", "tests.models:doubler")
    reg.close()
    stream = await EmbeddedStream.open(home / "streams.db")
    await stream.append("t", [b"a"])
    await stream.close()
    assert mode(home) == 0o700
    files = [p for p in home.rglob("*") if p.is_file()]
    assert files and all(mode(p) == 0o600 for p in files), {str(p): oct(mode(p))
                                                            for p in files}
    assert all(mode(p) == 0o700 for p in home.rglob("*") if p.is_dir())
    monkeypatch.setenv("RENDEZVOUS_FILE_MODE", "0640")
    monkeypatch.setenv("RENDEZVOUS_DIR_MODE", "0750")
    other = tmp_path / "shared" / "home"
    stream = await EmbeddedStream.open(other / "streams.db")
    await stream.close()
    assert mode(other) == 0o750 and mode(other / "streams.db") == 0o640
    monkeypatch.setenv("RENDEZVOUS_FILE_MODE", "rw")
    with pytest.raises(ConfigError, match="RENDEZVOUS_FILE_MODE"):
        await EmbeddedStream.open(tmp_path / "x" / "streams.db")


def test_writers_of_one_file_never_disturb_each_other(tmp_path: Path) -> None:
    """Several threads replacing one file (a monitor's tick and its stop both save the
    state): each write is whole, none fails, and no temporary file is left behind."""
    path = tmp_path / "home" / "monitor" / "dep.json"
    bodies = [bytes([i]) * (64 * 1024) for i in range(8)]
    errors: list[BaseException] = []

    def write(body: bytes) -> None:
        try:
            for _ in range(25):
                config.write_private(path, body)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert path.read_bytes() in bodies and mode(path) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["dep.json"]


def test_run_files_stay_owner_only_whatever_the_file_mode(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run file holds the admin token: 0600 even where the operator shares the data
    directory's other files with a group."""
    from rendezvous.hosting.serving import write_run_files

    monkeypatch.setenv("RENDEZVOUS_FILE_MODE", "0640")
    [run] = write_run_files(tmp_path, ["dep"], {"token": "secret"})
    assert mode(run) == 0o600 and json.loads(run.read_text()) == {"token": "secret"}
    assert mode(config.write_private(tmp_path / "state.json", b"{}")) == 0o640


def test_a_failed_write_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = config.write_private(tmp_path / "state.json", b"before")

    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        config.replace_private(path, fail)
    assert path.read_bytes() == b"before"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


# -- item 5: concurrent policy writes --------------------------------------------------------


def test_concurrent_promotes_and_rollbacks_are_each_done_or_a_clear_conflict(
        registry: Registry) -> None:
    refs = [register_callable(registry, f"m{i}", "tests.models:doubler") for i in range(4)]
    registry.apply_policy("dep", Policy(models=[ModelSpec(refs[0], Role.CHAMPION)] + [
        ModelSpec(r, Role.CHALLENGER) for r in refs[1:]]))
    outcomes: list[str] = []
    start = threading.Barrier(16)

    def one(i: int) -> None:
        reg = Registry(registry.home)
        start.wait()
        try:
            if i % 2:
                reg.rollback("dep", by=f"t{i}")
            else:
                reg.promote("dep", refs[1 + i % 3], by=f"t{i}")
            outcomes.append("ok")
        except ConflictError as exc:
            assert "changed meanwhile" in str(exc) or "retry" in str(exc)
            outcomes.append("conflict")
        except ConfigError as exc:  # e.g. promoting the model that just became champion
            outcomes.append(f"config: {exc}")
        finally:
            reg.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 16 and "ok" in outcomes
    history = registry.policy_history("dep")
    assert [r.version for r in history] == list(range(1, len(history) + 1))
    for rec in history[1:]:
        if rec.action == "promote":
            assert rec.parent == rec.version - 1, "a promote must follow the version before it"


def test_concurrent_applies_all_succeed(registry: Registry) -> None:
    ref = register_callable(registry, "m", "tests.models:doubler")
    errors: list[BaseException] = []

    def one(i: int) -> None:
        reg = Registry(registry.home)
        try:
            reg.apply_policy("dep", Policy(deadline_ms=100 + i,
                                           models=[ModelSpec(ref, Role.CHAMPION)]))
        except BaseException as exc:
            errors.append(exc)
        finally:
            reg.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [r.version for r in registry.policy_history("dep")] == [1, 2, 3, 4]


# -- low: names, references, settings -------------------------------------------------------


@pytest.mark.parametrize("name", ["x\n", "abc\n", "a\nb"])
def test_names_with_a_trailing_newline_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid"):
        check_name(name)


@pytest.mark.parametrize("ref", ["x@" + "9" * 30, "x@1234567890", "x@²"])
def test_huge_or_odd_versions_are_a_clear_error(ref: str) -> None:
    with pytest.raises(ConfigError):
        ModelRef.parse(ref)


def test_models_show_of_a_huge_version_is_one_line(registry: Registry) -> None:
    with pytest.raises(ConfigError, match="9 digits"):
        registry.get("x@" + "9" * 30)


@pytest.mark.parametrize(("env", "value"), [
    ("RENDEZVOUS_MAX_BODY_BYTES", "-1"), ("RENDEZVOUS_MAX_BODY_BYTES", "0"),
    ("RENDEZVOUS_MAX_ROWS", "0"), ("RENDEZVOUS_BODY_TIMEOUT_S", "-3"),
    ("RENDEZVOUS_HOSTS_NICE", "-1"),
])
def test_limits_below_their_minimum_are_refused(env: str, value: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from rendezvous import config

    setting = next(s for s in vars(config).values()
                   if isinstance(s, config.Setting) and s.env == env)
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=f"{env}={value!r}.*at least"):
        setting.get()
