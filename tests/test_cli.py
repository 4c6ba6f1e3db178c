"""Tests of the command line: ``jaxmatch match`` / ``demo``.

Most run in-process through `jaxmatch.cli.main` (as a survey runner calls it), on
64 x 64 exposures and one config, so the engine compiles once per test session; one
test runs the console entry point as a subprocess.
"""

import gzip
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from io_faults import fill_disk, refuse_writes_in

import jaxmatch._filematch as filematch
from jaxmatch import Exposure, simulate_patch
from jaxmatch._task import MatchBackgroundsTask
from jaxmatch.cli import _outputs, _parser, main
from jaxmatch.io import readModel, readModelConfig, writeExposure

FAST = ["--set", "binSize=16", "--set", "interpStyle=NATURAL_SPLINE", "--no-progress"]
NAMES = ["e0.fits", "e1.fits", "e2.fits"]
N = 10


@pytest.fixture(scope="module")
def patch():
    return simulate_patch(N, (64, 64), seed=1)


@pytest.fixture(autouse=True)
def quiet_logging(monkeypatch):
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: None)  # leave the root logger alone


def _exposure(patch, i):
    return Exposure(
        patch.images[i].astype(np.float32),
        patch.masks[i],
        patch.variances[i].astype(np.float32),
        mask_planes=patch.mask_planes,
    )


def _wcs():
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [35.0, -4.5]
    wcs.wcs.crpix = [32.5, 32.5]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return wcs


def _lsst_files(patch, folder, names=NAMES):
    for i, name in enumerate(names):
        writeExposure(
            _exposure(patch, i), folder / name, header={"OBJECT": "cli", "EXPID": i}, wcs=_wcs()
        )


# A plain image header as old instruments write it: SIP distortion, an alternate WCS,
# the usual non-WCS cards and cards astropy reads but will not write as they are.
SIP_HEADER = """\
CTYPE1  = 'RA---TAN-SIP'
CTYPE2  = 'DEC--TAN-SIP'
CRVAL1  = 35.0
CRVAL2  = -4.5
CRPIX1  = 32.5
CRPIX2  = 32.5
CD1_1   = -5.5E-05
CD1_2   = 0.0
CD2_1   = 0.0
CD2_2   = 5.5E-05
A_ORDER = 2
A_0_2   = 2.0E-05
A_2_0   = 1.5E-05
B_ORDER = 2
B_0_2   = -1.0E-05
B_1_1   = 3.0E-05
CTYPE1A = 'LINEAR'
CTYPE2A = 'LINEAR'
CRPIX1A = 1.0
CRPIX2A = 1.0
CRVAL1A = 100.0
CRVAL2A = 200.0
BUNIT   = 'adu'
GAIN    = 1.7
SATURATE= 60000.0
MJD-OBS = 59000.25
LTV1    = -100.0
LTV2    = -200.0
"""
ODD_CARDS = ["date-obs= 2020-01-01T00:00:00", "RDNOISE = NaN", "DATE    = 2020-01-01"]


def _plain_file(path, data, extra=SIP_HEADER, odd=ODD_CARDS):
    """A plain FITS file written card by card, as an old pipeline would."""
    data = np.asarray(data, dtype=">f4")
    cards = ["SIMPLE  =                    T", "BITPIX  =                  -32", "NAXIS   = 2"]
    cards += [f"NAXIS1  = {data.shape[1]}", f"NAXIS2  = {data.shape[0]}"]
    cards += extra.splitlines() + list(odd) + ["END"]
    header = "".join(c.ljust(80) for c in cards).encode()
    header += b" " * (-len(header) % 2880)
    body = data.tobytes()
    path.write_bytes(header + body + b"\0" * (-len(body) % 2880))


def _err_lines(captured):
    return [line for line in captured.err.splitlines() if line]


