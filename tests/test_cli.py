"""The CLI as users call it: exit codes, messages that name the problem, offline policy edits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rendezvous.cli import main


def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, home: Path,
        *args: str) -> tuple[int, str]:
    monkeypatch.setattr("sys.argv", ["rendezvous", *args, "--home", str(home)])
    monkeypatch.setenv("COLUMNS", "200")
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def skops_file(tmp_path: Path) -> Path:
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3))
    path = tmp_path / "m.skops"
    sio.dump(LogisticRegression().fit(x, (x[:, 0] > 0).astype(int)), path)
    return path


def test_register_list_show_alias(capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch, home: Path,
                                  skops_file: Path) -> None:
    code, out = run(capsys, monkeypatch, home, "models", "register", "clf", str(skops_file))
    assert code == 0 and "registered clf@1 (sklearn" in out
    code, out = run(capsys, monkeypatch, home, "models", "alias", "clf", "live", "1")
    assert code == 0 and "clf@live: None -> 1" in out
    code, out = run(capsys, monkeypatch, home, "models", "list")
    assert code == 0 and "clf@1" in out and "live" in out
    code, out = run(capsys, monkeypatch, home, "models", "show", "clf@live")
    assert code == 0
    doc = json.loads(out)
    assert doc["version"] == 1 and doc["inputs"] == "f0:FP64, f1:FP64, f2:FP64"


def test_errors_name_the_problem_and_exit_1(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch, home: Path,
                                            tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\n[[models]]\nmodel = 'a@1'\nrole = 'boss'\n")
    code, out = run(capsys, monkeypatch, home, "deploy", "apply", str(bad))
    assert code == 1 and "bad.toml" in out and "boss" in out
    bad.write_text("name = \n")
    code, out = run(capsys, monkeypatch, home, "deploy", "apply", str(bad))
    assert code == 1 and "not valid TOML" in out
    code, out = run(capsys, monkeypatch, home, "deploy", "apply", str(tmp_path / "nope.toml"))
    assert code == 1 and "does not exist" in out
    bad.write_text("name = 'x'\n[[models]]\nmodel = 'ghost@1'\nrole = 'champion'\n")
    code, out = run(capsys, monkeypatch, home, "deploy", "apply", str(bad))
    assert code == 1 and "unknown model version 'ghost@1'" in out
    code, out = run(capsys, monkeypatch, home, "status", "nope")
    assert code == 1 and "unknown deployment 'nope'" in out
    code, out = run(capsys, monkeypatch, home, "models", "register", "../evil", "x.skops")
    assert code == 1 and "invalid model name" in out
    code, out = run(capsys, monkeypatch, home, "archive", "export", "nope", "--out",
                    str(tmp_path / "o.parquet"))
    assert code == 1 and "nothing archived" in out


def test_offline_promote_rollback_and_status(capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch, home: Path,
                                             skops_file: Path) -> None:
    for _ in range(2):
        run(capsys, monkeypatch, home, "models", "register", "clf", str(skops_file))
    code, out = run(capsys, monkeypatch, home, "deploy", "create", "dep", "--champion", "clf@1",
                    "--challenger", "clf@2", "--deadline-ms", "50")
    assert code == 0 and "policy version 1" in out
    code, out = run(capsys, monkeypatch, home, "promote", "dep", "clf@2")
    assert code == 1 and "refused by" in out and "requests" in out and "--force" in out
    code, out = run(capsys, monkeypatch, home, "promote", "dep", "clf@2", "--force")
    assert code == 0 and "clf@2 is champion (policy version 2), forced" in out
    code, out = run(capsys, monkeypatch, home, "rollback", "dep")
    assert code == 0 and "policy version 3" in out
    code, out = run(capsys, monkeypatch, home, "deploy", "history", "dep")
    assert code == 0 and all(a in out for a in ("apply", "promote", "rollback"))
    code, out = run(capsys, monkeypatch, home, "status", "dep", "--json")
    assert code == 0
    stats = json.loads(out)
    assert stats["requests"] == 0 and stats["policy_version"] == 3
    assert stats["roles"] == {"clf@1": "champion", "clf@2": "challenger"}
