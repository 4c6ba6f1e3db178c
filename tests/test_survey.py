"""Tests of `jaxmatch.survey` on real Dask clusters (worker processes, 127.0.0.1 only).

Every worker process imports JAX and compiles jaxmatch's programs once, which is
the cost of these tests. The reference run (``jaxmatch match`` per patch, in one
subprocess, float32 as users run it) fills a persistent compilation cache that the
workers then load, and one module-wide `LocalCluster` of two workers serves most
tests. Outputs are compared with the reference bit for bit: a survey must write
exactly what ``jaxmatch match`` writes.
"""

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
from astropy.io import fits
from distributed import Client, LocalCluster

from jaxmatch import Exposure, simulate_patch, survey
from jaxmatch.cli import main
from jaxmatch.io import writeExposure
from jaxmatch.survey._client import _result

FAST = ["--set", "binSize=16", "--set", "interpStyle=NATURAL_SPLINE"]
PATCHES = ["p0", "p 1", "pätch 2"]  # spaces and accents in folder names
REF = "* 1.fits"  # the reference of every patch: "visit 1.fits"


def _write_patch(folder: Path, seed: int, n: int = 3, side: int = 64) -> None:
    folder.mkdir(parents=True)
    patch = simulate_patch(n, (side, side), seed=seed)
    for i in range(n):
        exposure = Exposure(
            patch.images[i].astype(np.float32),  # float32 as LSST's warps
            patch.masks[i],
            patch.variances[i].astype(np.float32),
            mask_planes=patch.mask_planes,
        )
        writeExposure(exposure, folder / f"visit {i}.fits", header={"EXPID": 100 * seed + i})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three good patches (3 x 64² each, plus a non-FITS file), a corrupt one, an empty one."""
    root = tmp_path_factory.mktemp("survey")
    for seed, name in enumerate(PATCHES):
        _write_patch(root / name, seed)
    (root / "p0" / "notes.txt").write_text("not an exposure\n")
    bad = root / "bad"
    _write_patch(bad, 7, n=2)
    good = (bad / "visit 0.fits").read_bytes()
    (bad / "visit 0.fits").write_bytes(good[:5000])  # truncated
    (root / "empty").mkdir()
    (root / "cache").mkdir()
    return root


@pytest.fixture(scope="module")
def reference(data):
    """``jaxmatch match`` run on each good patch in one plain process: ``root/ref/<patch>``."""
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from jaxmatch.cli import main
        root, fast, patches = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3:]
        for name in patches:
            files = sorted(str(p) for p in (root / name).glob("*.fits"))
            ref = next(f for f in files if f.endswith(" 1.fits"))
            out = root / "ref" / name
            code = main(["match", *files, "--out", str(out), "--table", str(out / "table.json"),
                         "--ref", ref, *fast])
            assert code == 0, (name, code)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(data), " ".join(FAST), *PATCHES],
        env=_cache_env(data / "cache"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    return data / "ref"


def _cache_env(cache: Path) -> dict:
    """The environment with JAX's persistent compilation cache in ``cache`` (every program)."""
    return dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )


@pytest.fixture(scope="module")
def client(reference):
    """A LocalCluster of two single-thread worker processes on 127.0.0.1 (after the reference)."""
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            worker_dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"dashboard": False},
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def surveyed(data, client):
    """The good patches surveyed once on the module's cluster: (out folder, table)."""
    out = data / "out"
    table = run(data, out, client=client, table=data / "survey.csv")
    return out, table


def run(data, out, **kwargs):
    """`survey.run_survey` over the good patches with the test options."""
    kwargs.setdefault("compilation_cache", data / "cache")
    return survey.run_survey(
        [data / p for p in PATCHES], out, options=FAST, ref=REF, progress=False, **kwargs
    )


