"""Match FITS files on disk: what ``jaxmatch match`` runs, callable from Python.

`match_files` takes input paths and an output folder and

1. plans every output (`jaxmatch._outputs`) and refuses collisions, checks that
   ``out`` and the table's folder can be written, removes temporary files a killed
   run left for these outputs: all before reading a pixel;
2. reads each file (its bytes, once) to checksum it and measure the reference
   statistics of its images (LSST's cost: variance, level, coverage), one file
   at a time;
3. per image key (``PRIMARY``, ``IMAGE``, or ``CCD1``, ``CCD2``, ... of
   multi-extension files) chooses the reference (or takes ``ref``'s image) and
   fits the other files' images to it in balanced chunks of at most
   ``chunk_size`` exposures, each padded to one length (`MatchBackgroundsTask.run`
   on each chunk: one compiled program), keeping only the models' coefficients;
4. writes each file's outputs (model files, model image, matched file with the
   input's layout and cards, `jaxmatch._fitsfile.write_like`), one file at a time.

Reads: a run of at most ``chunk_size`` files keeps each file's bytes (and its
exposures) from step 2 until it is written: every file is read once, after the
header scan of step 1. A larger run reads a file again in step 3 (its chunk) and
in step 4 (its outputs) rather than hold every file: a re-read costs far less than
a fit (docs/reliability.md, measured).

Memory: the reference, one chunk of exposures and the engine's buffers for it, and
the fitted models' coefficients (a few kB each; the model image is evaluated
again when written); never every exposure at once.

A file that cannot be read, fitted or written is reported (one line naming it and
why) and the others go on; the `MatchReport` says which. Plain images (no mask
planes) get a source mask first (`jaxmatch._sources.detect_sources`) unless
``detect=False``.

Resuming (``resume=True``): a file whose outputs all exist is kept only when the
cards of its matched file record this run's input checksum (``JMINSUM``), config
(``JMCFGSUM``) and reference (``JMREFSUM``); such a file is not fitted again (its
table row comes from the recorded cards); any other is redone, and the report
says why.

Cards jaxmatch adds (ASCII whatever the file names: non-ASCII characters are
percent-encoded). Primary HDU: ``JMINPUT`` (input file name), ``JMINSUM``
(SHA-256 of the input), ``JMCFGSUM`` (of the config), ``JMREFSUM`` (of the
reference input(s)), ``JMCONFIG`` (the config as JSON), one HISTORY line. Each
image HDU: ``JMROLE`` (``REFERENCE`` or ``MATCHED``), ``JMREF`` (reference file),
``JMMODEL`` (model file), ``JMKIND``, ``JMSTYLE``, ``JMORDY``, ``JMORDX`` (the
effective model), ``JMFITRMS`` [ADU], ``JMMSE`` [ADU²], ``JMDIFVAR`` [ADU²].
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from astropy.io import fits

from ._atomic import remove_stale_temps
from ._fitsfile import (
    ImageSlot,
    ascii_card_text,
    bytes_checksum,
    open_fits,
    read_bytes,
    read_slot,
    scan_slots,
    write_like,
)
from ._outputs import Outputs, PlanError, output_names, plan_outputs
from ._sources import Detection, detect_sources
from ._taskpath import DEFAULT_CHUNK_SIZE, chunk_length

#: The group of every file with a single image (whatever its HDU is called).
SINGLE = "*"

#: Row statuses of the summary table.
STATUSES = ("matched", "reference", "kept", "failed")


class ImageRow(NamedTuple):
    """One row of the summary: one image of one input file.

    ``fitRMS`` [ADU], ``matchedMSE`` [ADU²], ``diffImVar`` [ADU²] are NaN for a
    reference or a failure. ``model``: the effective model, e.g. ``"spline LINEAR"``
    or ``"chebyshev 1x1"`` (after any reduction), empty when none.
    """

    file: str
    image: str
    status: str
    reference: bool
    fitRMS: float
    matchedMSE: float
    diffImVar: float
    model: str
    message: str


class MatchReport(NamedTuple):
    """What `match_files` did.

    Attributes:
        rows: one `ImageRow` per image of each input (input order).
        written, kept, failed: numbers of input files.
        exit_status: 0 every file matched (or kept), 1 some failed.
    """

    rows: list[ImageRow]
    written: int
    kept: int
    failed: int
    exit_status: int


@dataclasses.dataclass
class _File:
    path: Path
    slots: list[ImageSlot] = dataclasses.field(default_factory=list)
    outputs: Outputs | None = None
    error: str | None = None
    checksum: str = ""
    plain: bool = False
    shapes: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    stats: dict[str, tuple[float, float, float]] = dataclasses.field(default_factory=dict)
    kept: bool = False
    recorded: dict[str, fits.Header] = dataclasses.field(default_factory=dict)
    said: bool = False
    names: dict[str, str] = dataclasses.field(default_factory=dict)
    data: bytes | None = None  # the file's bytes, held from reading to writing (small runs)


class _Ref:
    """A data reference for `MatchBackgroundsTask.run`: its repr names the file."""

    def __init__(self, label: str, exposure):
        self.label, self.exposure = label, exposure

    def get(self, datasetType):
        return self.exposure

    def __repr__(self) -> str:
        return self.label


def match_files(
    files: Sequence[str | Path],
    out: str | Path,
    config=None,
    *,
    ref: str | Path | None = None,
    resume: bool = False,
    model_image: bool = False,
    gain: float | None = None,
    read_noise: float | None = None,
    detect: bool | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    table: str | Path | None = None,
    say: Callable[[str], None] | None = None,
    progress: Callable[..., Any] | None = None,
) -> MatchReport:
    """Match FITS files and write their outputs into ``out`` (see the module docstring).

    Arguments:
        files: input FITS files of one patch (any layout; ``.gz``/``.fz``/``.bz2``).
        out: output folder (created).
        config: `MatchBackgroundsConfig` (None: the defaults).
        ref: the reference file (one of ``files``); None: LSST's cost chooses.
        resume: keep outputs that record this run's input, config and reference.
        model_image: also write the evaluated model as an image (``NAME.bkg.fits``).
        gain [e⁻/ADU], read_noise [ADU]: the variance of images without a variance
            plane; None: estimated from the image.
        detect: mark sources in DETECTED before binning: None (default) for plain
            images only, True for every image, False never.
        chunk_size: exposures fitted per engine call (memory bound).
        table: also write the summary (`summary_table`; ``.ecsv``, ``.fits``,
            ``.csv`` or ``.json``).
        say: receives each message line (default: `logging` warnings).
        progress: ``progress(iterable, desc=..., total=..., unit=...)`` returning an
            iterable with ``set_description``; None: no bars.

    Returns a `MatchReport`. Raises `PlanError` (outputs collide), `ValueError` (a
    bad argument) or `OSError` (``out`` or the table's folder cannot be written)
    before any file is read.
    """
    from ._config import MatchBackgroundsConfig
    from ._task import MatchBackgroundsTask

    config = MatchBackgroundsConfig() if config is None else config
    say = say or logging.getLogger(__name__).warning
    bar = progress or no_progress
    out = Path(out)
    table = None if table is None else Path(table)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    entries = _check_inputs([Path(f) for f in files], None if ref is None else Path(ref))
    ref_path = None if ref is None else Path(ref).resolve()
    if table is not None:
        table_format(table)
        # The table may go into --out, which is created before any work.
        if not table.parent.is_dir() and table.parent.resolve() != out.resolve():
            raise OSError(f"cannot write --table {table}: the folder {table.parent} does not exist")

    # 1. the plan, from the headers only
    for f in entries:
        if not f.path.exists():
            f.error = "no such file"
            continue
        try:
            f.slots = scan_slots(f.path)
        except (ValueError, OSError) as err:
            f.error = _reason(err, f.path)
        if len(f.slots) == 1:  # single images of every layout are matched together
            f.names = {SINGLE: f.slots[0].key}
            f.slots = [f.slots[0]._replace(key=SINGLE)]
    planned: list[Outputs] = []
    for f in entries:
        keys = [s.key for s in f.slots] or [SINGLE]
        f.outputs = output_names(out, f.path, keys, model_image)
        planned.append(f.outputs)
    plan_outputs(planned, [f.path for f in entries], table)
    prepare_out(out, [p for o in planned for _, p in o.paths()], table, say)
    for f in entries:
        if f.error:
            say(f"skipping {f.path}: {f.error}")

    task = MatchBackgroundsTask(config, log=_capture_log())
    task.chunkSize = None  # each call of the task is one chunk of files, padded here
    digest = config_digest(config)
    detection = Detection()
    plain_seen = False
    if detect is not False and "DETECTED" not in config.badMaskPlanes:
        say("DETECTED is not in badMaskPlanes: detected sources will not be masked")

    # 2. checksums and reference statistics, one file at a time
    cache: dict[tuple[int, str], Any] = {}
    keep_in_memory = len(entries) <= chunk_size
    for n, f in enumerate(bar(entries, desc="reading", unit="file")):
        if f.error:
            continue
        try:
            data = read_bytes(f.path)  # one read: checksum and images from these bytes
            f.checksum = bytes_checksum(data)
            if keep_in_memory:  # fitted and written from memory: never read again
                f.data = data
            with open_fits(f.path, data) as hdus:
                for slot in f.slots:
                    exposure = _read(hdus, slot, f, gain, read_noise, detect, detection)
                    f.plain = f.plain or not slot.lsst
                    f.shapes[slot.key] = exposure.getBBoxShape()
                    f.stats[slot.key] = _statistics(task, exposure)
                    if keep_in_memory:
                        cache[n, slot.key] = exposure
        except (ValueError, OSError, TypeError) as err:
            f.error = _reason(err, f.path)
            say(f"skipping {f.path}: {f.error}")
        plain_seen = plain_seen or f.plain
        data = None
    if plain_seen and detect is False and config.gridStatistic == "MEAN":
        say(
            "plain images have no mask planes, so their sources are not masked and the "
            "MEAN bin statistic follows their light: use --detect or --set "
            "gridStatistic=MEANCLIP"
        )

    # 3. references, resume decisions, fits
    groups = _groups(entries)
    references: dict[str, int] = {}
    for key, members in groups.items():
        references[key] = _reference(task, entries, members, key, ref_path)
    for key, members in groups.items():
        _check_shapes(entries, members, key, references[key])
    for f in entries:
        if f.error and f.shapes and not f.said:
            say(f"skipping {f.path}: {f.error}")
            f.said = True
    for n, f in enumerate(entries):
        f_refs = _reference_digest(entries, references, f)
        if resume and not f.error:
            f.kept, why = _resumable(f, digest, f_refs)
            if not f.kept and why:
                say(f"redoing {f.path}: {why}")
    results: dict[tuple[int, str], Any] = {}
    messages: dict[tuple[int, str], str] = {}
    todo = [
        (key, n)
        for key, members in groups.items()
        for n in members
        if n != references[key] and not entries[n].error and not entries[n].kept
    ]
    global_mode = config.matchMode == "GLOBAL"
    fit_bar = bar(None, desc="fitting (compiling)", total=len(todo), unit="image")
    for key, members in groups.items():
        if references[key] < 0:
            continue
        work = [n for k, n in todo if k == key]
        if not work:
            continue
        r = references[key]
        ref_exposure = cache.pop((r, key), None)
        if ref_exposure is None:
            try:
                ref_exposure = _reload(entries[r], key, gain, read_noise, detect)
            except (ValueError, OSError, TypeError) as err:  # changed since it was read
                for n in [r, *work]:
                    entries[
                        n
                    ].error = f"the reference could not be read again: {_reason(err, None)}"
                say(f"cannot read the reference {entries[r].path} again: {_reason(err, None)}")
                continue
        ref_ref = _Ref(_label(entries[r], key), ref_exposure)
        # balanced chunks, each fitted with one length (one compiled program)
        chunk = len(work) if global_mode else chunk_length(len(work), chunk_size)
        for start in range(0, len(work), chunk):
            part = work[start : start + chunk]
            refs = []
            for n in part:
                try:
                    exposure = cache.pop((n, key), None)
                    if exposure is None:
                        exposure = _reload(entries[n], key, gain, read_noise, detect)
                    refs.append((n, _Ref(_label(entries[n], key), exposure)))
                except (ValueError, OSError, TypeError) as err:
                    entries[n].error = _reason(err, entries[n].path)
                    say(f"skipping {entries[n].path}: {entries[n].error}")
            # GLOBAL is one joint solve: a padded copy would weigh in it
            _fit_chunk(task, ref_ref, refs, key, results, messages, 0 if global_mode else chunk)
            fit_bar.update(len(part))
            fit_bar.set_description("fitting")
        del ref_exposure, ref_ref
    fit_bar.close()
    cache.clear()
    _say_effective_model(config, results, say)

    # 4. outputs, one file at a time
    rows: list[ImageRow] = []
    written = kept = failed = 0
    repaired: list[tuple[Path, str]] = []
    for n, f in enumerate(bar(entries, desc="writing", unit="file")):
        held, f.data = f.data, None  # released once this file is written
        if f.error:
            failed += 1
            rows += _failed_rows(f, f.error)
            continue
        if f.kept:
            kept += 1
            rows += _kept_rows(f)
            continue
        problem = next(
            (
                f"the fit of {_label(f, s.key)} failed: {messages.get((n, s.key), 'no model')}"
                for s in f.slots
                if references.get(s.key) != n and (n, s.key) not in results
            ),
            None,
        )
        if problem:
            say(f"nothing written for {f.path}: {problem}")
            failed += 1
            rows += _failed_rows(f, problem, results, references, n)
            continue
        try:
            fixes = _write_outputs(f, n, entries, references, results, config, digest, held)
        except (OSError, ValueError) as err:
            message = _reason(err, f.path)
            say(f"nothing more written for {f.path}: {message}")
            failed += 1
            rows += _failed_rows(f, message, results, references, n)
            continue
        if fixes:
            repaired.append((f.path, fixes[0]))
        written += 1
        rows += _done_rows(f, n, references, results)
    if repaired:
        path, first = repaired[0]
        say(
            f"repaired header cards that astropy would not write in {len(repaired)} file(s), "
            f"e.g. {path}: {first}"
        )
    if table is not None:
        try:
            write_table(summary_table(rows, config), table)
        except OSError as err:
            say(f"cannot write the table {table}: {_reason(err, table)}")
            failed += 1
    return MatchReport(rows, written, kept, failed, 1 if failed else 0)


# -- plan and preparation ----------------------------------------------------------------
def _check_inputs(files: list[Path], ref: Path | None) -> list[_File]:
    if not files:
        raise ValueError("no input files")
    resolved = [f.resolve() for f in files]
    for f, r in zip(files, resolved):
        if resolved.count(r) > 1:
            raise PlanError(f"{f} is listed twice")
    if ref is not None and ref.resolve() not in resolved:
        raise PlanError(f"--ref {ref} is not one of the input files")
    return [_File(f) for f in files]


def prepare_out(out: Path, targets: Sequence[Path], table: Path | None, say) -> None:
    """Create ``out``, check that files can be written there (and in the table's folder),
    remove the temporary files a run killed mid-write left for ``targets``."""
    if out.exists() and not out.is_dir():
        raise PlanError(f"--out {out} exists and is not a directory")
    for folder, what in ((out, "--out"), (None if table is None else table.parent, "--table")):
        if folder is None:
            continue
        try:
            if folder == out:
                folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            name = out if what == "--out" else table
            raise OSError(err.errno, f"cannot write into {what} {name}: {err.strerror}") from err
    for stale in remove_stale_temps([*targets, *([table] if table else [])]):
        say(f"removed {stale}, left by an interrupted run")


# -- reading -----------------------------------------------------------------------------
def _read(hdus, slot, f: _File, gain, read_noise, detect, detection):
    exposure = read_slot(hdus, slot, f.path, gain=gain, read_noise=read_noise)
    if detect or (detect is None and not slot.lsst):
        exposure = detect_sources(exposure, detection)
    return exposure


def _reload(f: _File, key: str, gain, read_noise, detect):
    slot = next(s for s in f.slots if s.key == key)
    with open_fits(f.path, f.data) as hdus:
        return _read(hdus, slot, f, gain, read_noise, detect, Detection())


def _statistics(task, exposure) -> tuple[float, float, float]:
    from ._reference import reference_statistics

    variance, level, coverage = reference_statistics(exposure.image, task._usable(exposure))
    return float(variance), float(level), float(coverage)


# -- references and fits -----------------------------------------------------------------
def _groups(entries: list[_File]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for n, f in enumerate(entries):
        if f.error:
            continue
        for slot in f.slots:
            groups.setdefault(slot.key, []).append(n)
    return groups


def _reference(task, entries, members: list[int], key: str, ref_path) -> int:
    """Index of the reference file of image ``key`` (-1 when there is none)."""
    import jax.numpy as jnp

    from ._reference import select_reference

    if ref_path is not None:
        chosen = next((n for n in members if entries[n].path.resolve() == ref_path), -1)
        if chosen < 0:
            given = next(f for f in entries if f.path.resolve() == ref_path)
            why = (
                f"the reference {given.path} could not be read"
                if given.error
                else f"the reference {given.path} has no image {key}"
            )
            for n in members:
                entries[n].error = entries[n].error or why
        return chosen
    stats = [entries[n].stats[key] for n in members]
    variance, level, coverage = (jnp.asarray(c, dtype=float) for c in zip(*stats))
    best = int(select_reference(task.referenceCosts(variance, level, coverage)))
    if best < 0:
        for n in members:
            entries[n].error = entries[n].error or f"no exposure has a usable pixel in {key}"
        return -1
    return members[best]


def _check_shapes(entries, members, key, r) -> None:
    if r < 0:
        return
    shape = entries[r].shapes[key]
    for n in members:
        other = entries[n].shapes[key]
        if other != shape and not entries[n].error:
            entries[n].error = (
                f"{_label(entries[n], key)} is {other[0]}x{other[1]} pixels but the reference "
                f"{_label(entries[r], key)} is {shape[0]}x{shape[1]}; all exposures must "
                "share one pixel grid"
            )


def _fit_chunk(task, ref_ref, refs, key, results, messages, size) -> None:
    """Fit one chunk with `MatchBackgroundsTask.run`; ``refs`` is padded to ``size``
    with repeats of its first exposure (results dropped), so that every chunk of a
    run, the last one too, is one call of one compiled program."""
    from ._model import BackgroundModel
    from ._task import describe_ref

    if not refs:
        return
    task.log.handlers[0].records.clear()
    padding = [refs[0][1]] * max(size - len(refs), 0)
    try:
        result = task.run(
            [ref_ref] + [r for _, r in refs] + padding,
            "fits",
            refExpDataRef=ref_ref,
        )
    except (ValueError, TypeError, RuntimeError) as err:
        for n, _ in refs:
            messages[n, key] = _reason(err, None)
        return
    infos = result.backgroundInfoList[1:]
    logged = list(task.log.handlers[0].records)
    for place, ((n, r), info) in enumerate(zip(refs, infos), start=1):
        if info.backgroundModel is not None:
            # Kept until written: the coefficients only (a few kB), not the model image
            # (the size of the exposure); it is evaluated again when written.
            model = info.backgroundModel
            info.backgroundModel = BackgroundModel(model.coefficients, model.basis)
            results[n, key] = info
        else:  # the task names it "expRefList[place] (label): why"
            said = f"{describe_ref(place, r)}: "
            messages[n, key] = next(
                (m.split(said, 1)[-1] for m in logged if said in m), "the fit failed"
            )


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(record.getMessage())


def _capture_log() -> logging.Logger:
    """A logger of its own (not registered globally) that keeps the task's messages."""
    log = logging.Logger("jaxmatch.match_files")
    log.propagate = False
    log.addHandler(_Records())
    return log


def _say_effective_model(config, results, say) -> None:
    if not results:
        return
    basis = next(iter(results.values())).backgroundModel.basis
    effective = describe_basis(basis)
    say(f"model: {effective} (config: {describe_config(config)})")
    if config.usePolynomial:
        wanted_x = config.order  # LSST: `order` along x, `orderY` (or `order`) along y
        wanted_y = config.orderY if config.orderY is not None else config.order
        if (basis.order_y, basis.order_x) != (wanted_y, wanted_x):
            say(
                f"the polynomial order was reduced from {wanted_y}x{wanted_x} to "
                f"{basis.order_y}x{basis.order_x} (too few bins; undersampleStyle="
                f"{config.undersampleStyle})"
            )
    elif basis.style != config.interpStyle:
        say(
            f"the spline style was reduced from {config.interpStyle} to {basis.style}: "
            f"binSize {config.binSize} gives too few bins on {basis.shape[0]}x{basis.shape[1]} "
            f"images (undersampleStyle={config.undersampleStyle})"
        )


def describe_basis(basis) -> str:
    """The effective model in words: ``"spline LINEAR"``, ``"chebyshev 2x2"``."""
    if basis.kind == "CHEBYSHEV":
        return f"chebyshev {basis.order_y}x{basis.order_x}"
    return f"spline {basis.style}"


def describe_config(config) -> str:
    """The config fields that differ from the defaults, ``KEY=VALUE`` (or ``defaults``)."""
    from ._config import MatchBackgroundsConfig

    default = MatchBackgroundsConfig().toDict()
    changed = [f"{k}={v}" for k, v in config.toDict().items() if default.get(k) != v]
    return " ".join(changed) or "defaults"


def config_digest(config) -> str:
    """SHA-256 (first 16 hex digits) of the config as sorted JSON."""
    text = json.dumps(config.toDict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _reference_digest(entries, references, f: _File) -> str:
    parts = [
        f"{s.key}:{entries[references[s.key]].checksum if references.get(s.key, -1) >= 0 else ''}"
        for s in f.slots
    ]
    return hashlib.sha256(";".join(parts).encode()).hexdigest()[:16]


def _resumable(f: _File, digest: str, refs: str) -> tuple[bool, str]:
    """(keep, why not): whether ``f``'s outputs were made by this very run."""
    o = f.outputs
    assert o is not None  # planned before any file is matched
    needed = [o.matched, *([o.model_image] if o.model_image else [])]
    if not o.matched.exists():
        return False, ""
    try:
        with fits.open(o.matched) as hdus:
            # astropy's annotations type the items of an HDUList as HDUList
            primary = hdus[0].header.copy()  # pyright: ignore[reportAttributeAccessIssue]
            recorded = {
                slot.key: hdus[slot.index].header.copy()  # pyright: ignore[reportAttributeAccessIssue]
                for slot in f.slots
                if slot.index < len(hdus)
            }
    except Exception as err:  # noqa: BLE001 - damaged output: redo
        return False, f"its output {o.matched} cannot be read ({_reason(err, None)})"
    if primary.get("JMINSUM") != f.checksum:
        return False, "the input changed since its outputs were written (checksum)"
    if primary.get("JMCFGSUM") != digest:
        return False, "its outputs were made with another config"
    if primary.get("JMREFSUM") != refs:
        return False, "its outputs were matched to another reference"
    for slot in f.slots:
        header = recorded.get(slot.key)
        if header is None or "JMROLE" not in header:
            return False, f"its output {o.matched} lacks image {slot.key}"
        if header["JMROLE"] == "MATCHED":
            needed.append(o.models[slot.key])
    missing = [p for p in needed if not p.exists()]
    if missing:
        return False, f"{missing[0]} is missing"
    f.recorded = recorded
    return True, ""


# -- writing -----------------------------------------------------------------------------
def _write_outputs(f: _File, n, entries, references, results, config, digest, held) -> list[str]:
    """Write ``f``'s outputs; ``held``: its bytes when still in memory (else read once
    here, for both the pixels and the layout and cards the outputs copy)."""
    from ._fitsfile import native
    from ._persist import writeModel

    o = f.outputs
    assert o is not None  # planned before any file is matched
    source_name = ascii_card_text(f.path.name)
    primary = [
        fits.Card("JMINPUT", source_name, "jaxmatch: input file (percent-encoded)"),
        fits.Card("JMINSUM", f.checksum, "jaxmatch: SHA-256 of the input file"),
        fits.Card("JMCFGSUM", digest, "jaxmatch: digest of the config"),
        fits.Card("JMREFSUM", _reference_digest(entries, references, f), "jaxmatch: reference"),
        fits.Card("JMCONFIG", json.dumps(config.toDict(), sort_keys=True, default=str)),
    ]
    cards: dict[int, list[fits.Card]] = {}
    matched: dict[int, np.ndarray] = {}
    models: dict[int, np.ndarray] = {}
    held = read_bytes(f.path) if held is None else held
    with open_fits(f.path, held) as hdus:
        for slot in f.slots:
            r = references[slot.key]
            ref_name = ascii_card_text(entries[r].path.name)
            # astropy's annotations type the items of an HDUList as HDUList
            data = native(hdus[slot.index].data)  # pyright: ignore[reportAttributeAccessIssue]
            data = data if np.issubdtype(data.dtype, np.floating) else data.astype(np.float32)
            own = [fits.Card("JMREF", ref_name, "jaxmatch: the reference file")]
            if r == n:
                own.append(fits.Card("JMROLE", "REFERENCE", "jaxmatch: unchanged"))
                matched[slot.index] = data
                models[slot.index] = np.zeros(data.shape, dtype=data.dtype)
            else:
                info = results[n, slot.key]
                model = np.asarray(info.backgroundModel.getImage()).astype(data.dtype)
                matched[slot.index] = data + model
                models[slot.index] = model
                basis = info.backgroundModel.basis
                own += [
                    fits.Card("JMROLE", "MATCHED", "jaxmatch: image + background model"),
                    fits.Card("JMMODEL", ascii_card_text(o.models[slot.key].name)),
                    fits.Card("JMKIND", basis.kind, "jaxmatch: effective model"),
                    fits.Card("JMSTYLE", basis.style),
                    fits.Card("JMORDY", basis.order_y),
                    fits.Card("JMORDX", basis.order_x),
                ]
                for keyword, value in (
                    ("JMFITRMS", info.fitRMS),
                    ("JMMSE", info.matchedMSE),
                    ("JMDIFVAR", info.diffImVar),
                ):
                    if value is not None and math.isfinite(value):
                        own.append(fits.Card(keyword, float(value)))
                writeModel(
                    info.backgroundModel,
                    o.models[slot.key],
                    config=config,
                    header={"JMINPUT": source_name, "JMREF": ref_name, "JMIMAGE": slot.key},
                )
            cards.setdefault(slot.index, []).extend(own)
    if 0 not in cards:
        cards[0] = []
    cards[0] = primary + cards[0]
    refs = ascii_card_text(_ref_names(entries, references, f))
    cards[0].append(fits.Card("HISTORY", f"jaxmatch: background matched to {refs}"))
    if o.model_image is not None:
        write_like(f.path, o.model_image, models, cards, images_only=True, data=held)
    return write_like(f.path, o.matched, matched, cards, data=held)


def _ref_names(entries, references, f: _File) -> str:
    return ", ".join(sorted({entries[references[s.key]].path.name for s in f.slots}))


# -- rows --------------------------------------------------------------------------------
def _label(f: _File, key: str) -> str:
    return str(f.path) if len(f.slots) <= 1 else f"{f.path}[{key}]"


def _row(f, key, status, *, reference=False, info=None, message="") -> ImageRow:
    def value(name):
        v = None if info is None else getattr(info, name, None)
        return float("nan") if v is None else float(v)

    model = (
        ""
        if info is None or info.backgroundModel is None
        else describe_basis(info.backgroundModel.basis)
    )
    return ImageRow(
        str(f.path), f.names.get(key, key), status, reference, value("fitRMS"), value("matchedMSE"),
        value("diffImVar"), model, message,
    )  # fmt: skip


def _done_rows(f, n, references, results) -> list[ImageRow]:
    return [
        _row(f, s.key, "reference", reference=True)
        if references[s.key] == n
        else _row(f, s.key, "matched", info=results[n, s.key])
        for s in f.slots
    ]


def _failed_rows(f, message, results=None, references=None, n=None) -> list[ImageRow]:
    slots = f.slots or [ImageSlot(0, SINGLE, False)]
    return [
        _row(
            f,
            s.key,
            "failed",
            reference=bool(references) and references.get(s.key) == n,
            info=None if results is None else results.get((n, s.key)),
            message=message,
        )
        for s in slots
    ]


def _kept_rows(f) -> list[ImageRow]:
    rows = []
    for s in f.slots:
        h = f.recorded[s.key]
        model = ""
        if h.get("JMKIND") == "CHEBYSHEV":
            model = f"chebyshev {h.get('JMORDY')}x{h.get('JMORDX')}"
        elif h.get("JMKIND") == "SPLINE":
            model = f"spline {h.get('JMSTYLE')}"
        rows.append(
            ImageRow(
                str(f.path),
                f.names.get(s.key, s.key),
                "kept",
                h.get("JMROLE") == "REFERENCE",
                float(h.get("JMFITRMS", math.nan)),
                float(h.get("JMMSE", math.nan)),
                float(h.get("JMDIFVAR", math.nan)),
                model,
                "outputs of an earlier run kept",
            )  # fmt: skip
        )
    return rows


# -- tables ------------------------------------------------------------------------------
_UNITS = {
    "fitRMS": "adu",
    "matchedMSE": "adu2",
    "diffImVar": "adu2",
    "mismatch_before": "adu",
    "mismatch_after": "adu",
}
_FORMATS = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".fits": "fits", ".json": "json"}


def table_format(path: Path) -> str:
    """The table format of a file name: ECSV, CSV, FITS or JSON (`ValueError` otherwise)."""
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(f"--table {path}: use a .ecsv, .csv, .fits or .json file name")
    return _FORMATS[suffix]


def summary_table(rows: Sequence[Any], config=None):
    """The summary as an `astropy.table.Table` with units (fitRMS [adu], matchedMSE and
    diffImVar [adu²]); the config and effective model in ``meta``."""
    from astropy import units as u
    from astropy.table import Table

    rows = [r._asdict() if hasattr(r, "_asdict") else dict(r) for r in rows]
    names = list(rows[0]) if rows else list(ImageRow._fields)
    columns = {}
    for name in names:
        values = [r[name] for r in rows]
        if name in _UNITS:
            values = [math.nan if v is None else float(v) for v in values]
            columns[name] = u.Quantity(values, u.Unit(_UNITS[name].replace("adu2", "adu^2")))
        else:
            columns[name] = values
    table = Table(columns, names=names)
    if config is not None:
        # astropy annotates Table.meta as optional; a Table always has a meta dict
        table.meta["config"] = config.toDict()  # pyright: ignore[reportOptionalSubscript]
        table.meta["config_digest"] = config_digest(config)  # pyright: ignore[reportOptionalSubscript]
    return table


def write_table(table, path: Path) -> None:
    """Write ``table`` atomically in the format its name gives; JSON has ``null`` for NaN."""
    import io

    from ._atomic import atomic_write

    fmt = table_format(path)
    if fmt == "json":
        records = [
            {name: _json_value(table[name][i]) for name in table.colnames}
            for i in range(len(table))
        ]
        data = (json.dumps(records, indent=2, allow_nan=False) + "\n").encode()
    else:
        buffer = io.BytesIO() if fmt == "fits" else io.StringIO()
        if fmt == "ascii.ecsv":
            table = _json_safe_meta(table)
        if fmt == "fits":  # FITS tables hold ASCII: file names percent-encoded
            table = _json_safe_meta(table)
            for name in table.colnames:
                if table[name].dtype.kind == "U":
                    table[name] = [ascii_card_text(str(v)) for v in table[name]]
            table.meta = {"CONFIG": json.dumps(table.meta.get("config"), sort_keys=True)}
        table.write(buffer, format=fmt)
        data = buffer.getvalue()
        data = data if isinstance(data, bytes) else data.encode()
    atomic_write(path, lambda f: f.write(data))


def _json_value(value):
    if hasattr(value, "unit"):
        value = value.value
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.str_):
        return str(value)
    return value


def _json_safe_meta(table):
    table = table.copy(copy_data=False)
    table.meta = json.loads(json.dumps(dict(table.meta), default=str))
    return table


def no_progress(iterable=None, **kwargs):
    """A silent stand-in for a tqdm progress bar (iterable, context manager, update)."""
    return _Silent(iterable)


class _Silent:
    def __init__(self, iterable):
        self._iterable = iterable

    def __iter__(self):
        return iter(self._iterable)

    def update(self, n=1):
        pass

    def set_description(self, text):
        pass

    def close(self):
        pass


def _reason(err: BaseException, path) -> str:
    """A one-line reason, without the file name repeated at its start."""
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror
        if err.filename is not None and str(err.filename) not in text:
            text = f"{err.filename}: {text}"
    else:
        text = str(err)
    text = " ".join(text.split()) or type(err).__name__
    if path is not None:
        for prefix in (f"cannot read {path} as a FITS exposure: ", f"{path}: "):
            if text.startswith(prefix):
                return text[len(prefix) :]
    return text


__all__ = [
    "ImageRow",
    "MatchReport",
    "PlanError",
    "STATUSES",
    "describe_basis",
    "describe_config",
    "match_files",
    "summary_table",
    "write_table",
]
