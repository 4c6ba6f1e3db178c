"""The survey table: one row per exposure, its patch and the patch's outcome."""

from __future__ import annotations

import csv
import io as _io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from ._records import PATCH_COLUMNS, PatchResult


def survey_table(results: Sequence[PatchResult]):
    """The survey table (astropy `Table`) of patch results: see `run_survey`."""
    from astropy.table import MaskedColumn, Table

    match_keys: list[str] = []
    for r in results:
        for row in r.rows:
            match_keys += [k for k in row if k not in match_keys]
    records = []
    for r in results:
        patch = dict(
            patch_status="ok" if r.exit_code == 0 else "failed",
            patch_exit=r.exit_code,
            patch_message=r.message,
            patch_seconds=r.seconds,
            patch_compiles=r.compiles,
            worker=r.worker,
        )
        for row in r.rows or ({},):
            records.append({"patch": r.name, **{k: row.get(k) for k in match_keys}, **patch})
    keys = ["patch", *match_keys, *PATCH_COLUMNS]
    survey = Table()
    for key in keys:
        values = [rec[key] for rec in records]
        missing = [v is None for v in values]
        numbers = all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None
        )
        flags = all(isinstance(v, bool) for v in values if v is not None)
        if flags and not all(missing):  # e.g. the match table's ``reference``
            data = [False if v is None else v for v in values]
        elif numbers and any(isinstance(v, float) for v in values):
            data = [math.nan if v is None else float(v) for v in values]
        elif numbers and not all(missing):
            data = [0 if v is None else int(v) for v in values]
        else:
            data = ["" if v is None else str(v) for v in values]
        survey[key] = MaskedColumn(data, mask=missing) if any(missing) else data
    return survey


def write_table(survey, path: str | os.PathLike) -> None:
    """Write the survey table atomically as CSV (undefined: empty) or JSON (null)."""
    import numpy as np

    from ..io import atomic_write

    columns = [
        [None if m else _plain(v) for v, m in zip(np.ma.getdata(c), np.ma.getmaskarray(c))]
        for c in survey.itercols()
    ]
    rows = [dict(zip(survey.colnames, values)) for values in zip(*columns)]
    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps(rows, indent=2)
    else:
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=survey.colnames)
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    atomic_write(path, lambda f: f.write(text.encode()))


def _plain(value):
    """A NumPy scalar as a Python one; NaN as None (the match table's convention)."""
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