# -- the success path and the cards -----------------------------------------------------------
def test_lsst_files_outputs_cards_model_image_and_tables(patch, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _lsst_files(patch, tmp_path)
    args = ["match", *NAMES, "--out", "out", "--table", "t.ecsv", "--model-image", *FAST]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].split() == [
        "exposure", "status", "fitRMS", "matchedMSE", "diffImVar", "model",
    ]  # fmt: skip
    assert "model: spline NATURAL_SPLINE (config: binSize=16 interpStyle=NATURAL_SPLINE)" in (
        captured.err
    )
    table = Table.read("t.ecsv")
    assert list(table["file"]) == NAMES and str(table["fitRMS"].unit) == "adu"
    assert str(table["diffImVar"].unit) == "adu2"
    assert table.meta["config"]["binSize"] == 16
    ref = [i for i, s in enumerate(table["status"]) if s == "reference"]
    assert len(ref) == 1 and sorted(table["status"]) == ["matched", "matched", "reference"]
    for i, name in enumerate(NAMES):
        out = tmp_path / "out"
        with fits.open(name) as a, fits.open(out / name) as b:
            assert [h.name for h in a] == [h.name for h in b]  # layout kept
            for ha, hb in zip(a, b):
                for card in ha.header.cards:  # every input card kept
                    if card.keyword not in (
                        "CHECKSUM",
                        "DATASUM",
                        "BITPIX",
                        "",
                        "COMMENT",
                        "HISTORY",
                    ):
                        assert hb.header[card.keyword] == card.value, card.keyword
            np.testing.assert_array_equal(a["MASK"].data, b["MASK"].data)
            assert b[0].header["JMINPUT"] == name and b[0].header["JMINSUM"]
            image = b["IMAGE"].header
            if i == ref[0]:
                assert image["JMROLE"] == "REFERENCE"
                assert not (out / name.replace(".fits", ".model.fits")).exists()
                np.testing.assert_array_equal(a["IMAGE"].data, b["IMAGE"].data)
            else:
                assert image["JMROLE"] == "MATCHED" and image["JMSTYLE"] == "NATURAL_SPLINE"
                assert image["JMFITRMS"] == pytest.approx(float(table["fitRMS"][i]))
                model_file = out / name.replace(".fits", ".model.fits")
                model = np.asarray(readModel(model_file).getImage())
                assert readModelConfig(model_file)["binSize"] == 16
                np.testing.assert_allclose(
                    b["IMAGE"].data, a["IMAGE"].data + model, rtol=1e-6, atol=1e-3
                )
                with fits.open(out / name.replace(".fits", ".bkg.fits")) as bkg:
                    assert [h.name for h in bkg] == ["PRIMARY", "IMAGE"]  # no mask/variance
                    np.testing.assert_allclose(bkg["IMAGE"].data, model, rtol=1e-6, atol=1e-4)
                    assert bkg["IMAGE"].header["CTYPE1"] == "RA---TAN"  # opens in ds9 with WCS


@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")  # MJD-OBS vs DATE-OBS
def test_plain_file_keeps_sip_alternate_wcs_and_every_card(patch, tmp_path, capsys):
    """Plain in, plain out: the image in the primary HDU, every card of the input
    (SIP, alternate WCS, BUNIT, GAIN, SATURATE, MJD-OBS, LTV), the cards astropy will
    not write repaired (said once), jaxmatch's own cards ASCII for a name with an
    accent and spaces."""
    names = ["visite é 1.fits", "visite é 2.fits", "visite é 3.fits"]
    for i, name in enumerate(names):
        _plain_file(tmp_path / name, patch.images[i])
    out = tmp_path / "sortie"
    files = [str(tmp_path / n) for n in names]
    assert main(["match", *files, "--out", str(out), *FAST, "--progress"]) == 0
    err = capsys.readouterr().err
    assert err.count("repaired header cards") == 1 and "3 file(s)" in err
    assert "fitting (compiling)" in err  # the bar says why it waits
    source = fits.getheader(tmp_path / names[0])
    for name in names:
        with fits.open(out / name) as hdus:
            assert len(hdus) == 1 and hdus[0].data.shape == (64, 64)
            header = hdus[0].header
            for card in source.cards:
                if card.keyword in ("DATE-OBS", "DATE", "RDNOISE"):
                    assert card.keyword in header  # repaired, kept
                elif card.keyword != "BITPIX":
                    assert header[card.keyword] == card.value, card.keyword
            assert WCS(header).sip is not None and header["CTYPE1"] == "RA---TAN-SIP"
            assert header["JMINPUT"] == name.replace("é", "%C3%A9")
            assert all(str(c).isascii() for c in header.cards)


