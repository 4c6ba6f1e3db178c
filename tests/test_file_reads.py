"""How often ``jaxmatch match`` reads each input file.

Each read of an input is counted: ``astropy.io.fits.open`` of its path and
``Path.read_bytes`` (the two ways jaxmatch reads a file; opening bytes already in
memory is not a read). A run of at most ``--chunk-size`` files reads each input's
headers for the output plan (made before any pixel is read) and then the file
once: the checksum, the fit and the outputs all come from those bytes. Larger
runs read a file again to fit it and to write it, so that memory holds one chunk
(docs/reliability.md gives the measured cost of a read).
"""

import logging
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from jaxmatch import Exposure, simulate_patch
from jaxmatch.cli import main
from jaxmatch.io import writeExposure

FAST = ["--set", "binSize=16", "--set", "interpStyle=NATURAL_SPLINE", "--no-progress"]


@pytest.fixture(autouse=True)
def quiet_logging(monkeypatch):
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: None)  # leave the root logger alone


def _files(folder: Path, count: int, gzip_last: bool = False) -> list[Path]:
    patch = simulate_patch(count, (64, 64), seed=3)
    paths = []
    for i in range(count):
        exposure = Exposure(
            patch.images[i].astype(np.float32),
            patch.masks[i],
            patch.variances[i].astype(np.float32),
            mask_planes=patch.mask_planes,
        )
        path = folder / f"visit {i}.fits"
        writeExposure(exposure, path, header={"EXPID": i})
        if gzip_last and i == count - 1:  # a compressed input too (read from memory)
            gz = folder / f"visit {i}.fits.gz"
            with fits.open(path) as hdus:
                hdus.writeto(gz)
            path.unlink()
            path = gz
        paths.append(path)
    return paths


def _count_reads(monkeypatch, inputs: list[Path]) -> dict[Path, list[str]]:
    """The reads of each input file from now on: ``fits.open`` of its path
    (``"fits"``; opening bytes already in memory is not a read) and
    ``Path.read_bytes`` (``"bytes"``)."""
    reads: dict[Path, list[str]] = {p.resolve(): [] for p in inputs}
    real_open, real_read_bytes = fits.open, Path.read_bytes

    def note(file, kind):
        if isinstance(file, (str, Path)) and Path(file).resolve() in reads:
            reads[Path(file).resolve()].append(kind)

    def counting_open(name, *args, **kwargs):
        note(name, "fits")
        return real_open(name, *args, **kwargs)

    def counting_read_bytes(self):
        note(self, "bytes")
        return real_read_bytes(self)

    monkeypatch.setattr(fits, "open", counting_open)
    monkeypatch.setattr(Path, "read_bytes", counting_read_bytes)
    return reads


def test_a_four_file_run_reads_each_input_once(tmp_path, monkeypatch, capsys):
    inputs = _files(tmp_path, 4, gzip_last=True)
    reads = _count_reads(monkeypatch, inputs)
    out = tmp_path / "out"
    args = ["match", *map(str, inputs), "--out", str(out), "--model-image", *FAST]
    assert main(args) == 0
    monkeypatch.undo()
    # the plan reads the headers, then one read gives checksum, fit and outputs
    assert list(reads.values()) == [["fits", "bytes"]] * 4, reads
    outputs = sorted(p.name for p in out.iterdir())
    assert len(outputs) == 4 + 3 + 4  # matched files, model files (not the reference), images
    with fits.open(out / "visit 3.fits.gz") as hdus:  # written from the bytes in memory
        assert hdus[0].header["EXPID"] == 3
        assert hdus["IMAGE"].header["JMROLE"] in ("MATCHED", "REFERENCE")


def test_a_chunked_run_reads_each_input_three_times(tmp_path, monkeypatch, capsys):
    inputs = _files(tmp_path, 5)
    reads = _count_reads(monkeypatch, inputs)
    out = tmp_path / "out"
    args = ["match", *map(str, inputs), "--out", str(out), "--chunk-size", "2", *FAST]
    assert main(args) == 0
    monkeypatch.undo()
    # headers; read for the checksum and reference statistics; read to fit (the
    # reference: to be the reference); read to write: memory holds one chunk only
    assert list(reads.values()) == [["fits", "bytes", "fits", "bytes"]] * 5, reads
