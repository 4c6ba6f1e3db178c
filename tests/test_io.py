"""Tests of FITS input/output: exposures (with header and WCS), NDData, model files."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import warnings

import astropy.units as u
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import (
    CCDData,
    InverseVariance,
    NDData,
    StdDevUncertainty,
    VarianceUncertainty,
)
from astropy.wcs import WCS
from io_faults import fill_disk, refuse_writes_in

from jaxmatch import (
    BackgroundModel,
    Basis,
    MatchBackgroundsConfig,
    match,
    simulate_patch,
    stack_exposures,
)
from jaxmatch._exposure import DEFAULT_MASK_PLANES, Exposure
from jaxmatch.io import (
    applyModel,
    atomic_write,
    fromNDData,
    readExposure,
    readExposureWithMetadata,
    readModel,
    readModelConfig,
    remove_stale_temps,
    writeExposure,
    writeModel,
)

NO_DATA = 1 << DEFAULT_MASK_PLANES["NO_DATA"]


def _exposure(rng, dtype, planes=None, shape=(9, 13)):
    image = rng.normal(100.0, 5.0, size=shape).astype(dtype)
    image[0, 0] = np.nan  # a non-finite pixel must survive the round trip as is
    mask = rng.integers(0, 1 << 9, size=shape, dtype=np.int32)
    variance = rng.uniform(10.0, 30.0, size=shape).astype(dtype)
    return Exposure(image, mask, variance, mask_planes=planes)


def _assert_identical(a: Exposure, b: Exposure):
    for name in ("image", "mask", "variance"):
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert x.dtype == y.dtype, name
        assert x.dtype.isnative, name
        np.testing.assert_array_equal(x, y, err_msg=name)  # bit for bit, NaNs in place
    assert a.getMaskPlaneDict() == b.getMaskPlaneDict()


def _leftovers(directory, keep):
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


# -- round trips ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_default_planes(tmp_path, rng, dtype):
    exp = _exposure(rng, dtype)
    path = tmp_path / "exp.fits"
    writeExposure(exp, path)
    back = readExposure(path)
    assert back.image.dtype == dtype
    _assert_identical(back, exp)
    assert _leftovers(tmp_path, {"exp.fits"}) == []  # no temporary file left behind


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_custom_planes(tmp_path, rng, dtype):
    # Long names need HIERARCH cards; short and lower-case names must keep their case
    # (a plain FITS keyword is upper-cased), and unusual characters must survive.
    planes = dict(
        DEFAULT_MASK_PLANES,
        STREAK=9,
        abc=10,
        X=11,
        **{"CLIPPED_OUTLIER_LONG_NAME": 12, "my plane": 13, "a-b": 14, "ABC": 30},
    )
    exp = _exposure(rng, dtype, planes=planes)
    path = tmp_path / "custom.fits"
    writeExposure(exp, str(path))  # str paths work too
    back = readExposure(str(path))
    _assert_identical(back, exp)
    assert back.getMaskPlaneDict() == planes
    assert back.bitmask(["abc", "ABC"]) == (1 << 10) | (1 << 30)


def test_round_trip_planes_unlike_the_defaults(tmp_path, rng):
    planes = {"ONLY": 3}  # a dictionary without any LSST plane
    exp = _exposure(rng, np.float64, planes=planes)
    writeExposure(exp, tmp_path / "one.fits")
    assert readExposure(tmp_path / "one.fits").getMaskPlaneDict() == planes


def test_writing_raises_no_fits_warnings(tmp_path, rng):
    exp = _exposure(rng, np.float64, planes=dict(DEFAULT_MASK_PLANES, lower=9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        writeExposure(exp, tmp_path / "w.fits")


def test_file_layout_is_lsst_like(tmp_path, rng):
    exp = _exposure(rng, np.float32)
    path = tmp_path / "layout.fits"
    writeExposure(exp, path)
    with fits.open(path) as hdus:
        assert [h.name for h in hdus] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE"]
        assert hdus[0].data is None
        header = hdus["MASK"].header
        assert header["MP_BAD"] == 0
        assert header["MP_NO_DATA"] == 8
        assert header["MP_DETECTED_NEGATIVE"] == 6
        assert hdus["MASK"].data.dtype.kind == "i"


def test_overwrite(tmp_path, rng):
    path = tmp_path / "exp.fits"
    first, second = _exposure(rng, np.float64), _exposure(rng, np.float64)
    writeExposure(first, path)
    with pytest.raises(FileExistsError, match="exp.fits"):
        writeExposure(second, path, overwrite=False)
    _assert_identical(readExposure(path), first)
    writeExposure(second, path)  # overwrite=True is the default
    _assert_identical(readExposure(path), second)


# -- plain single-image files ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [">f4", ">f8", "<f8", ">i2", ">i4", "uint16", "uint8"])
def test_plain_single_image_file(tmp_path, dtype):
    data = (np.arange(8 * 11).reshape(8, 11) % 50 + 3).astype(dtype)
    path = tmp_path / "plain.fits"
    fits.PrimaryHDU(data).writeto(path)
    exp = readExposure(path)
    assert np.asarray(exp.image).dtype.isnative
    assert np.issubdtype(exp.image.dtype, np.floating)
    if np.dtype(dtype).kind != "f":
        assert exp.image.dtype == np.float64  # integers become float64
    else:
        assert exp.image.dtype.itemsize == np.dtype(dtype).itemsize  # floats keep precision
    np.testing.assert_array_equal(np.asarray(exp.image), data.astype(np.float64))
    assert not np.any(np.asarray(exp.mask))  # every pixel finite: no NO_DATA
    assert exp.getMaskPlaneDict() == DEFAULT_MASK_PLANES
    assert exp.variance.shape == data.shape
    assert np.all(np.isfinite(np.asarray(exp.variance)))  # estimated from the image


def test_plain_file_non_finite_pixels_get_no_data(tmp_path, rng):
    data = rng.normal(0.0, 1.0, size=(8, 11)).astype(">f4")
    data[2, 3] = np.nan
    data[5, :] = np.inf
    data[7, 1] = -np.inf
    path = tmp_path / "holes.fits"
    fits.PrimaryHDU(data).writeto(path)
    exp = readExposure(path)
    mask = np.asarray(exp.mask)
    bad = ~np.isfinite(data)
    np.testing.assert_array_equal(mask[bad], NO_DATA)
    np.testing.assert_array_equal(mask[~bad], 0)
    np.testing.assert_array_equal(np.asarray(exp.image)[~bad], data[~bad].astype(np.float32))
    assert np.all(np.isnan(np.asarray(exp.image)[np.isnan(data)]))
    assert np.all(np.isfinite(np.asarray(exp.variance)))  # the holes are left out


def test_single_image_in_an_extension(tmp_path):
    data = np.arange(88, dtype=">i4").reshape(8, 11)
    path = tmp_path / "ext.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, name="SCI")]).writeto(path)
    exp = readExposure(path)
    np.testing.assert_array_equal(np.asarray(exp.image), data.astype(np.float64))


# -- errors ----------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.fits"):
        readExposure(tmp_path / "nothere.fits")


def _good_file(tmp_path, rng):
    path = tmp_path / "good.fits"
    writeExposure(_exposure(rng, np.float64), path)
    return path.read_bytes()


def _truncations(n):
    # Inside the primary header; after it; inside each extension's data; 10 bytes short.
    # (A cut exactly at an HDU boundary looks like a shorter valid file and is not listed.)
    return [0, 10, 1000, 2880, 2880 * 2 + 100, 2880 * 3 + 100, 2880 * 4 + 7, n - 2880 + 1, n - 10]


def test_corrupt_and_truncated_files_raise_value_error_naming_the_file(tmp_path, rng):
    content = _good_file(tmp_path, rng)
    assert len(content) == 2880 * 7  # primary + 3 × (header + one data block)
    cases = {f"truncated_{n}.fits": content[:n] for n in _truncations(len(content))}
    cases["garbage.fits"] = b"this is not a FITS file at all\n" * 200
    cases["zeros.fits"] = bytes(2880 * 3)
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match=name):
            readExposure(path)


def test_three_d_image_is_refused(tmp_path):
    path = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.zeros((2, 3, 4), dtype=np.float32)).writeto(path)
    with pytest.raises(ValueError, match="cube.fits"):
        readExposure(path)


def test_directory_is_refused(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(ValueError, match="adir"):
        readExposure(tmp_path / "adir")


# -- atomic_write -------------------------------------------------------------------------------
class _Boom(RuntimeError):
    pass


def _half_writer(f):
    f.write(b"half of the data")
    f.flush()
    raise _Boom("writer failed")


def test_atomic_write_success(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write(target, lambda f: f.write(b"hello"))
    assert target.read_bytes() == b"hello"
    assert _leftovers(tmp_path, {"out.bin"}) == []


def test_atomic_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(_Boom):
        atomic_write(target, _half_writer)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file either


def test_atomic_write_failure_keeps_existing_target(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"the old, complete content")
    before = os.stat(target)
    with pytest.raises(_Boom):
        atomic_write(target, _half_writer)
    assert target.read_bytes() == b"the old, complete content"
    assert os.stat(target).st_ino == before.st_ino  # not replaced at all
    assert _leftovers(tmp_path, {"out.bin"}) == []


def test_atomic_write_failure_on_keyboard_interrupt(tmp_path):
    # BaseException too (Ctrl-C half-way) must not leave a temporary file.
    def interrupted(f):
        f.write(b"x" * 1000)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "out.bin", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_write_exposure_failure_keeps_existing_file(tmp_path, rng, monkeypatch):
    path = tmp_path / "exp.fits"
    old = _exposure(rng, np.float64)
    writeExposure(old, path)

    def failing_writeto(self, fileobj, *args, **kwargs):
        fileobj.write(b"SIMPLE  =                    T")  # a partial header, then failure
        raise OSError("disk full")

    monkeypatch.setattr(fits.HDUList, "writeto", failing_writeto)
    with pytest.raises(OSError, match="disk full"):
        writeExposure(_exposure(rng, np.float64), path)
    monkeypatch.undo()
    _assert_identical(readExposure(path), old)
    assert _leftovers(tmp_path, {"exp.fits"}) == []


def _writer(kind, rng):
    """``write(path)``: writeExposure or writeModel of new random data at each call."""
    if kind == "exposure":
        return lambda path: writeExposure(_exposure(rng, np.float32), path)
    basis = Basis("CHEBYSHEV", (32, 32), order_y=2, order_x=2)
    return lambda path: writeModel(
        BackgroundModel(jnp.asarray(rng.normal(size=basis.coefficient_shape)), basis), path
    )


@pytest.mark.parametrize("kind", ["exposure", "model"])
def test_writing_into_a_folder_that_cannot_be_written(tmp_path, rng, monkeypatch, kind):
    """A missing folder, a regular file in place of the folder, a folder that refuses new
    files: an OSError of the matching kind naming the target, and nothing written."""
    write = _writer(kind, rng)
    (tmp_path / "afile").write_bytes(b"not a folder")
    refused = tmp_path / "refused"
    refused.mkdir()
    cases = [
        (tmp_path / "missing" / "out.fits", FileNotFoundError),
        (tmp_path / "afile" / "out.fits", NotADirectoryError),
        (refused / "out.fits", PermissionError),
    ]
    refuse_writes_in(monkeypatch, refused)
    for path, error in cases:
        with pytest.raises(error, match=re.escape(f"cannot write {path}: ")):
            write(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "refused"]
    assert (tmp_path / "afile").read_bytes() == b"not a folder"
    assert list(refused.iterdir()) == []


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
@pytest.mark.parametrize("at", ["write", "fsync"])
@pytest.mark.parametrize("kind", ["exposure", "model"])
def test_disk_full_midway_leaves_no_partial_file(tmp_path, rng, monkeypatch, kind, at, existing):
    """ENOSPC after part (or all) of the data reached the temporary file: the target is
    absent or byte-identical to its old content, no temporary file is left, and the
    error (errno ENOSPC) names the target."""
    write = _writer(kind, rng)
    path = tmp_path / "out.fits"
    if existing:
        write(path)
        old = path.read_bytes()
    sizes = fill_disk(monkeypatch, at=at)
    with pytest.raises(OSError, match=re.escape(f"cannot write {path}: ")) as raised:
        write(path)
    assert raised.value.errno == errno.ENOSPC
    assert len(sizes) == 1 and sizes[0] > 0  # the failure came after bytes were written
    if existing:
        assert path.read_bytes() == old
    else:
        assert not path.exists()
    assert _leftovers(tmp_path, {"out.fits"}) == []


# Writes 300 kB into out.bin through atomic_write, says so on stdout, then waits to be killed.
_KILLED_WRITER = """
import signal, sys
from jaxmatch.io import atomic_write

