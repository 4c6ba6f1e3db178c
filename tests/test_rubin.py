"""Tests of the Rubin Gen3 integration (`jaxmatch.rubin`) on a real butler repository.

They need the extra ``pip install ".[lsst]"``; without it the tests that use lsst
are skipped (`pytest.importorskip`), the import-hygiene tests still run.

Cost: one temporary repository (2 patches x 3 visits of 64x64 float32 warps)
shared by the module; three compilations in this process (REFERENCE and GLOBAL,
a degree-2 Chebyshev fit, the cheapest to compile) and one ``pipetask run -j 2``
whose two spawned workers import JAX and compile once each.
"""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmatch import Exposure, MatchBackgroundsConfig, MatchBackgroundsTask
from jaxmatch.io import applyModel, readModel, writeExposure, writeModel

PATCHES, VISITS, SIZE = 2, 3, 64
# Cheap to compile and to fit on 64 x 64 warps: 4 x 4 bins, a degree-2 polynomial.
FAST = {"binSize": 16, "usePolynomial": True, "order": 2}
WARP_KEYS = dict(instrument="SimCam", skymap="jaxmatch_demo", tract=0)


# -- without lsst -----------------------------------------------------------------------
def test_import_jaxmatch_does_not_import_lsst():
    code = (
        "import sys, jaxmatch, jaxmatch.rubin, jaxmatch.rubin.demo, jaxmatch.cli\n"
        "jaxmatch.cli._parser()\n"
        "bad = sorted(m for m in sys.modules if m == 'lsst' or m.startswith('lsst.'))\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr


def test_missing_middleware_names_the_extra(monkeypatch):
    import jaxmatch.rubin as rubin

    monkeypatch.setitem(sys.modules, "lsst.pipe.base", None)  # import now fails
    with pytest.raises(ImportError, match=r"jaxmatch\[lsst\]"):
        rubin.require_lsst()


def test_unknown_attribute():
    import jaxmatch.rubin as rubin

    with pytest.raises(AttributeError, match="noSuchThing"):
        rubin.noSuchThing  # noqa: B018


def test_shipped_files_exist():
    import jaxmatch.rubin as rubin

    for path in (rubin.SEED_CONFIG, rubin.PIPELINE, rubin.CONFIG_DIR / "storageClasses.yaml"):
        assert path.is_file(), path


# -- the config -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def task_module():
    pytest.importorskip("lsst.pipe.base")
    pytest.importorskip("lsst.daf.butler")
    from jaxmatch.rubin import task

    return task


def test_pex_config_mirrors_the_dataclass(task_module):
    import dataclasses

    config = task_module.MatchBackgroundsPipelineConfig()
    reference = MatchBackgroundsConfig()
    for field in dataclasses.fields(MatchBackgroundsConfig):
        value = getattr(config, field.name)
        expected = getattr(reference, field.name)
        assert (list(value) if field.name == "badMaskPlanes" else value) == (
            list(expected) if field.name == "badMaskPlanes" else expected
        ), field.name
        doc = type(config)._fields[field.name].doc
        assert doc and "See jaxmatch" not in doc, field.name  # parsed from the docstring
    assert config.toMatchConfig() == reference


def test_pex_config_choices_and_validation(task_module):
    import lsst.pex.config as pexConfig

    config = task_module.MatchBackgroundsPipelineConfig()
    for name, choices in task_module._CHOICES.items():
        for choice in choices:  # every allowed value is one the dataclass accepts
            MatchBackgroundsConfig(usePolynomial=True, **{name: choice})
        with pytest.raises(pexConfig.FieldValidationError):
            setattr(config, name, "NOT_A_CHOICE")
    with pytest.raises(pexConfig.FieldValidationError):
        config.binSize = "big"
    config = task_module.MatchBackgroundsPipelineConfig()
    config.orderY = 3  # needs chebyshevTerms="TENSOR": refused by the dataclass
    with pytest.raises(ValueError, match="orderY"):
        config.validate()
    config.chebyshevTerms = "TENSOR"
    config.validate()
    assert config.toMatchConfig().orderY == 3


def test_pex_config_round_trips_through_lsst_idioms(task_module):
    cls = task_module.MatchBackgroundsPipelineConfig
    custom = MatchBackgroundsConfig(
        binSize=32, matchMode="GLOBAL", badMaskPlanes=("BAD", "SAT"), clipSharpness=4.0
    )
    config = cls.fromMatchConfig(custom)
    assert config.toMatchConfig() == custom
    text = config.saveToString()  # what the butler stores as matchBackgrounds_config
    loaded = cls()
    loaded.loadFromString(text)
    assert loaded.toMatchConfig() == custom
    assert loaded.connections.warps == "{inputCoaddName}Coadd_{warpType}Warp"


def test_matched_warps_connection_only_when_asked(task_module):
    config = task_module.MatchBackgroundsPipelineConfig()
    assert "matchedWarps" not in task_module.MatchBackgroundsConnections(config=config).outputs
    config.doWriteMatchedWarps = True
    connections = task_module.MatchBackgroundsConnections(config=config)
    assert "matchedWarps" in connections.outputs
    config.connections.inputCoaddName = "goodSeeing"
    connections = task_module.MatchBackgroundsConnections(config=config)
    assert connections.warps.name == "goodSeeingCoadd_directWarp"
    assert connections.backgroundModels.name == "goodSeeingCoadd_directWarp_jaxmatchBackground"


# -- a repository -----------------------------------------------------------------------
def _sorted_warps(butler, patch):
    refs = butler.query_datasets("deepCoadd_directWarp", where=f"patch = {patch}")
    refs = sorted(refs, key=lambda r: r.dataId["visit"])
    return [int(r.dataId["visit"]) for r in refs], [butler.get(r) for r in refs]


def _output(butler, name, patch, visit):
    return butler.get(f"deepCoadd_directWarp_{name}", visit=visit, patch=patch, **WARP_KEYS)


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory, task_module):
    """A repository with the demo's simulated warps, and the truths it returns."""
    from jaxmatch.rubin.demo import make_demo_repo

    root = tmp_path_factory.mktemp("rubin") / "répo with space"
    butler, visits, truths = make_demo_repo(root, patches=PATCHES, visits=VISITS, size=SIZE)
    return root, visits, truths


