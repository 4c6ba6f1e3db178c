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
from io_faults import fill_disk, refuse_writes_in

import jaxmatch.io
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


@pytest.mark.parametrize("case", ["under a regular file", "writes refused"])
def test_out_that_cannot_be_written_fails_before_reading(
    data, tmp_path, capsys, monkeypatch, quiet_logging, case
):
    """An --out that cannot be created or written: one error line naming it, exit
    status 1, no input read (no time lost fitting), nothing written."""
    monkeypatch.chdir(data)
    if case == "under a regular file":
        top = tmp_path / "afile"
        top.write_text("a file, not a folder")
        out, reason = top / "out", "Not a directory"
    else:
        top = out = tmp_path / "out"
        out.mkdir()
        reason = "Permission denied"
        refuse_writes_in(monkeypatch, out)

    def must_not_read(*args, **kwargs):
        raise AssertionError("an input was read before --out was checked")

    monkeypatch.setattr(jaxmatch.io, "readExposureWithMetadata", must_not_read)
    assert main(["match", *NAMES, "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"jaxmatch: error: cannot write into --out {out}: {reason}\n"
    assert list(tmp_path.iterdir()) == [top]
    if top.is_file():
        assert top.read_text() == "a file, not a folder"
    else:
        assert list(top.iterdir()) == []


def test_disk_full_midway_keeps_what_was_written(
    data, tmp_path, capsys, monkeypatch, quiet_logging
):
    """ENOSPC while writing the third file: one error line naming it, exit status 1;
    the two files written before are complete, the old third file is kept byte for
    byte, nothing later is written and no temporary file is left."""
    monkeypatch.chdir(data)
    out = tmp_path / "out"
    out.mkdir()
    old = b"an old e1.fits, from an earlier run"
    (out / "e1.fits").write_bytes(old)
    # With --ref e0.fits the writes are e0.fits, e1.model.fits, e1.fits, e2.model.fits, ...
    sizes = fill_disk(monkeypatch, call=3)
    assert main(["match", *NAMES, "--out", str(out), "--ref", "e0.fits", *FAST]) == 1
    err = capsys.readouterr().err
    assert err == f"jaxmatch: error: cannot write {out / 'e1.fits'}: No space left on device\n"
    assert sizes and sizes[0] > 0  # it failed midway through the file
    assert sorted(os.listdir(out)) == ["e0.fits", "e1.fits", "e1.model.fits"]
    assert (out / "e1.fits").read_bytes() == old
    np.testing.assert_array_equal(  # the reference, complete and unchanged
        np.asarray(readExposure(out / "e0.fits").image), np.asarray(readExposure("e0.fits").image)
    )
    assert readModel(out / "e1.model.fits").basis.shape == (64, 64)


def test_rerun_after_a_kill_removes_stale_temps_and_finishes(
    data, tmp_path, capsys, monkeypatch, quiet_logging
):
    """A run killed while writing e2.fits leaves its hidden temporary file; a rerun with
    --skip-existing removes it (and only it), writes e2's outputs as a full run does
    and leaves the complete outputs untouched."""
    monkeypatch.chdir(data)
    out = tmp_path / "out"
    args = ["match", *NAMES, "--out", str(out), "--ref", "e0.fits", *FAST]
    assert main(args) == 0
    full = {name: (out / name).read_bytes() for name in os.listdir(out)}
    assert sorted(full) == ["e0.fits", "e1.fits", "e1.model.fits", "e2.fits", "e2.model.fits"]
    # The state after a kill while e2.fits was written: e2.model.fits complete, e2.fits not.
    stale = out / ".e2.fits.k3_x9abc.tmp"
    stale.write_bytes(full["e2.fits"][:5000])
    (out / "e2.fits").unlink()
    unrelated = {out / "notes.tmp": b"mine", out / ".e3.fits.k3_x9abc.tmp": b"not an output"}
    for path, content in unrelated.items():
        path.write_bytes(content)
    old_ns = 1_000_000_000_000_000_000
    complete = ["e0.fits", "e1.fits", "e1.model.fits"]
    for name in complete:
        os.utime(out / name, ns=(old_ns, old_ns))
    capsys.readouterr()

    assert main([*args, "--skip-existing"]) == 0
    err = capsys.readouterr().err
    assert f"jaxmatch: removed {stale}, left by an interrupted run" in err
    assert "1 exposure(s) written" in err and "2 kept" in err
    assert not stale.exists()
    assert all(path.read_bytes() == content for path, content in unrelated.items())
    for name in complete:
        assert (out / name).stat().st_mtime_ns == old_ns
        assert (out / name).read_bytes() == full[name]
    assert (out / "e2.fits").read_bytes() == full["e2.fits"]  # as the full run wrote it
    assert readModel(out / "e2.model.fits").basis.shape == (64, 64)
    assert sorted(os.listdir(out)) == sorted([*full, *(p.name for p in unrelated)])


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