def write(f):
    f.write(b"new" * 100_000)
    f.flush()
    print("writing", flush=True)
    signal.pause()

atomic_write(sys.argv[1], write)
"""


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_kill_during_write_leaves_the_target_intact(tmp_path, existing):
    """SIGKILL in the middle of `atomic_write`: the target is absent or keeps its old
    bytes; the only leftover is the hidden ``.out.bin.<random>.tmp``, which
    `remove_stale_temps` then removes."""
    target = tmp_path / "out.bin"
    if existing:
        target.write_bytes(b"the old, complete content")
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "writing\n"  # it is inside write(): kill it there
    finally:
        child.kill()
        child.wait(timeout=60)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    if existing:
        assert target.read_bytes() == b"the old, complete content"
    else:
        assert not target.exists()
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1
    assert re.fullmatch(r"\.out\.bin\.[a-z0-9_]{8}\.tmp", leftovers[0].name)
    assert leftovers[0].read_bytes() == b"new" * 100_000
    assert remove_stale_temps([target]) == leftovers
    assert list(tmp_path.iterdir()) == ([target] if existing else [])


def test_remove_stale_temps_removes_only_those_of_the_given_targets(tmp_path):
    """Only ``.NAME.<random>.tmp`` files of the given targets go; look-alikes stay."""
    other = tmp_path / "other"
    other.mkdir()
    targets = [tmp_path / "e1.fits", tmp_path / "e1.model.fits", other / "e2.fits"]
    stale = [tmp_path / ".e1.fits.k3_x9abc.tmp", tmp_path / ".e1.model.fits.a1b2c3d4.tmp"]
    stale.append(other / ".e2.fits.zz_0099x.tmp")
    look_alikes = [
        "e1.fits",  # the target itself
        ".e1.fits.tmp",  # no random part
        ".e1.fits.fits.tmp",  # not 8 random characters
        "e1.fits.abcdefgh.tmp",  # not hidden
        ".e1.fits.ABCDEFGH.tmp",  # not tempfile's characters
        ".e1.fits.abcdefgh.tmp.bak",
        ".e10.fits.abcdefgh.tmp",  # another file's temporary file
        ".e1.fits.v2.abcdefgh.tmp",  # that of e1.fits.v2
        ".e2.fits.abcdefgh.tmp",  # e2.fits is a target in the other folder only
        "notes.tmp",
    ]
    for path in stale + [tmp_path / name for name in look_alikes]:
        path.write_bytes(b"x")
    (tmp_path / ".e1.fits.adirect.tmp").mkdir()  # not a file
    (tmp_path / ".e1.fits.alinkto.tmp").symlink_to(tmp_path / "notes.tmp")  # not a file
    assert remove_stale_temps(targets + [tmp_path / "nofolder" / "e3.fits"]) == sorted(stale)
    assert not any(p.exists() for p in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        look_alikes + [".e1.fits.adirect.tmp", ".e1.fits.alinkto.tmp", "other"]
    )
    assert list(other.iterdir()) == []


# -- primary header and WCS ----------------------------------------------------------------
def _tan_wcs():
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.1, 2.2]
    wcs.wcs.crpix = [6.5, 4.5]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    wcs.wcs.pc = [[0.99, -0.01], [0.01, 0.99]]
    return wcs


def _assert_same_wcs(a, b):
    assert a is not None and b is not None
    assert a.wcs.compare(b.wcs)
    assert a.to_header(relax=True) == b.to_header(relax=True)
    y, x = np.mgrid[0:9:4, 0:13:6]
    np.testing.assert_array_equal(a.all_pix2world(x, y, 0), b.all_pix2world(x, y, 0))


def test_round_trip_header_and_wcs(tmp_path, rng):
    exp = _exposure(rng, np.float32)
    header = fits.Header()
    header["OBJECT"] = ("M31 field", "target")
    header["EXPTIME"] = 30.0
    header["FILTER"] = "r"
    header.add_history("flat-fielded")
    header.add_comment("a comment")
    header["HIERARCH LSST VISIT ID"] = 4242
    wcs = _tan_wcs()
    path = tmp_path / "meta.fits"
    writeExposure(exp, path, header=header, wcs=wcs)
    back, back_header, back_wcs = readExposureWithMetadata(path)
    _assert_identical(back, exp)
    _assert_same_wcs(back_wcs, wcs)
    for key in ("OBJECT", "EXPTIME", "FILTER", "HIERARCH LSST VISIT ID"):
        assert back_header[key] == header[key], key
    assert back_header.comments["OBJECT"] == "target"
    assert list(back_header["HISTORY"]) == ["flat-fielded"]
    assert list(back_header["COMMENT"]) == ["a comment"]
    assert "NAXIS" not in back_header and "BITPIX" not in back_header
    with fits.open(path) as hdus:  # the WCS is in every extension, as LSST writes it
        for name in ("IMAGE", "MASK", "VARIANCE"):
            assert hdus[name].header["CTYPE1"] == "RA---TAN", name
    # and a second round trip changes nothing
    writeExposure(back, tmp_path / "again.fits", header=back_header, wcs=back_wcs)
    again, again_header, again_wcs = readExposureWithMetadata(tmp_path / "again.fits")
    _assert_identical(again, exp)
    _assert_same_wcs(again_wcs, wcs)
    assert list(again_header.items()) == list(back_header.items())


def test_no_header_no_wcs(tmp_path, rng):
    exp = _exposure(rng, np.float64)
    writeExposure(exp, tmp_path / "bare.fits")
    back, header, wcs = readExposureWithMetadata(tmp_path / "bare.fits")
    _assert_identical(back, exp)
    assert wcs is None
    assert "OBJECT" not in header


def test_header_from_a_mapping_drops_structural_keywords(tmp_path, rng):
    exp = _exposure(rng, np.float64)
    meta = {"SIMPLE": True, "BITPIX": 16, "NAXIS": 2, "NAXIS1": 5, "OBJECT": "x", "AIRMASS": 1.2}
    writeExposure(exp, tmp_path / "m.fits", header=meta)
    _, header, _ = readExposureWithMetadata(tmp_path / "m.fits")
    assert header["OBJECT"] == "x" and header["AIRMASS"] == 1.2
    assert "NAXIS1" not in header
    with fits.open(tmp_path / "m.fits") as hdus:
        assert hdus[0].data is None


def test_plain_file_header_wcs_and_noise_model(tmp_path, rng):
    data = rng.normal(1000.0, 10.0, size=(9, 13))
    data[3, 4] = np.nan
    header = _tan_wcs().to_header()
    header["OBJECT"] = "plain"
    path = tmp_path / "plain.fits"
    fits.PrimaryHDU(data, header=header).writeto(path)
    exp, meta, wcs = readExposureWithMetadata(path, gain=2.0, read_noise=5.0)
    _assert_same_wcs(wcs, WCS(header))
    assert meta["OBJECT"] == "plain"
    expected = np.maximum(data, 0) / 2.0 + 25.0
    finite = np.isfinite(data)
    np.testing.assert_allclose(np.asarray(exp.variance)[finite], expected[finite], rtol=1e-15)
    assert np.isinf(np.asarray(exp.variance)[3, 4])
    assert np.asarray(exp.mask)[3, 4] == NO_DATA
    # read noise alone: a constant variance; neither: estimated from the image
    only_rn = readExposure(path, read_noise=3.0)
    np.testing.assert_array_equal(np.asarray(only_rn.variance)[finite], 9.0)
    estimated = readExposure(path)
    assert np.ptp(np.asarray(estimated.variance)) == 0.0
    # the MEF variance plane wins over gain / read noise
    writeExposure(exp, tmp_path / "mef.fits")
    np.testing.assert_array_equal(
        np.asarray(readExposure(tmp_path / "mef.fits", gain=100.0).variance),
        np.asarray(exp.variance),
    )


@pytest.mark.parametrize("kwargs", [dict(gain=0.0), dict(gain=-1.0), dict(read_noise=-1.0)])
def test_bad_noise_model_is_refused(tmp_path, kwargs):
    path = tmp_path / "p.fits"
    fits.PrimaryHDU(np.ones((4, 4))).writeto(path)
    with pytest.raises(ValueError, match="gain|read_noise"):
        readExposure(path, **kwargs)


# -- astropy NDData / CCDData ------------------------------------------------------------------
def _ccd(rng, uncertainty=None, mask=True, shape=(9, 13)):
    data = rng.normal(500.0, 5.0, size=shape)
    data[1, 2] = np.nan
    bad = np.zeros(shape, dtype=bool)
    bad[4, :3] = True
    return CCDData(
        data,
        unit="adu",
        mask=bad if mask else None,
        uncertainty=uncertainty,
        wcs=_tan_wcs(),
        meta={"OBJECT": "ccd", "EXPTIME": 15.0},
    )


def test_from_ccddata_mask_and_stddev(rng):
    sigma = rng.uniform(1.0, 3.0, size=(9, 13))
    ccd = _ccd(rng, StdDevUncertainty(sigma))
    exp = fromNDData(ccd)
    mask = np.asarray(exp.mask)
    bad_bit = 1 << DEFAULT_MASK_PLANES["BAD"]
    assert mask[1, 2] == NO_DATA
    np.testing.assert_array_equal(mask[4, :3], bad_bit)
    assert np.count_nonzero(mask) == 4
    variance = np.asarray(exp.variance)
    np.testing.assert_allclose(variance[0], sigma[0] ** 2, rtol=1e-15)
    assert np.isinf(variance[1, 2])
    np.testing.assert_array_equal(np.asarray(exp.image)[0], ccd.data[0])


def test_from_nddata_uncertainty_kinds(rng):
    values = rng.uniform(1.0, 3.0, size=(9, 13))
    var = fromNDData(_ccd(rng, VarianceUncertainty(values)))
    np.testing.assert_array_equal(np.asarray(var.variance)[0], values[0])
    ivar = values.copy()
    ivar[0, 0] = 0.0  # no information: an infinite variance
    inv = fromNDData(_ccd(rng, InverseVariance(ivar)))
    np.testing.assert_allclose(np.asarray(inv.variance)[0, 1:], 1.0 / ivar[0, 1:], rtol=1e-15)
    assert np.isinf(np.asarray(inv.variance)[0, 0])
    # a plain NDData without mask or uncertainty, integer data
    plain = fromNDData(NDData(np.arange(48).reshape(6, 8)))
    assert plain.image.dtype == np.float64
    assert not np.any(np.asarray(plain.mask))


def test_from_nddata_unit_conversion(rng):
    variance = VarianceUncertainty(np.full((9, 13), 4.0e6), unit=u.mJy**2)
    ccd = CCDData(rng.normal(size=(9, 13)), unit=u.Jy, uncertainty=variance)
    exp = fromNDData(ccd)
    np.testing.assert_allclose(np.asarray(exp.variance), 4.0, rtol=1e-12)  # (2000 mJy)² = 4 Jy²


def test_from_nddata_noise_model_and_estimate(rng):
    ccd = _ccd(rng)
    exp = fromNDData(ccd, gain=2.0, read_noise=4.0)
    np.testing.assert_allclose(
        np.asarray(exp.variance)[0], np.maximum(ccd.data[0], 0) / 2.0 + 16.0, rtol=1e-15
    )
    estimated = fromNDData(ccd)
    assert np.all(np.isfinite(np.asarray(estimated.variance)))


def test_from_nddata_integer_mask_and_custom_planes(rng):
    planes = {"BAD": 2, "NO_DATA": 5, "STREAK": 7}
    data = rng.normal(size=(6, 8))
    bits = np.zeros((6, 8), dtype=np.int16)
    bits[0, 0] = 1 << 7
    exp = fromNDData(NDData(data, mask=bits), mask_planes=planes)
    assert exp.getMaskPlaneDict() == planes
    assert np.asarray(exp.mask)[0, 0] == 1 << 7
    with pytest.raises(ValueError, match="NO_DATA"):
        fromNDData(NDData(data), mask_planes={"BAD": 0})


def test_from_nddata_refuses_bad_input(rng):
    with pytest.raises(ValueError, match="2-D"):
        fromNDData(NDData(np.zeros((2, 3, 4))))
    with pytest.raises(TypeError, match="NDData"):
        fromNDData(np.zeros((3, 3)))


def test_ccddata_in_fits_out_read_back(tmp_path, rng):
    ccd = _ccd(rng, StdDevUncertainty(rng.uniform(1.0, 2.0, size=(9, 13))))
    exp = fromNDData(ccd)
    path = tmp_path / "from_ccd.fits"
    writeExposure(exp, path, header=ccd.meta, wcs=ccd.wcs)
    back, header, wcs = readExposureWithMetadata(path)
    _assert_identical(back, exp)
    assert header["OBJECT"] == "ccd" and header["EXPTIME"] == 15.0
    _assert_same_wcs(wcs, ccd.wcs)


# -- background models as data -----------------------------------------------------------------
def _bases():
    knots = (8.0, 24.0, 40.0, 56.0)
    return {
        "natural": Basis(
            "SPLINE", (64, 48), style="NATURAL_SPLINE", knots_y=knots, knots_x=knots[:3]
        ),
        "akima": Basis(
            "SPLINE",
            (64, 48),
            style="AKIMA_SPLINE",
            knots_y=tuple(np.linspace(3.5, 60.5, 6)),
            knots_x=(4.0, 14.0, 24.0, 34.0, 44.0),
        ),
        "linear": Basis("SPLINE", (64, 48), style="LINEAR", knots_y=knots, knots_x=(10.0, 30.0)),
        "chebyshev": Basis("CHEBYSHEV", (64, 48), order_y=3, order_x=2),
    }


# Jitted evaluation: one compilation per basis (the basis is static, so an equal loaded
# basis reuses it) instead of the slow op-by-op first call of an eager getImage().
_image = eqx.filter_jit(lambda model: model.getImage())
_evaluate = eqx.filter_jit(lambda model, y, x: model.evaluate(y, x))


@pytest.mark.parametrize(
    "name, dtype",
    [
        ("natural", np.float32),
        ("akima", np.float64),
        ("linear", np.float32),
        ("chebyshev", np.float64),
    ],
)
def test_model_round_trip(tmp_path, rng, name, dtype):
    basis = _bases()[name]
    model = BackgroundModel(
        jnp.asarray(rng.normal(size=basis.coefficient_shape).astype(dtype)), basis
    )
    path = tmp_path / "m.model.fits"
    writeModel(model, path)
    back = readModel(path)
    assert back.basis == model.basis  # equal static field: no recompilation
    assert back.coefficients.dtype == dtype
    np.testing.assert_array_equal(np.asarray(back.coefficients), np.asarray(model.coefficients))
    np.testing.assert_array_equal(np.asarray(_image(back)), np.asarray(_image(model)))
    y, x = jnp.asarray([0.0, 10.5, 63.0]), jnp.asarray([-2.0, 47.0])  # any grid
    np.testing.assert_array_equal(
        np.asarray(_evaluate(back, y, x)), np.asarray(_evaluate(model, y, x))
    )
    assert readModelConfig(path) is None
    assert _leftovers(tmp_path, {"m.model.fits"}) == []


def test_batched_model_round_trip_with_config(tmp_path, rng):
    basis = _bases()["natural"]
    model = BackgroundModel(jnp.asarray(rng.normal(size=(3, *basis.coefficient_shape))), basis)
    config = MatchBackgroundsConfig(binSize=16, interpStyle="NATURAL_SPLINE", orderY=None)
    path = tmp_path / "batch.fits"
    writeModel(model, path, config=config, header={"FITRMS": 0.25})
    back = readModel(path)
    np.testing.assert_array_equal(np.asarray(_image(back)), np.asarray(_image(model)))
    assert MatchBackgroundsConfig.fromDict(readModelConfig(path)) == config
    with fits.open(path) as hdus:
        assert hdus[0].header["FITRMS"] == 0.25


@pytest.fixture(scope="module")
def fitted():
    patch = simulate_patch(3, (64, 64), seed=3)
    exps = [Exposure(patch.images[i], patch.masks[i], patch.variances[i]) for i in range(3)]
    config = MatchBackgroundsConfig(binSize=16, interpStyle="NATURAL_SPLINE")
    result = match(exps[0], stack_exposures(exps[1:]), config)
    return exps, result, config


def test_saved_fitted_model_applies_as_the_fit_did(tmp_path, fitted):
    exps, result, config = fitted
    writeModel(result.model[0], tmp_path / "one.fits", config=config)
    model = readModel(tmp_path / "one.fits")
    np.testing.assert_array_equal(np.asarray(_image(model)), np.asarray(_image(result.model[0])))
    matched = applyModel(model, exps[1])
    np.testing.assert_allclose(
        np.asarray(matched.image), np.asarray(result.matched[0]), rtol=0, atol=1e-9
    )
    np.testing.assert_array_equal(np.asarray(matched.mask), np.asarray(exps[1].mask))
    np.testing.assert_array_equal(np.asarray(matched.variance), np.asarray(exps[1].variance))
    # the same model on another image of that grid
    other = applyModel(model, exps[2])
    np.testing.assert_allclose(
        np.asarray(other.image) - np.asarray(exps[2].image),
        np.asarray(_image(model)),
        rtol=0,
        atol=1e-9,
    )
    # a batch of models on a batch of exposures
    writeModel(result.model, tmp_path / "batch.fits")
    batch = applyModel(readModel(tmp_path / "batch.fits"), stack_exposures(exps[1:]))
    np.testing.assert_allclose(
        np.asarray(batch.image), np.asarray(result.matched), rtol=0, atol=1e-9
    )


def test_apply_model_dtype_and_mismatches(rng):
    basis = _bases()["chebyshev"]
    model = BackgroundModel(jnp.asarray(rng.normal(size=basis.coefficient_shape)), basis)
    exp32 = Exposure(np.ones((64, 48), np.float32), variance=np.ones((64, 48), np.float32))
    assert applyModel(model, exp32).image.dtype == np.float32
    with pytest.raises(ValueError, match="64x48"):
        applyModel(model, Exposure(np.ones((48, 64)), variance=np.ones((48, 64))))
    batch = BackgroundModel(jnp.zeros((2, *basis.coefficient_shape)), basis)
    three = stack_exposures([Exposure(np.ones((64, 48)), variance=np.ones((64, 48)))] * 3)
    with pytest.raises(ValueError, match="batch"):
        applyModel(batch, three)
    with pytest.raises(TypeError, match="BackgroundModel"):
        applyModel(np.zeros((64, 48)), three)


def test_read_model_errors(tmp_path, rng):
    with pytest.raises(FileNotFoundError, match="nothere"):
        readModel(tmp_path / "nothere.fits")
    (tmp_path / "junk.fits").write_bytes(b"not fits" * 400)
    with pytest.raises(ValueError, match="junk.fits"):
        readModel(tmp_path / "junk.fits")
    writeExposure(_exposure(rng, np.float64), tmp_path / "exposure.fits")
    with pytest.raises(ValueError, match="not a jaxmatch model"):
        readModel(tmp_path / "exposure.fits")
    basis = _bases()["chebyshev"]
    writeModel(BackgroundModel(jnp.zeros(basis.coefficient_shape), basis), tmp_path / "m.fits")
    with fits.open(tmp_path / "m.fits", mode="update") as hdus:
        hdus[0].header["ORDER_X"] = 5  # the coefficients no longer fit the basis
    with pytest.raises(ValueError, match="do not fit the basis"):
        readModel(tmp_path / "m.fits")


# -- files as they come: tables, several images, odd WCS, sources --------------------------
def test_a_table_before_the_image_is_skipped(tmp_path, rng):
    image = rng.normal(100, 5, (32, 32)).astype(">f4")
    table = fits.BinTableHDU.from_columns([fits.Column(name="x", format="E", array=[1, 2, 3])])
    fits.HDUList([fits.PrimaryHDU(), table, fits.ImageHDU(image, name="SCI")]).writeto(
        tmp_path / "t.fits"
    )
    np.testing.assert_array_equal(np.asarray(readExposure(tmp_path / "t.fits").image), image)


def test_several_images_need_hdu(tmp_path, rng):
    images = [rng.normal(100, 5, (16, 16)).astype(np.float32) for _ in range(2)]
    hdus = [fits.PrimaryHDU()] + [
        fits.ImageHDU(a, name=f"CCD{i + 1}") for i, a in enumerate(images)
    ]
    fits.HDUList(hdus).writeto(tmp_path / "mef.fits")
    with pytest.raises(ValueError, match=r"mef.fits holds 2 images \(CCD1, CCD2\)"):
        readExposure(tmp_path / "mef.fits")
    exposure, _, _ = readExposureWithMetadata(tmp_path / "mef.fits", hdu="ccd2")
    np.testing.assert_array_equal(np.asarray(exposure.image), images[1])


def test_a_wcs_with_cdelt_zero_does_not_block_reading(tmp_path, rng):
    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CDELT1": 0.0})
    fits.PrimaryHDU(rng.normal(0, 1, (16, 16)).astype(np.float32), header).writeto(
        tmp_path / "lab.fits"
    )
    with pytest.warns(UserWarning, match="lab.fits: its WCS cannot be used"):
        exposure, header, wcs = readExposureWithMetadata(tmp_path / "lab.fits")
    assert wcs is None and exposure.getBBoxShape() == (16, 16) and header["CDELT1"] == 0.0


def test_sip_distortion_survives_write_exposure(tmp_path, rng):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    wcs.wcs.crpix, wcs.wcs.crval, wcs.wcs.cdelt = [8, 8], [35.0, -4.5], [-5e-5, 5e-5]
    from astropy.wcs import Sip

    a = np.zeros((3, 3))
    a[0, 2], a[2, 0] = 2e-5, 1.5e-5
    wcs.sip = Sip(a, np.zeros((3, 3)), None, None, wcs.wcs.crpix)
    exposure = Exposure(rng.normal(0, 1, (16, 16)).astype(np.float32))
    writeExposure(exposure, tmp_path / "sip.fits", wcs=wcs)
    _, _, back = readExposureWithMetadata(tmp_path / "sip.fits")
    assert back.sip is not None
    corner = np.array([[0.0, 0.0], [15.0, 15.0]])
    np.testing.assert_allclose(back.all_pix2world(corner, 0), wcs.all_pix2world(corner, 0))


def test_ascii_card_text_round_trips_any_name():
    import urllib.parse

    from jaxmatch._fitsfile import ascii_card_text

    for name in ["visite é 1.fits", "星.fits", "a'b\".fits", "tab\there.fits"]:
        text = ascii_card_text(name)
        assert text.isascii() and text.isprintable() and urllib.parse.unquote(text) == name


def test_detect_sources_marks_stars_not_the_gradient_nor_the_noise(rng):
    """A sloped background (20 ADU across) with noise σ = 5 and ten stars of peak 60σ:
    every star's core is DETECTED, fewer than 1 % of the pure-noise pixels are."""
    from jaxmatch._sources import detect_sources

    yy, xx = np.mgrid[:128, :128].astype(float)
    image = 1000 + 20 * xx / 127 + rng.normal(0, 5, (128, 128))
    stars = rng.uniform(10, 118, (10, 2))
    near = np.zeros((128, 128), bool)
    for y, x in stars:
        r2 = (yy - y) ** 2 + (xx - x) ** 2
        image += 300 * np.exp(-r2 / (2 * 1.5**2))
        near |= r2 < 8**2
    exposure = detect_sources(Exposure(image.astype(">f4").astype(np.float32)))
    detected = (np.asarray(exposure.mask) & (1 << DEFAULT_MASK_PLANES["DETECTED"])) != 0
    for y, x in stars:
        assert detected[int(round(y)), int(round(x))]
    assert detected[~near].mean() < 0.01
    np.testing.assert_array_equal(np.asarray(exposure.image), image.astype(np.float32))


