"""Artifacts on S3 (a real local S3 server, moto's server mode: the ``s3`` fixture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from rendezvous import Registry
from rendezvous.errors import ArtifactIntegrityError
from tests.registry_db import registry_url  # noqa: F401  (both backends)

pytest.importorskip("s3fs")


def test_artifacts_on_s3_verified_on_every_load(home: Path, registry_url: str,
                                                s3: str) -> None:
    import fsspec

    x = np.random.default_rng(0).normal(size=(40, 3))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    with Registry(home, url=registry_url, artifacts=s3) as reg:
        mv = reg.register("clf", model, example=x)
        assert mv.artifact_uri == s3
    assert not (home / "artifacts").exists()  # nothing local
    # Another process, no artifact setting: the version says where its bytes are.
    with Registry(home, url=registry_url) as reg:
        out = reg.load("clf@1").predict({f"f{i}": x[:4, i] for i in range(3)}, 4)
        np.testing.assert_array_equal(out["predictions"], model.predict(x[:4]))
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        key = f"models/rendezvous/sha256/{mv.digest[:2]}/{mv.digest}"
        fs.pipe_file(key, fs.cat_file(key) + b"tampered")
        fs.invalidate_cache()
        with pytest.raises(ArtifactIntegrityError, match="corrupt"):
            reg.load("clf@1")