def assert_same_outputs(got: Path, want: Path, *, exact: bool = True) -> None:
    """Same files; FITS files equal card by card and pixel by pixel; same tables.

    ``exact=False`` (a resumed run, which re-fits only the missing exposures, in a
    smaller batch): pixels and diagnostics equal to float32 rounding (1e-3 ADU,
    1e-5 relative; the noise σ is ~20 ADU)."""
    names = sorted(p.name for p in got.iterdir())
    assert names == sorted(p.name for p in want.iterdir())
    for name in names:
        if name.endswith(".json"):
            rows_got = json.loads((got / name).read_text())
            rows_want = json.loads((want / name).read_text())
            assert len(rows_got) == len(rows_want), name
            for g, w in zip(rows_got, rows_want):
                if not exact:  # kept or re-fitted: the values to float32 rounding
                    for key in ("fitRMS", "matchedMSE", "diffImVar"):
                        if g[key] is not None and w[key] is not None:
                            assert g[key] == pytest.approx(w[key], rel=1e-5), (name, key)
                    g, w = _values(g), _values(w)
                assert g == w, name
            continue
        with fits.open(got / name) as a, fits.open(want / name) as b:
            assert len(a) == len(b), name
            for ha, hb in zip(a, b):
                if exact:
                    assert ha.header == hb.header, name
                else:
                    assert list(ha.header) == list(hb.header), name
                    for key, value in hb.header.items():
                        if isinstance(value, float):
                            assert ha.header[key] == pytest.approx(value, rel=1e-5), (name, key)
                        elif key not in ("HISTORY", "COMMENT"):
                            assert ha.header[key] == value, (name, key)
                if hb.data is None:
                    assert ha.data is None
                elif exact:
                    np.testing.assert_array_equal(ha.data, hb.data, err_msg=name)
                else:
                    np.testing.assert_allclose(ha.data, hb.data, rtol=1e-5, atol=1e-3, err_msg=name)


def _values(row: dict) -> dict:
    """A match-table row without its outcome and diagnostics (compared apart)."""
    omitted = ("status", "message", "fitRMS", "matchedMSE", "diffImVar")
    return {k: v for k, v in row.items() if k not in omitted}


def _listening(pid: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process(pid).net_connections("tcp") if c.status == "LISTEN"}


# -- the survey on the module's cluster ------------------------------------------------------
def test_survey_writes_what_match_writes_per_patch(data, reference, client, surveyed):
    out, table = surveyed
    for name in PATCHES:
        assert_same_outputs(out / name, reference / name)
    assert sorted(p.name for p in out.iterdir()) == sorted(PATCHES)
    # One row per exposure, the match table's values, the patch and its outcome.
    assert len(table) == 3 * len(PATCHES)
    for name in PATCHES:
        rows = table[table["patch"] == name]
        want = json.loads((reference / name / "table.json").read_text())
        assert list(rows["file"]) == [r["file"] for r in want]
        assert list(rows["reference"]) == [r["reference"] for r in want]
        for r, w in zip(rows, want):
            for key in ("fitRMS", "matchedMSE", "diffImVar"):
                assert (r[key] is np.ma.masked) if w[key] is None else r[key] == w[key]
    assert set(table["patch_status"]) == {"ok"}
    assert set(table["patch_exit"]) == {0}
    assert [bool(v) for v in table["reference"]].count(True) == len(PATCHES)
    is_ref = np.asarray([bool(v) for v in table["reference"]])
    assert all(e.endswith(" 1.fits") for e in table["file"][is_ref])
    # The CSV file holds the same rows.
    csv = (data / "survey.csv").read_text().splitlines()
    assert csv[0].split(",")[:3] == ["patch", "file", "image"]
    assert len(csv) == 1 + len(table)


def test_workers_compile_once_and_reuse_programs(surveyed):
    """A worker compiles for its first patch only: later patches of one shape compile nothing."""
    _, table = surveyed
    per_patch = {
        (p, w): c for p, w, c in zip(table["patch"], table["worker"], table["patch_compiles"])
    }
    workers = {w for _, w in per_patch}
    assert len(per_patch) == len(PATCHES) and len(workers) <= 2  # so a worker ran >= 2 patches
    for worker in workers:
        counts = sorted(c for (_, w), c in per_patch.items() if w == worker)
        assert counts[0] == 0 or len(counts) == 1, (worker, counts)
        assert sum(c > 0 for c in counts) <= 1, (worker, counts)  # only the worker's first patch
    assert max(per_patch.values()) > 10  # the first patch on a worker did compile (or load)


