"""`rendezvous models …` and `rendezvous registry …` as users call them, on both backends."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from rendezvous.registry import migrate
from tests.registry_db import registry_url  # noqa: F401  (both backends)
from tests.test_cli import run


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    sio.dump(model, tmp_path / "m.skops")
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(model))
    (tmp_path / "train.csv").write_text("a,b,c\n" + "\n".join(
        ",".join(str(v) for v in row) for row in x[:20]))
    return {"skops": tmp_path / "m.skops", "pkl": tmp_path / "m.pkl",
            "csv": tmp_path / "train.csv"}


Cli = tuple[pytest.CaptureFixture[str], pytest.MonkeyPatch, Path]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, home: Path,
        registry_url: str) -> Cli:
    monkeypatch.setenv("RENDEZVOUS_REGISTRY", registry_url)  # every command reads it
    return capsys, monkeypatch, home


def test_register_tag_search_show_card(cli: Cli, files: dict[str, Path],
                                       tmp_path: Path) -> None:
    code, out = run(*cli, "models", "register", "churn", str(files["skops"]), "--example",
                    str(files["csv"]), "--param", "C=1.0", "--metric", "auc=0.9", "--tag",
                    "team=risk", "--run", "mlflow:runs/abc", "--description", "first")
    assert code == 0 and "registered churn@1 (sklearn" in out, out
    code, out = run(*cli, "models", "register", "churn", str(files["skops"]), "--parent",
                    "churn@1")
    assert code == 0, out
    assert run(*cli, "models", "tag", "churn", "intended_use=Churn scoring")[0] == 0
    code, out = run(*cli, "models", "tag", "churn@2", "stage=staging", "team=growth")
    assert out.strip() == "churn@2: stage=staging, team=growth"
    code, out = run(*cli, "models", "list", "--tag", "team=risk")
    assert "churn@1" in out and "churn@2" not in out
    code, out = run(*cli, "models", "list", "--name", "ch*", "--flavor", "sklearn",
                    "--since", "2000-01-01")
    assert "churn@1" in out and "churn@2" in out
    assert "no model versions match" in run(*cli, "models", "list", "--name", "x*")[1]
    assert "churn@2: team=growth" in run(*cli, "models", "tag", "churn@2", "--delete",
                                         "stage")[1]
    assert run(*cli, "models", "describe", "churn@2", "retrained")[0] == 0

    code, out = run(*cli, "models", "show", "churn@2")
    doc = json.loads(out)
    assert doc["description"] == "retrained" and doc["lineage"]["parent"] == "churn@1"
    assert doc["tags"] == {"intended_use": "Churn scoring", "team": "growth"}
    assert "scikit-learn" in doc["lineage"]["environment"]["libraries"]
    first = json.loads(run(*cli, "models", "show", "churn@1")[1])
    assert first["lineage"]["params"]["C"] == "1.0" and first["lineage"]["metrics"] == {
        "auc": 0.9}
    assert first["lineage"]["run"] == "mlflow:runs/abc"
    assert [c.split(":")[0] for c in first["inputs"].split(", ")] == ["a", "b", "c"]

    code, out = run(*cli, "models", "card", "churn@1")
    assert "# Model card: churn@1" in out and "Churn scoring" in out and "| auc | 0.9 |" in out
    code, out = run(*cli, "models", "card", "churn@1", "--out", str(tmp_path / "card.html"))
    page = (tmp_path / "card.html").read_text()
    assert code == 0 and page.startswith("<!doctype html>") and "<td>auc</td>" in page


def test_trust_is_recorded_and_shown(cli: Cli, tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    from tests.test_registry_safety import _with_attribute, sio_tuple_of_ints

    x = np.random.default_rng(0).normal(size=(30, 2))
    data = sio.dumps(LogisticRegression().fit(x, (x[:, 0] > 0).astype(int)))
    path = tmp_path / "dated.skops"
    path.write_bytes(_with_attribute(data, "day", {
        "__class__": "date", "__module__": "datetime",
        "__loader__": "ConstructorFromReduceNode", "content": sio_tuple_of_ints(2024, 5, 6)}))
    code, out = run(*cli, "models", "register", "d", str(path))
    assert code == 1 and "--trust datetime.date" in out
    code, out = run(*cli, "models", "register", "d", str(path), "--trust", "datetime.date")
    assert code == 0, out
    assert json.loads(run(*cli, "models", "show", "d@1")[1])["trusted_types"] == [
        "datetime.date"]


def test_pickle_is_one_line_naming_the_setting(cli: Cli, files: dict[str, Path]) -> None:
    code, out = run(*cli, "models", "register", "p", str(files["pkl"]))
    assert code == 1 and "RENDEZVOUS_ALLOW_PICKLE=1" in out and "Traceback" not in out
    assert "BadZipFile" not in out


def test_registry_status_and_upgrade(cli: Cli) -> None:
    code, out = run(*cli, "registry", "upgrade")
    head = migrate.head()
    assert code == 0 and (f"-> {head}" in out or f"already at {head}" in out), out
    code, out = run(*cli, "registry", "status")
    assert "(up to date)" in out


@pytest.mark.filterwarnings("ignore::UserWarning:mlflow.*")  # MLflow's advice on import
def test_import_mlflow_from_the_cli(cli: Cli, tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    import lightgbm as lgb

    x = np.random.default_rng(0).normal(size=(50, 2))
    booster = lgb.train({"objective": "regression", "verbose": -1},
                        lgb.Dataset(x, x[:, 0]), num_boost_round=3)
    mlflow.lightgbm.save_model(booster, tmp_path / "lgb-model", pip_requirements=[])
    code, out = run(*cli, "models", "import", "mlflow", str(tmp_path / "lgb-model"), "--name",
                    "reg")
    assert code == 0 and "registered reg@1 (lightgbm" in out, out