def test_formatters_round_trip_exactly(tmp_path, task_module, rng):
    from lsst.daf.butler import DatasetType

    from jaxmatch.rubin.repo import create_repo

    butler = create_repo(tmp_path / "repo")
    butler.registry.registerRun("r")
    shape = (16, 24)
    image = rng.normal(size=shape).astype(np.float32)  # stored big-endian in the FITS file
    mask = rng.integers(0, 4, size=shape).astype(np.int32)
    variance = np.abs(rng.normal(size=shape)).astype(np.float32)
    exposure = Exposure(image, mask, variance, mask_planes={"BAD": 0, "NO_DATA": 1, "ODD": 5})
    for name, storage in (("exp", "JaxmatchExposure"), ("model", "JaxmatchBackgroundModel")):
        butler.registry.registerDatasetType(DatasetType(name, butler.dimensions.empty, storage))
    butler.put(exposure, "exp", run="r")
    back = butler.get("exp", collections="r")
    assert back.image.dtype == np.float32 and dict(back.mask_planes) == dict(exposure.mask_planes)
    for plane in ("image", "mask", "variance"):
        assert np.array_equal(np.asarray(getattr(back, plane)), getattr(exposure, plane))
    path = tmp_path / "m.fits"
    writeModel(_tiny_model(rng), path)
    model = readModel(path)
    butler.put(model, "model", run="r")
    got = butler.get("model", collections="r")
    assert got.basis == model.basis
    assert np.array_equal(np.asarray(got.coefficients), np.asarray(model.coefficients))
    butler.registry.registerRun("other")
    with pytest.raises(TypeError):  # a model is not an exposure
        butler.put(model, "exp", run="other")