def test_cluster_listens_on_localhost_only(client):
    pids = client.run(os.getpid)
    for pid in [os.getpid(), *pids.values()]:
        assert _listening(pid) <= {"127.0.0.1"}, pid


def test_killed_worker_loses_nothing(data, reference, client, tmp_path):
    """SIGKILL a worker in the middle of a patch: the patch moves, the outputs are unchanged."""
    client.restart()  # fresh workers: each one's first patch loads ~100 programs (seconds)
    pids = client.run(os.getpid)
    assert len(pids) == 2
    killed = {}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        job = pool.submit(run, data, tmp_path / "killed", client=client)
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline and not job.done():
            if any(keys for keys in client.processing().values()):
                time.sleep(0.3)  # into the patch: importing jaxmatch, loading its programs
                busy = [(w, k) for w, k in client.processing().items() if k and w in pids]
                if busy:
                    (worker, keys), *_ = busy
                    os.kill(pids[worker], signal.SIGKILL)
                    killed = {"pid": pids[worker], "key": next(iter(keys))}
            time.sleep(0.02)
        table = job.result(timeout=600)
    assert killed, "no patch was seen running"
    assert set(table["patch_status"]) == {"ok"} and len(table) == 9
    index = int(str(killed["key"]).split("-")[2])  # the key is jaxmatch-patch-<index>-<name>
    workers = set(table["worker"][table["patch"] == PATCHES[index]])
    assert workers and not any(w.endswith(f":{killed['pid']}") for w in workers)  # moved
    for name in PATCHES:
        assert_same_outputs(tmp_path / "killed" / name, reference / name)
    assert not list((tmp_path / "killed").rglob(".*.tmp"))


