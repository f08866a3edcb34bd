"""Training rows from a file (CSV or Parquet), as columns: what ``--example`` reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rendezvous.errors import ConfigError


def read_table(path: Path | str, *, max_rows: int = 100_000) -> dict[str, np.ndarray]:
    """Columns of a CSV or Parquet file (the first ``max_rows`` rows)."""
    import pyarrow as pa

    path = Path(path)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        elif path.suffix.lower() in (".csv", ".txt"):
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
        else:
            raise ConfigError(f"example file {path}: use a .csv or .parquet file")
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigError(f"cannot read example file {path}: {exc}") from None
    table = table.slice(0, max_rows)
    if table.num_rows == 0:
        raise ConfigError(f"example file {path} has no rows")
    return {name: table.column(name).to_numpy(zero_copy_only=False)
            for name in table.column_names}