def _tiny_model(rng):
    from jaxmatch import BackgroundModel, Basis

    return BackgroundModel(jnp.asarray(rng.normal(size=(2, 2))), Basis("CHEBYSHEV", (16, 24), 1, 1))


def test_ingest_files_with_spaces_and_errors(tmp_path, task_module, rng):
    from jaxmatch.rubin.repo import WarpDataId, create_repo, ingest_warps, register_dimensions

    butler = create_repo(tmp_path / "repo")
    with pytest.raises(FileExistsError, match="butler.yaml"):
        create_repo(tmp_path / "repo")
    folder = tmp_path / "wárps dir"
    folder.mkdir()
    warps = []
    for visit in (7, 8):
        exposure = Exposure(rng.normal(size=(12, 12)), mask_planes=None)
        path = folder / f"visit {visit} é.fits"
        writeExposure(exposure, path)
        warps.append((path, WarpDataId("Cam", visit, "Cam-g", "g", 20260102, "sky", 1, 5)))
    bad = folder / "not a warp.fits"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="not a warp.fits"):
        ingest_warps(butler, warps + [(bad, warps[0][1]._replace(visit=9))], run="in")
    assert not butler.registry.queryDatasetTypes("deepCoadd_directWarp")  # nothing ingested
    refs = ingest_warps(butler, warps, run="in")
    assert [int(r.dataId["visit"]) for r in refs] == [7, 8]
    assert refs[0].dataId["band"] == "g"  # implied by the physical filter
    got = butler.get(refs[1])
    assert np.array_equal(np.asarray(got.image), np.asarray(Exposure(got.image).image))
    with pytest.raises(ValueError, match="different values"):
        register_dimensions(butler, [warps[0][1], warps[0][1]._replace(physical_filter="Cam-r")])
    with pytest.raises(ValueError, match="patch must lie"):
        register_dimensions(butler, [warps[0][1]._replace(patch=100)])


# -- running the pipeline ---------------------------------------------------------------
@pytest.fixture(scope="module")
def executed(demo_repo):
    """The REFERENCE run by SimplePipelineExecutor, in this process (collection "simple")."""
    from lsst.pipe.base.simple_pipeline_executor import SimplePipelineExecutor

    from jaxmatch.rubin import MatchBackgroundsPipelineConfig, MatchBackgroundsPipelineTask

    root, visits, truths = demo_repo
    config = MatchBackgroundsPipelineConfig()
    for key, value in FAST.items():
        setattr(config, key, value)
    config.doWriteMatchedWarps = True
    butler = SimplePipelineExecutor.prep_butler(str(root), inputs=["demo/warps"], output="simple")
    executor = SimplePipelineExecutor.from_task_class(
        MatchBackgroundsPipelineTask, config, butler=butler
    )
    quanta = executor.run(register_dataset_types=True)
    assert len(quanta) == PATCHES  # one quantum per patch (one band)
    return butler


def test_pipeline_outputs_equal_a_direct_task_run(demo_repo, executed):
    """Bit for bit: the same warps (read back by the butler), config and visit order."""
    butler = executed
    task = MatchBackgroundsTask(MatchBackgroundsConfig(**FAST))
    for patch in range(PATCHES):
        visits, warps = _sorted_warps(butler, patch)
        assert len(visits) == VISITS
        infos = task.run(warps, "deepCoadd_directWarp").backgroundInfoList
        ref = next(i for i, info in enumerate(infos) if info.isReference)
        for i, (visit, info) in enumerate(zip(visits, infos)):
            model = _output(butler, "jaxmatchBackground", patch, visit)
            diag = _output(butler, "jaxmatchDiagnostics", patch, visit)
            assert diag["visit"] == visit and diag["refVisit"] == visits[ref]
            assert diag["isReference"] == info.isReference and diag["fitted"]
            if info.isReference:
                assert not np.any(np.asarray(model.coefficients))  # the reference: zero model
                matched_expected = warps[i].image
            else:
                assert model.basis == info.backgroundModel.basis
                assert np.array_equal(
                    np.asarray(model.coefficients), np.asarray(info.backgroundModel.coefficients)
                )
                for key in ("fitRMS", "matchedMSE", "diffImVar"):
                    assert diag[key] == getattr(info, key), key
                matched_expected = applyModel(info.backgroundModel, warps[i]).image
            matched = _output(butler, "bgMatched", patch, visit)
            assert np.array_equal(
                np.asarray(matched.image), np.asarray(matched_expected), equal_nan=True
            )
        metadata = butler.get("matchBackgrounds_metadata", patch=patch, band="r", **WARP_KEYS)
        assert metadata["matchBackgrounds"]["refVisit"] == visits[ref]
        assert metadata["matchBackgrounds"]["numExposures"] == VISITS
        assert "runEndCpuTime" in metadata["matchBackgrounds"]  # timeMethod, as LSST tasks


