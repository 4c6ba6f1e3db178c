"""Tests of FITS input/output: `readExposure`, `writeExposure`, `atomic_write`."""

import os
import warnings

import numpy as np
import pytest
from astropy.io import fits

from jaxmatch._exposure import DEFAULT_MASK_PLANES, Exposure
from jaxmatch.io import atomic_write, readExposure, writeExposure

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