def test_mef_with_several_ccds_and_a_table_first_matches_each(patch, tmp_path, capsys):
    """CCD1 and CCD2 of each file are matched to CCD1 and CCD2 of the reference; the
    BINTABLE in front of them is copied; each CCD gets its model file."""
    names = ["m0.fits", "m1.fits", "m2.fits"]
    for i, name in enumerate(names):
        table = fits.BinTableHDU.from_columns(
            [fits.Column(name="x", format="E", array=np.arange(3.0))], name="CAT"
        )
        ccd1 = fits.ImageHDU(patch.images[i].astype(">f4"), name="CCD1")
        ccd2 = fits.ImageHDU(patch.images[i + 3][:, ::-1].astype(">f4"), name="CCD2")
        ccd2.header["CDELT1"], ccd2.header["CTYPE1"] = 0.0, "RA---TAN"  # a lab frame
        fits.HDUList([fits.PrimaryHDU(), table, ccd1, ccd2]).writeto(tmp_path / name)
    out = tmp_path / "out"
    assert main(["match", *(str(tmp_path / n) for n in names), "--out", str(out), *FAST]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == 6 and sum("[CCD2]" in r for r in rows) == 3
    for i, name in enumerate(names):
        with fits.open(out / name) as hdus:
            assert [h.name for h in hdus] == ["PRIMARY", "CAT", "CCD1", "CCD2"]
            np.testing.assert_array_equal(hdus["CAT"].data["x"], np.arange(3.0))
            for key in ("CCD1", "CCD2"):
                role = hdus[key].header["JMROLE"]
                model_file = out / f"m{i}.{key}.model.fits"
                assert model_file.exists() == (role == "MATCHED")


def test_compressed_inputs_come_back_compressed(patch, tmp_path, capsys):
    """.fz (tile-compressed) in → same algorithm and tiles out; .gz in → .gz out; an
    uncompressed original lying in --out is not touched (its own name)."""
    for i in range(3):
        hdu = fits.CompImageHDU(
            patch.images[i].astype(np.float32), compression_type="GZIP_2", tile_shape=(16, 64)
        )
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp_path / f"c{i}.fits.fz")
        fits.PrimaryHDU(patch.images[i].astype(np.float32)).writeto(tmp_path / f"g{i}.fits")
        with open(tmp_path / f"g{i}.fits", "rb") as f:
            (tmp_path / f"g{i}.fits.gz").write_bytes(gzip.compress(f.read()))
    fz = [str(tmp_path / f"c{i}.fits.fz") for i in range(3)]
    assert main(["match", *fz, "--out", str(tmp_path / "o1"), "--model-image", *FAST]) == 0
    for i in range(3):
        with fits.open(tmp_path / "o1" / f"c{i}.fits.fz") as hdus:
            assert isinstance(hdus[1], fits.CompImageHDU)
            assert hdus[1].compression_type == "GZIP_2"
            assert hdus[1]._get_bintable_without_data().header["ZTILE2"] == 16
        assert (tmp_path / "o1" / f"c{i}.bkg.fits.fz").exists()
    originals = {i: (tmp_path / f"g{i}.fits").read_bytes() for i in range(3)}
    gz = [str(tmp_path / f"g{i}.fits.gz") for i in range(3)]
    assert main(["match", *gz, "--out", str(tmp_path), *FAST]) == 2  # would overwrite inputs
    assert "would overwrite the input" in capsys.readouterr().err
    assert main(["match", *gz, "--out", str(tmp_path / "o2"), *FAST]) == 0
    for i in range(3):
        assert (tmp_path / f"g{i}.fits").read_bytes() == originals[i]
        assert (tmp_path / "o2" / f"g{i}.fits.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzip
        assert fits.getdata(tmp_path / "o2" / f"g{i}.fits.gz").shape == (64, 64)


# -- plain images: source detection -------------------------------------------------------------
def _model_error(out, names, patch):
    """RMS [ADU] over the exposures of (fitted model − true background difference)."""
    ref = next(
        i for i, n in enumerate(names) if fits.getheader(out / n).get("JMROLE") == "REFERENCE"
    )
    errors = []
    for i, name in enumerate(names):
        if i == ref:
            continue
        truth = patch.backgrounds[ref] - patch.backgrounds[i]
        model = np.asarray(readModel(out / name.replace(".fits", ".model.fits")).getImage())
        errors.append(np.sqrt(np.mean((model - truth) ** 2)))
    return float(np.mean(errors))


def test_plain_images_detect_sources_and_the_model_gets_closer_to_the_truth(
    patch, tmp_path, capsys
):
    """Plain images have no mask planes: with the MEAN statistic the sources pull the
    bins. Detecting them (the default for plain images) brings the model error against
    the simulated truth down; --no-detect warns and recommends MEANCLIP."""
    names = [f"p{i}.fits" for i in range(4)]
    for i, name in enumerate(names):
        fits.PrimaryHDU(patch.images[i].astype(">f4")).writeto(tmp_path / name)
    files = [str(tmp_path / n) for n in names]
    common = ["--ref", files[0], "--set", "binSize=16", "--no-progress"]
    assert main(["match", *files, "--out", str(tmp_path / "raw"), "--no-detect", *common]) == 0
    err = capsys.readouterr().err
    assert "gridStatistic=MEANCLIP" in err and "sources are not masked" in err
    assert main(["match", *files, "--out", str(tmp_path / "det"), *common]) == 0
    assert "sources are not masked" not in capsys.readouterr().err
    before = _model_error(tmp_path / "raw", names, patch)
    after = _model_error(tmp_path / "det", names, patch)
    print(f"plain images, MEAN: model error {before:.3f} ADU without detection, {after:.3f} with")
    assert after < 0.7 * before


# -- the plan: refused before anything is read ---------------------------------------------------
def _must_not_read(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a file was read before the plan was checked")

    monkeypatch.setattr(filematch, "read_bytes", fail)  # the first read of a file


def test_outputs_that_collide_are_refused_naming_both(patch, tmp_path, capsys, monkeypatch):
    _lsst_files(patch, tmp_path, ["x.fits", "x.model.fits", "y.fits"])
    _must_not_read(monkeypatch)
    files = [str(tmp_path / n) for n in ["x.fits", "x.model.fits", "y.fits"]]
    assert main(["match", *files, "--out", str(tmp_path / "o"), *FAST]) == 2
    (line,) = _err_lines(capsys.readouterr())
    assert "x.fits's model and" in line and "x.model.fits's matched image" in line
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_existing_files_that_are_not_our_outputs_are_refused(patch, tmp_path, capsys, monkeypatch):
    _lsst_files(patch, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "e1.fits").write_bytes(b"somebody's notes")
    files = [str(tmp_path / n) for n in NAMES]
    _must_not_read(monkeypatch)
    assert main(["match", *files, "--out", str(out), *FAST]) == 2
    (line,) = _err_lines(capsys.readouterr())
    assert f"{out / 'e1.fits'} exists and is not a jaxmatch output of {files[1]}" in line
    assert (out / "e1.fits").read_bytes() == b"somebody's notes"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--table", "nodir/t.csv"], "the folder nodir does not exist"),
        (["--table", "t.txt"], "use a .ecsv, .csv, .fits or .json"),
        (["--table", "e0.fits"], "would overwrite the input"),
        (["--ref", "other.fits"], "not one of the input"),
        (["--set", "binSz=3"], "unknown config field 'binSz' (did you mean 'binSize'?)"),
        (["--set", "binSize=abc"], "takes an integer"),
        (["--set", "binSize=-3"], "binSize must be a positive number of pixels, got -3"),
        (["--chunk-size", "0"], "--chunk-size must be at least 1"),
        (["--gain", "-1"], "gain must be a finite number > 0"),
        (["--config", "no.toml"], "no.toml: no such"),
        (["./e0.fits"], "listed twice"),
    ],
)
def test_bad_options_stop_before_any_work(patch, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    _lsst_files(patch, tmp_path)
    _must_not_read(monkeypatch)
    files, options = ([], extra) if extra[0].startswith("--") else (extra, [])
    assert main(["match", *NAMES, *files, "--out", "out", *FAST, *options]) == 2
    (line,) = _err_lines(capsys.readouterr())
    assert line.startswith("jaxmatch: error: ") and message in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("case", ["under a regular file", "writes refused"])
def test_out_that_cannot_be_written_fails_before_reading(
    patch, tmp_path, capsys, monkeypatch, case
):
    monkeypatch.chdir(tmp_path)
    _lsst_files(patch, tmp_path)
    if case == "under a regular file":
        (tmp_path / "afile").write_text("a file, not a folder")
        out, reason = tmp_path / "afile" / "out", "Not a directory"
    else:
        out, reason = tmp_path / "out", "Permission denied"
        out.mkdir()
        refuse_writes_in(monkeypatch, out)
    _must_not_read(monkeypatch)
    assert main(["match", *NAMES, "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"jaxmatch: error: cannot write into --out {out}: {reason}\n"


# -- keep going ---------------------------------------------------------------------------------
def test_one_truncated_file_among_ten_the_nine_are_written(patch, tmp_path, capsys):
    """Also: a missing file and a file of another size are reported on one line each;
    chunks of 4 exposures give the same models as one chunk."""
    names = [f"v{i}.fits" for i in range(N)]
    _lsst_files(patch, tmp_path, names)
    data = (tmp_path / "v7.fits").read_bytes()
    (tmp_path / "v7.fits").write_bytes(data[: len(data) // 2])
    fits.PrimaryHDU(np.zeros((32, 32), np.float32)).writeto(tmp_path / "small.fits")
    files = [str(tmp_path / n) for n in [*names, "small.fits", "gone.fits"]]
    ref = ["--ref", files[0]]
    out = tmp_path / "out"
    assert main(["match", *files, "--out", str(out), "--chunk-size", "4", *ref, *FAST]) == 1
    lines = _err_lines(capsys.readouterr())
    assert sum("v7.fits" in line for line in lines) == 1
    assert any(f"skipping {files[7]}: " in line for line in lines)
    assert any("small.fits" in line and "32x32 pixels" in line for line in lines)
    assert any(line.endswith("gone.fits: no such file") for line in lines)
    assert any("9 file(s) written" in line and "3 failed" in line for line in lines)
    written = sorted(p.name for p in out.iterdir() if not p.name.endswith(".model.fits"))
    assert written == sorted(n for n in names if n != "v7.fits")
    one = tmp_path / "one"
    assert main(["match", *files[:3], "--out", str(one), *ref, *FAST]) == 0
    for name in names[1:3]:  # chunked (4) and unchunked fits agree
        a = np.asarray(readModel(out / name.replace(".fits", ".model.fits")).coefficients)
        b = np.asarray(readModel(one / name.replace(".fits", ".model.fits")).coefficients)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_a_failed_fit_names_the_file(patch, tmp_path, capsys):
    _lsst_files(patch, tmp_path)
    masked = _exposure(patch, 2)
    masked = Exposure(
        masked.image * np.nan, masked.mask, masked.variance, mask_planes=patch.mask_planes
    )
    writeExposure(masked, tmp_path / "e2.fits")
    files = [str(tmp_path / n) for n in NAMES]
    assert main(["match", *files, "--out", str(tmp_path / "o"), "--ref", files[0], *FAST]) == 1
    err = capsys.readouterr().err
    assert f"nothing written for {files[2]}: the fit of {files[2]} failed" in err
    assert "<Exposure" not in err
    assert not (tmp_path / "o" / "e2.fits").exists() and (tmp_path / "o" / "e1.fits").exists()


def test_disk_full_midway_keeps_the_others(patch, tmp_path, capsys, monkeypatch):
    """ENOSPC while writing e1's matched file: named, e1 counted as failed, e2 written;
    no partial file."""
    _lsst_files(patch, tmp_path)
    out = tmp_path / "out"
    sizes = fill_disk(monkeypatch, call=3)  # writes: e0.fits, e1.model.fits, e1.fits, ...
    files = [str(tmp_path / n) for n in NAMES]
    assert main(["match", *files, "--out", str(out), "--ref", files[0], *FAST]) == 1
    err = capsys.readouterr().err
    assert f"cannot write {out / 'e1.fits'}: No space left on device" in err
    assert sizes and sizes[0] > 0
    assert sorted(os.listdir(out)) == ["e0.fits", "e1.model.fits", "e2.fits", "e2.model.fits"]


# -- resume -------------------------------------------------------------------------------------
def test_resume_keeps_only_outputs_of_this_very_run(patch, tmp_path, capsys, monkeypatch):
    _lsst_files(patch, tmp_path)
    files = [str(tmp_path / n) for n in NAMES]
    out = tmp_path / "out"
    base = [
        "match",
        *files,
        "--out",
        str(out),
        "--ref",
        files[0],
        "--table",
        str(tmp_path / "t.json"),
    ]
    assert main([*base, *FAST]) == 0
    full = {p.name: p.read_bytes() for p in out.iterdir()}
    # a run killed while writing e2.fits: its temporary file is left, e2.fits is missing
    stale = out / ".e2.fits.k3_x9abc.tmp"
    stale.write_bytes(full["e2.fits"][:5000])
    (out / "e2.fits").unlink()
    calls = []
    real_run = MatchBackgroundsTask.run
    monkeypatch.setattr(
        MatchBackgroundsTask,
        "run",
        lambda self, refs, *a, **k: calls.append(len(refs)) or real_run(self, refs, *a, **k),
    )
    capsys.readouterr()
    assert main([*base, "--skip-existing", *FAST]) == 0
    err = capsys.readouterr().err
    assert f"removed {stale}" in err and "1 file(s) written" in err and "2 kept" in err
    assert calls == [2]  # the reference and e2 only: e1 is not fitted again
    again = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(again) == sorted(full)
    assert all(again[name] == full[name] for name in full if not name.startswith("e2"))
    np.testing.assert_allclose(  # e2 fitted alone now, with e1 before: same to rounding
        fits.getdata(out / "e2.fits", "IMAGE"),
        fits.getdata(tmp_path / "e2.fits", "IMAGE")
        + np.asarray(readModel(out / "e2.model.fits").getImage()),
        rtol=1e-6, atol=1e-3,
    )  # fmt: skip
    rows = json.loads((tmp_path / "t.json").read_text())
    assert [r["status"] for r in rows] == ["kept", "kept", "matched"]
    assert rows[1]["fitRMS"] == pytest.approx(fits.getheader(out / "e1.fits", "IMAGE")["JMFITRMS"])
    assert rows[0]["fitRMS"] is None  # NaN becomes null: valid JSON

    # another config (a field that needs no recompilation): everything is redone
    assert main([*base, "--resume", *FAST, "--set", "bestRefWeightCoverage=0.5"]) == 0
    err = capsys.readouterr().err
    assert err.count("made with another config") == 3 and "0 kept" in err
    # another reference
    assert (
        main(
            [*base[:-4], "--ref", files[1], "--resume", *FAST, "--set", "bestRefWeightCoverage=0.5"]
        )
        == 0
    )
    assert capsys.readouterr().err.count("matched to another reference") == 3
    # a changed input
    writeExposure(_exposure(patch, 5), tmp_path / "e2.fits")
    assert (
        main(
            [*base[:-4], "--ref", files[1], "--resume", *FAST, "--set", "bestRefWeightCoverage=0.5"]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "redoing" in err and err.count("input changed") == 1 and "2 kept" in err


# -- in-process use, subprocess, helpers ----------------------------------------------------------
def test_main_returns_the_status_and_leaves_no_global_state(patch, tmp_path, capsys):
    _lsst_files(patch, tmp_path)
    files = [str(tmp_path / n) for n in NAMES]
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    loggers = set(logging.root.manager.loggerDict)
    for k in range(2):  # a worker calls it once per patch
        assert main(["match", *files, "--out", str(tmp_path / f"o{k}"), *FAST]) == 0
    assert root.handlers == handlers and root.level == level
    assert set(logging.root.manager.loggerDict) == loggers


def test_console_script_help(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "jaxmatch", "match", "--help"], capture_output=True, text=True
    )
    assert run.returncode == 0 and "--skip-existing" in run.stdout and "--model-image" in run.stdout


def test_demo_writes_a_table_and_a_png(tmp_path, capsys):
    table, png = tmp_path / "d.json", tmp_path / "d.png"
    args = ["demo", "--exposures", "3", "--size", "64", "--table", str(table), "--plot", str(png)]
    assert main([*args, "--set", "binSize=16", "--set", "interpStyle=NATURAL_SPLINE"]) == 0
    assert "accuracy against the simulated truth" in capsys.readouterr().out
    assert png.stat().st_size > 1000
    rows = json.loads(table.read_text())
    assert len(rows) == 3 and all("mismatch_before" in r for r in rows)


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
    for name, image, model in [
        ("a.fits", "a.fits", "a.model.fits"),
        ("b.fits.gz", "b.fits.gz", "b.model.fits"),
        ("c.fit", "c.fit", "c.model.fits"),
        ("d.FITS", "d.FITS", "d.model.fits"),
        ("e.v2.fits", "e.v2.fits", "e.v2.model.fits"),
        ("f.fz", "f.fz", "f.model.fits"),
        ("raw", "raw", "raw.model.fits"),
    ]:
        got = _outputs(tmp_path, tmp_path / "in" / name)
        assert (got[0].name, got[1].name) == (image, model)
        assert got[0].parent == tmp_path
