"""Tests of the command line: ``jaxmatch match`` / ``demo`` as subprocesses, errors in-process.

Each subprocess imports JAX and compiles (~5-10 s), so there are few of them; the
error paths stop before any fit and run in-process through `jaxmatch.cli.main`.
"""

import csv
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from jaxmatch import Exposure, MatchBackgroundsConfig, simulate_patch
from jaxmatch.cli import _outputs, _parser, main
from jaxmatch.io import (
    applyModel,
    readExposure,
    readExposureWithMetadata,
    readModel,
    readModelConfig,
    writeExposure,
)

FAST = ["--set", "binSize=16", "--set", "interpStyle=NATURAL_SPLINE"]
NAMES = ["e0.fits", "e1.fits", "e2.fits"]


def _jaxmatch(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "jaxmatch", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _wcs():
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [35.0, -4.5]
    wcs.wcs.crpix = [32.5, 32.5]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return wcs


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three 64 x 64 exposures of one patch (with header and WCS), and bad files."""
    folder = tmp_path_factory.mktemp("cli")
    patch = simulate_patch(3, (64, 64), seed=1)
    for i, name in enumerate(NAMES):
        exposure = Exposure(  # float32, as LSST's warps (and what JAX computes in by default)
            patch.images[i].astype(np.float32),
            patch.masks[i],
            patch.variances[i].astype(np.float32),
            mask_planes=patch.mask_planes,
        )
        writeExposure(
            exposure, folder / name, header={"OBJECT": "cli test", "EXPID": i}, wcs=_wcs()
        )
    fits.PrimaryHDU(np.zeros((32, 32), dtype=np.float32)).writeto(folder / "small.fits")
    (folder / "corrupt.fits").write_bytes((folder / "e0.fits").read_bytes()[:5000])
    (folder / "bad.toml").write_text("binSize = = 3\n")
    return folder


# -- the success path ------------------------------------------------------------------------
def test_match_writes_outputs_table_and_skip_existing(data):
    out = data / "out"
    run = _jaxmatch(
        "match", *NAMES, "--out", out, "--table", "t.csv", "--progress", *FAST, cwd=data
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].split() == [
        "exposure",
        "reference",
        "fitRMS",
        "matchedMSE",
        "diffImVar",
    ]
    assert "fitting" in run.stderr  # --progress: bars on stderr even without a terminal
    with open(data / "t.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["exposure"] for r in rows] == NAMES
    assert sum(r["reference"] == "yes" for r in rows) == 1
    ref = next(i for i, r in enumerate(rows) if r["reference"] == "yes")
    for i, (name, row) in enumerate(zip(NAMES, rows)):
        assert name in run.stdout
        image_out, model_out = out / name, out / name.replace(".fits", ".model.fits")
        matched, header, wcs = readExposureWithMetadata(image_out)
        original = readExposure(data / name)
        assert matched.image.dtype == np.float32
        assert header["OBJECT"] == "cli test" and header["EXPID"] == i  # header kept
        assert wcs.to_header() == _wcs().to_header()  # WCS kept
        np.testing.assert_array_equal(np.asarray(matched.mask), np.asarray(original.mask))
        if i == ref:
            assert not model_out.exists()  # the reference has no model: it is unchanged
            np.testing.assert_array_equal(np.asarray(matched.image), np.asarray(original.image))
            np.testing.assert_array_equal(
                np.asarray(matched.variance), np.asarray(original.variance)
            )
        else:
            assert float(row["fitRMS"]) > 0
            model = readModel(model_out)
            expected = np.asarray(applyModel(model, original).image)
            np.testing.assert_allclose(np.asarray(matched.image), expected, atol=1e-3)
            assert readModelConfig(model_out)["binSize"] == 16
            assert MatchBackgroundsConfig.fromDict(readModelConfig(model_out)).interpStyle == (
                "NATURAL_SPLINE"
            )

    # An interrupted run: one output is missing; another is old and must stay as it is.
    missing = next(i for i in range(3) if i != ref)
    kept = next(i for i in range(3) if i not in (ref, missing))
    (out / NAMES[missing]).unlink()
    kept_path = out / NAMES[kept]
    os.utime(kept_path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = kept_path.read_bytes()
    rerun = _jaxmatch(
        "match", *NAMES, "--out", out, "--skip-existing", "--table", "t.json", *FAST, cwd=data
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "fitting" not in rerun.stderr  # no terminal: no progress bars
    assert kept_path.stat().st_mtime_ns == 1_000_000_000_000_000_000
    assert kept_path.read_bytes() == before
    assert (out / NAMES[missing]).exists()
    assert "1 exposure(s) written" in rerun.stderr and "2 kept" in rerun.stderr
    table = json.loads((data / "t.json").read_text())
    assert [r["exposure"] for r in table] == NAMES
    assert [r["reference"] for r in table] == [r["reference"] for r in rows]
    assert table[ref]["fitRMS"] is None and all(
        isinstance(table[i]["fitRMS"], float) for i in range(3) if i != ref
    )


def test_demo_writes_a_png(tmp_path):
    run = _jaxmatch("demo", "--exposures", 3, "--size", 128, "--plot", "fig.png", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "figure written to fig.png" in run.stdout
    png = (tmp_path / "fig.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 600 and height >= 600
    assert len(png) > 30_000  # a real figure, not an empty canvas


def test_help_exits_zero(tmp_path):
    for args in (["--help"], ["match", "--help"]):
        run = _jaxmatch(*args, cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        assert "usage: jaxmatch" in run.stdout
    assert "--skip-existing" in run.stdout


def test_missing_file_exit_status_through_the_process(data, tmp_path):
    run = _jaxmatch("match", data / "e0.fits", "nothere.fits", "--out", tmp_path / "o", cwd=data)
    assert run.returncode == 1
    assert run.stderr.strip() == "jaxmatch: error: no such file: nothere.fits"
    assert not (tmp_path / "o").exists()


# -- errors, in-process (they stop before any fit) -----------------------------------------------
@pytest.fixture
def quiet_logging(monkeypatch):
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: None)  # leave the root logger alone


ERRORS = [
    ("missing file", ["e0.fits", "nothere.fits"], 1, "no such file: nothere.fits"),
    ("corrupt file", ["e0.fits", "corrupt.fits"], 1, "cannot read corrupt.fits as a FITS"),
    ("shape mismatch", ["e0.fits", "small.fits"], 1, "small.fits is 32x32 pixels but e0.fits"),
    (
        "unknown --set key",
        ["e0.fits", "e1.fits", "--set", "binSz=3"],
        2,
        "unknown config field 'binSz' (did you mean 'binSize'?)",
    ),
    ("bad --set value", ["e0.fits", "e1.fits", "--set", "binSize=abc"], 2, "takes an integer"),
    ("bad --set bool", ["e0.fits", "e1.fits", "--set", "usePolynomial=maybe"], 2, "true or false"),
    (
        "invalid config",
        ["e0.fits", "e1.fits", "--set", "binSize=-3"],
        2,
        "binSize must be a positive number of pixels, got -3",
    ),
    (
        "invalid choice",
        ["e0.fits", "e1.fits", "--set", "interpStyle=CUBIC"],
        2,
        "interpStyle must be one of",
    ),
    ("--ref not in files", ["e0.fits", "e1.fits", "--ref", "e2.fits"], 2, "not one of the input"),
    ("bad --config", ["e0.fits", "e1.fits", "--config", "bad.toml"], 2, "--config bad.toml"),
    ("missing --config", ["e0.fits", "e1.fits", "--config", "no.toml"], 2, "no.toml: no such"),
    ("bad --table", ["e0.fits", "e1.fits", "--table", "t.txt"], 2, "use a .csv or .json"),
    ("listed twice", ["e0.fits", "e1.fits", "./e0.fits"], 2, "listed twice"),
]


@pytest.mark.parametrize("case, args, status, message", ERRORS, ids=[e[0] for e in ERRORS])
def test_match_errors(
    data, tmp_path, capsys, monkeypatch, quiet_logging, case, args, status, message
):
    monkeypatch.chdir(data)
    out = tmp_path / "out"
    assert main(["match", *args, "--out", str(out)]) == status
    captured = capsys.readouterr()
    assert captured.err.startswith("jaxmatch: error: ")
    assert captured.err.count("\n") == 1, captured.err  # one line
    assert message in captured.err
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_out_must_not_overwrite_inputs(data, capsys, monkeypatch, quiet_logging):
    monkeypatch.chdir(data)
    assert main(["match", "e0.fits", "e1.fits", "--out", "."]) == 2
    assert "would overwrite an input" in capsys.readouterr().err


def test_colliding_output_names(data, tmp_path, capsys, quiet_logging):
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "e0.fits").write_bytes((data / "e0.fits").read_bytes())
    args = ["match", str(data / "e0.fits"), str(other / "e0.fits"), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert "would both be written to" in capsys.readouterr().err


def test_set_values_follow_the_field_types():
    from jaxmatch.cli import _config

    args = _parser().parse_args(
        [
            "match", "a.fits", "--out", "o",
            "--set", "binSize=32",
            "--set", "usePolynomial=true",
            "--set", "numSigmaClip=2.5",
            "--set", "badMaskPlanes=BAD,SAT",
            "--set", "orderY=none",
            "--set", "clipSharpness=4",
            "--set", "dtype=float32",
            "--set", "order=2",
        ]
    )  # fmt: skip
    config = _config(args)
    assert config.binSize == 32 and config.usePolynomial is True
    assert config.numSigmaClip == 2.5 and config.badMaskPlanes == ("BAD", "SAT")
    assert config.orderY is None and config.clipSharpness == 4.0 and config.dtype == "float32"


def test_output_names(tmp_path):
    for name, stem in [
        ("a.fits", "a"),
        ("b.fits.gz", "b"),
        ("c.fit", "c"),
        ("d.FITS", "d"),
        ("e.v2.fits", "e.v2"),
        ("raw", "raw"),
    ]:
        image, model = _outputs(tmp_path, tmp_path / "in" / name)
        assert (image.name, model.name) == (f"{stem}.fits", f"{stem}.model.fits")
        assert image.parent == tmp_path