def test_matching_improves_agreement_with_truth(demo_repo, executed):
    """The demo's read-back: after matching, the true difference shrinks to ~ the bin noise.

    The true background differences have an RMS of 7-30 ADU. A degree-2 fit on 4 x 4
    bins of 16² pixels cannot follow the simulated cubic + bump exactly, and each bin
    mean has a noise of sigma / 16 (~1.4 ADU for sigma ~23 ADU per pixel): per visit,
    the residual must be below the mismatch before and below 5 bin-noise sigmas; per
    patch, the RMS must drop at least 3-fold.
    """
    from jaxmatch.rubin.demo import read_results

    root, visits, truths = demo_repo
    rows = read_results(executed, visits, truths)
    assert len(rows) == PATCHES * VISITS
    for truth in truths:
        bin_noise = truth.sigma / FAST["binSize"]
        patch_rows = [r for r in rows if r["patch"] == truth.patch]
        for row in patch_rows:
            if row["isReference"]:
                assert row["before"] == 0.0 and row["after"] == 0.0
            else:
                assert row["after"] < min(row["before"], 5 * bin_noise), row
        others = [r for r in patch_rows if not r["isReference"]]
        before = np.sqrt(np.mean([r["before"] ** 2 for r in others]))
        after = np.sqrt(np.mean([r["after"] ** 2 for r in others]))
        assert after < before / 3, (before, after)


def test_global_mode_from_the_shipped_pipeline(demo_repo, executed):
    """GLOBAL selected by a config override of the shipped pipeline YAML."""
    from lsst.pipe.base import Pipeline
    from lsst.pipe.base.simple_pipeline_executor import SimplePipelineExecutor

    from jaxmatch.rubin import PIPELINE

    root, visits, truths = demo_repo
    pipeline = Pipeline.fromFile(str(PIPELINE))
    for key, value in {**FAST, "matchMode": "GLOBAL"}.items():
        pipeline.addConfigOverride("matchBackgrounds", key, value)
    butler = SimplePipelineExecutor.prep_butler(str(root), inputs=["demo/warps"], output="global")
    SimplePipelineExecutor.from_pipeline(pipeline, butler=butler, where="patch = 0").run(
        register_dataset_types=True
    )
    visits, warps = _sorted_warps(butler, 0)
    task = MatchBackgroundsTask(MatchBackgroundsConfig(**FAST, matchMode="GLOBAL"))
    infos = task.run(warps, "deepCoadd_directWarp").backgroundInfoList
    for visit, info in zip(visits, infos):
        diag = _output(butler, "jaxmatchDiagnostics", 0, visit)
        assert diag["matchMode"] == "GLOBAL" and diag["group"] == info.group
        if not info.isReference:
            model = _output(butler, "jaxmatchBackground", 0, visit)
            assert np.array_equal(
                np.asarray(model.coefficients), np.asarray(info.backgroundModel.coefficients)
            )
    assert not butler.query_datasets(
        "deepCoadd_directWarp_jaxmatchDiagnostics", where="patch = 1", explain=False
    )