def test_bad_patches_are_reported_and_the_survey_goes_on(data, reference, capsys):
    """The command line with its embedded cluster (one worker): exit status 1, the table
    says why, the good patch is written."""
    out, table = data / "out-bad", data / "bad.json"
    code = main(
        [
            "survey",
            str(data / "p0"),
            str(data / "bad"),
            str(data / "empty"),
            "--out",
            str(out),
            "--workers",
            "1",
            "--dashboard-address",
            "127.0.0.1:0",
            "--ref",
            REF,
            "--table",
            str(table),
            "--compilation-cache",
            str(data / "cache"),
            *FAST,
        ]
    )
    assert code == 1
    rows = json.loads(table.read_text())
    by_patch = {}
    for r in rows:
        by_patch.setdefault(r["patch"], []).append(r)
    assert sorted(by_patch) == ["bad", "empty", "p0"]
    assert [r["patch_status"] for r in by_patch["p0"]] == ["ok"] * 3
    assert_same_outputs(out / "p0", reference / "p0")
    # The match command keeps going past the truncated file: one row per file of the
    # patch, the truncated one failed, the patch reported failed (exit 1).
    bad_rows = by_patch["bad"]
    assert [(r["patch_status"], r["patch_exit"]) for r in bad_rows] == [("failed", 1)] * 2
    failed = [r for r in bad_rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["file"].endswith("visit 0.fits")
    (empty,) = by_patch["empty"]
    assert empty["patch_status"] == "failed" and "no FITS file" in empty["patch_message"]
    captured = capsys.readouterr()
    assert "2 exposure(s), failed" in captured.out  # one line per patch on stdout
    assert "failed: bad, empty" in captured.err


def test_rerun_resumes_an_interrupted_survey(data, reference, client, surveyed, tmp_path, capsys):
    """What a killed run leaves (a patch missing, one half written, a temporary file) is
    finished by a rerun with skip_existing, which keeps the files already written."""
    out = tmp_path / "out"
    shutil.copytree(surveyed[0], out)
    shutil.rmtree(out / "p 1")
    for name in ("visit 0.fits", "visit 0.model.fits", "table.json"):
        (out / "pätch 2" / name).unlink()
    stale = out / "pätch 2" / ".visit 0.fits.abcd1234.tmp"
    stale.write_bytes(b"half a file")
    kept = {p: p.stat().st_mtime_ns for p in (out / "p0").iterdir() if p.suffix == ".fits"}
    time.sleep(0.01)
    capsys.readouterr()
    table = survey.run_survey(
        [data / p for p in PATCHES],
        out,
        client=client,
        options=FAST,
        ref=REF,
        skip_existing=True,
        compilation_cache=data / "cache",
        progress=True,
    )
    assert set(table["patch_status"]) == {"ok"} and len(table) == 9
    assert "patches: 100%" in capsys.readouterr().err  # the progress bar over the survey
    assert not stale.exists()
    for name in PATCHES:
        assert_same_outputs(out / name, reference / name, exact=False)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # kept, not rewritten


# -- an external scheduler and worker ----------------------------------------------------------
def test_external_scheduler_and_worker(data, reference, tmp_path):
    """``dask scheduler`` and ``dask worker`` processes started here, on 127.0.0.1."""
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    address_file = tmp_path / "scheduler.json"
    local = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    env = _cache_env(data / "cache")
    logs = (tmp_path / "scheduler.log").open("w"), (tmp_path / "worker.log").open("w")
    procs = [
        subprocess.Popen(
            [*dask, "--port", "0", "--scheduler-file", str(address_file), "--no-dashboard", *local],
            stdout=logs[0],
            stderr=subprocess.STDOUT,
            env=env,
        )
    ]
    try:
        deadline = time.monotonic() + 120
        while not address_file.exists() and time.monotonic() < deadline:
            assert procs[0].poll() is None, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.1)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_worker",
                    "--scheduler-file",
                    str(address_file),
                    "--no-nanny",
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "1",
                    *local,
                ],
                stdout=logs[1],
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
        address = json.loads(address_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        with Client(scheduler_file=str(address_file), timeout="60s") as c:
            c.wait_for_workers(1, timeout=120)
            for pid in [procs[0].pid, *c.run(os.getpid).values()]:
                assert _listening(pid) <= {"127.0.0.1"}
        out = tmp_path / "out"
        code = main(
            [
                "survey",
                *(str(data / p) for p in PATCHES[:2]),
                "--out",
                str(out),
                "--scheduler",
                address,
                "--ref",
                REF,
                *FAST,
            ]
        )
        assert code == 0
        for name in PATCHES[:2]:
            assert_same_outputs(out / name, reference / name)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


# -- the parts that need no cluster --------------------------------------------------------------
def test_patch_files_are_the_fits_files(tmp_path):
    for name in ["b.fits", "a.FITS", "c.fits.gz", "d.fit", "x.txt", ".hidden.fits", "e.fits.tmp"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.fits").mkdir()
    assert [p.name for p in survey.patch_files(tmp_path)] == [
        "a.FITS",
        "b.fits",
        "c.fits.gz",
        "d.fit",
    ]


def test_plan_refuses_missing_repeated_and_nested_patches(tmp_path):
    for d in ["a/p", "b/p", "q"]:
        (tmp_path / d).mkdir(parents=True)
    with pytest.raises(survey.SurveyUsageError, match="same name 'p'"):
        survey.plan_survey([tmp_path / "a/p", tmp_path / "b/p"], tmp_path / "out")
    with pytest.raises(survey.SurveyUsageError, match="does not exist"):
        survey.plan_survey([tmp_path / "nope"], tmp_path / "out")
    with pytest.raises(survey.SurveyUsageError, match="inside the output folder"):
        survey.plan_survey([tmp_path / "a/p"], tmp_path / "a")
    (job,) = survey.plan_survey([tmp_path / "q"], "rel-out", options=["--set", "binSize=8"])
    assert job.name == "q" and Path(job.out) == Path.cwd() / "rel-out" / "q"
    assert job.options == ("--set", "binSize=8") and Path(job.folder).is_absolute()


def test_bad_options_are_refused_before_any_work(tmp_path):
    (tmp_path / "p").mkdir()
    with pytest.raises(survey.SurveyUsageError, match="unknown config field 'binsize'"):
        survey.check_options(["--set", "binsize=8"])
    survey.check_options(["--set", "binSize=8", "--gain", "2"])  # accepted: nothing raised
    with pytest.raises(survey.SurveyUsageError, match="unknown config field"):
        survey.run_survey([tmp_path / "p"], tmp_path / "out", options=["--set", "nope=1"])
    assert not (tmp_path / "out").exists()  # refused before the output folder was made
    code = main(["survey", str(tmp_path / "p"), "--out", str(tmp_path / "o"), "--set", "x=1"])
    assert code == 2


def test_a_reference_pattern_matching_several_files_fails_the_patch(tmp_path):
    for name in ["v1.fits", "v10.fits"]:
        (tmp_path / name).write_bytes(b"")
    job = survey.PatchJob("p", str(tmp_path), str(tmp_path / "out"), (), ref="v1*")
    result = survey.match_patch(job)
    assert result.exit_code == 2 and "matches 2 files" in result.message
    assert result.exposures == 2 and result.rows == ()


def test_survey_table_masks_what_is_undefined(tmp_path):
    rows = (
        dict(exposure="a.fits", reference="yes", fitRMS=None),
        dict(exposure="b.fits", reference="no", fitRMS=0.25),
    )
    results = [
        survey.PatchResult("p", 0, "", rows, 2, 1.5, 7, "h:1"),
        survey.PatchResult("q", 1, "error: x.fits: bad", (), 1, 0.1, 0, "h:2"),
    ]
    table = survey.survey_table(results)
    assert table.colnames == ["patch", "exposure", "reference", "fitRMS", *survey.PATCH_COLUMNS]
    assert list(table["patch"]) == ["p", "p", "q"]
    assert table["fitRMS"].mask.tolist() == [True, False, True] and table["fitRMS"][1] == 0.25
    assert list(table["patch_status"]) == ["ok", "ok", "failed"]
    assert table["exposure"].mask.tolist() == [False, False, True]
    survey.write_table(table, tmp_path / "t.json")
    back = json.loads((tmp_path / "t.json").read_text())
    assert back[0]["fitRMS"] is None and back[1]["fitRMS"] == 0.25 and back[2]["exposure"] is None
    assert back[2]["patch_message"] == "error: x.fits: bad" and back[0]["patch_compiles"] == 7
    survey.write_table(table, tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[1].startswith("p,a.fits,yes,,ok,0,") and lines[3].startswith("q,,,,failed,1,")


def test_a_task_that_killed_its_workers_is_a_failed_patch():
    """What Dask reports after allowed-failures worker deaths becomes the patch's row."""
    from distributed import KilledWorker

    class Failed:  # the two members of a distributed.Future that `_result` reads
        status = "error"

        def exception(self):
            return KilledWorker("jaxmatch-patch-0-p", SimpleNamespace(address="tcp://h:1"), 3)

    job = survey.PatchJob("p", "/data/p", "/out/p", ())
    result = _result(Failed(), job)
    assert result.exit_code == -1 and result.name == "p" and result.rows == ()
    assert result.message == (
        "4 workers died while matching this patch (out of memory?); the last one was tcp://h:1"
    )
    (row,) = survey.survey_table([result])
    assert row["patch_status"] == "failed" and row["patch_exit"] == -1


def test_without_dask_the_message_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # "import distributed" fails
    (tmp_path / "p").mkdir()
    with pytest.raises(ImportError, match=r'pip install "\.\[survey\]"'):
        survey.run_survey([tmp_path / "p"], tmp_path / "out")
    assert main(["survey", str(tmp_path / "p"), "--out", str(tmp_path / "out")]) == 1
    assert "jaxmatch[survey]" in capsys.readouterr().err