def test_summary_tables_in_every_format(tmp_path):
    from astropy.table import Table

    from jaxmatch._filematch import ImageRow, summary_table, write_table

    rows = [
        ImageRow("a é.fits", "*", "reference", True, np.nan, np.nan, np.nan, "", ""),
        ImageRow("b.fits", "*", "matched", False, 0.5, 2.0, 3.0, "spline LINEAR", ""),
    ]
    table = summary_table(rows, MatchBackgroundsConfig(binSize=64))
    for suffix in (".ecsv", ".fits", ".csv", ".json"):
        write_table(table, tmp_path / f"t{suffix}")
    back = Table.read(tmp_path / "t.ecsv")
    assert str(back["fitRMS"].unit) == "adu" and back.meta["config"]["binSize"] == 64
    assert list(back["status"]) == ["reference", "matched"] and np.isnan(back["fitRMS"][0])
    assert Table.read(tmp_path / "t.fits")["matchedMSE"].unit == "adu2"
    records = json.loads((tmp_path / "t.json").read_text())  # strict JSON: no NaN
    assert records[0]["fitRMS"] is None and records[1]["fitRMS"] == 0.5
    assert records[0]["file"] == "a é.fits" and records[0]["reference"] is True
    with pytest.raises(ValueError, match="use a .ecsv"):
        write_table(table, tmp_path / "t.txt")


def test_ccddata_read_from_disk_is_big_endian_and_works(tmp_path, rng):
    """`CCDData.read` returns the file's big-endian arrays; `fromNDData` takes them."""
    from astropy.nddata import CCDData

    image = rng.normal(100, 5, (16, 16)).astype(np.float32)
    ccd = CCDData(
        image, unit="adu", mask=image > 110, uncertainty=StdDevUncertainty(np.full((16, 16), 5.0))
    )
    ccd.write(tmp_path / "ccd.fits")
    back = CCDData.read(tmp_path / "ccd.fits")
    assert back.data.dtype.byteorder == ">"
    exposure = fromNDData(back)
    np.testing.assert_array_equal(np.asarray(exposure.image), image)
    np.testing.assert_allclose(np.asarray(exposure.variance), 25.0)
    bad = 1 << DEFAULT_MASK_PLANES["BAD"]
    np.testing.assert_array_equal((np.asarray(exposure.mask) & bad) != 0, image > 110)