def test_pipetask_run_with_two_processes(demo_repo, executed):
    """The real ``pipetask run -j 2`` (spawned workers), outputs equal to the in-process run.

    The workers run with float64 enabled, as this test process does, so they build the
    same programs: the models agree bit for bit.
    """
    from lsst.daf.butler import Butler

    from jaxmatch.rubin.demo import pipetask_command

    root, visits, truths = demo_repo
    cmd = pipetask_command(root, jobs=2, config=FAST, output="pipetask")
    env = dict(os.environ, JAX_ENABLE_X64="1", PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    butler = Butler.from_config(str(root), collections="pipetask")
    for patch in range(PATCHES):
        for visit in visits:
            got = _output(butler, "jaxmatchBackground", patch, visit)
            expected = _output(executed, "jaxmatchBackground", patch, visit)
            assert np.array_equal(np.asarray(got.coefficients), np.asarray(expected.coefficients))
            assert _output(butler, "jaxmatchDiagnostics", patch, visit) == _output(
                executed, "jaxmatchDiagnostics", patch, visit
            )
    # The task's log is stored as LSST stores it (a dataset per quantum).
    log = butler.get("matchBackgrounds_log", patch=0, band="r", **WARP_KEYS)
    assert any("reference visit" in record.message for record in log)


def test_lsst_demo_argument_errors(capsys):
    from jaxmatch.cli import main

    assert main(["lsst-demo", "--repo", "x", "--visits", "1"]) == 1
    assert "--visits must be at least 2" in capsys.readouterr().err


# -- BPS --------------------------------------------------------------------------------
def test_bps_submit_config(tmp_path, task_module):
    import yaml

    from jaxmatch.rubin import PIPELINE
    from jaxmatch.rubin.bps import bps_environment, submit_config

    path = submit_config(
        tmp_path / "submit.yaml", tmp_path / "repo", cores=3, config={"matchMode": "GLOBAL"}
    )
    values = yaml.safe_load(path.read_text())
    assert values["pipelineYaml"] == str(PIPELINE)
    assert values["payload"]["butlerConfig"] == str((tmp_path / "repo").resolve())
    assert values["payload"]["inCollection"] == "demo/warps"
    assert values["site"]["local"] == {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": 3}
    assert values["wmsServiceClass"] == "lsst.ctrl.bps.parsl.ParslService"
    assert values["extraQgraphOptions"] == "-c matchBackgrounds:matchMode=GLOBAL"
    env = bps_environment({"DAF_BUTLER_DIR": "/mine"})
    assert env["DAF_BUTLER_DIR"] == "/mine"
    assert os.path.isfile(os.path.join(env["CTRL_MPEXEC_DIR"], "bin", "pipetask"))


def test_self_tuned_config_from_the_task_config(task_module):
    """doTune: jaxmatch.tune on the patch's own warps picks the roughness used to match."""
    from jaxmatch import simulate_patch

    sim = simulate_patch(3, (SIZE, SIZE), seed=3)
    warps = [
        Exposure(sim.images[i], sim.masks[i], sim.variances[i], mask_planes=sim.mask_planes)
        for i in range(3)
    ]
    config = task_module.MatchBackgroundsPipelineConfig()
    for key, value in FAST.items():
        setattr(config, key, value)
    config.splineRoughness = 1.0  # the Chebyshev ridge weight on the polynomial path
    config.doTune, config.tuneSteps = True, 3
    task = task_module.MatchBackgroundsPipelineTask(config=config)
    result = task.run(warps, [5, 6, 7])
    tuned = result.config.splineRoughness
    assert tuned != 1.0 and task.metadata["tunedSplineRoughness"] == tuned
    assert task.metadata["tuneLossAfter"] <= task.metadata["tuneLossBefore"]
    direct = MatchBackgroundsTask(result.config).run(warps, "warp").backgroundInfoList
    for info, model in zip(direct, result.backgroundModels):
        if not info.isReference:
            assert np.array_equal(
                np.asarray(model.coefficients), np.asarray(info.backgroundModel.coefficients)
            )
