"""Running the pipeline through BPS with the Parsl plugin's local site.

BPS (``lsst-ctrl-bps``) turns the quantum graph into a workflow of ``pipetask
run-qbb`` jobs, one per quantum (one per patch and band here), and hands it to a
workflow system; with ``lsst-ctrl-bps-parsl`` and its ``Local`` site, Parsl runs
the jobs on this machine, ``cores`` at a time — the same submit file with another
site (``lsst.ctrl.bps.parsl.sites.Slurm``, ...) runs them on a cluster.

`submit_config` writes a complete submit YAML for a jaxmatch repository;
``bps submit FILE`` runs it. BPS's default commands call
``${CTRL_MPEXEC_DIR}/bin/pipetask`` and ``${DAF_BUTLER_DIR}/bin/butler`` (the
variables a Rubin software stack sets); for a pip install both are the virtual
environment's prefix, which `bps_environment` adds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from . import PIPELINE

__all__ = ["bps_environment", "submit_config"]


def submit_config(
    path: str | os.PathLike,
    repo: str | os.PathLike,
    *,
    inputs: str = "demo/warps",
    output: str = "bps/matched",
    cores: int = 2,
    config: Mapping[str, object] | None = None,
    data_query: str = "",
    submit_dir: str | os.PathLike | None = None,
) -> Path:
    """Write a BPS submit YAML that runs the shipped pipeline on ``repo`` with Parsl locally.

    ``config`` holds task config overrides (``{"matchMode": "GLOBAL"}``), passed to
    the quantum-graph builder as ``-c matchBackgrounds:KEY=VALUE``; ``submit_dir``
    is where BPS keeps the workflow's files (default: ``submit/`` next to ``path``).
    Returns ``path``.
    """
    path = Path(path).resolve()
    overrides = " ".join(f"-c matchBackgrounds:{k}={v}" for k, v in (config or {}).items())
    submit_dir = Path(submit_dir) if submit_dir else path.parent / "submit"
    text = f"""\
# BPS submit file: jaxmatch's pipeline, run by Parsl on this machine.
#   bps submit {path.name}
pipelineYaml: {PIPELINE}
extraQgraphOptions: "{overrides}"
project: jaxmatch
campaign: matchBackgrounds
payload:
  payloadName: jaxmatch
  butlerConfig: {Path(repo).resolve()}
  inCollection: {inputs}
  output: {output}
  dataQuery: "{data_query}"
wmsServiceClass: lsst.ctrl.bps.parsl.ParslService
computeSite: local
site:
  local:
    class: lsst.ctrl.bps.parsl.sites.Local
    cores: {int(cores)}
submitPath: {submit_dir}/{{outputRun}}
# One job per quantum; a quantum is one patch in one band.
requestCpus: 1
requestMemory: 2048
numberOfRetries: 0
"""
    path.write_text(text)
    return path


def bps_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: this process's) with ``CTRL_MPEXEC_DIR`` / ``DAF_BUTLER_DIR``
    set to this interpreter's prefix where unset (a pip install's ``bin/`` holds
    ``pipetask`` and ``butler``)."""
    env = dict(os.environ if environ is None else environ)
    prefix = str(Path(sys.executable).parent.parent)
    env.setdefault("CTRL_MPEXEC_DIR", prefix)
    env.setdefault("DAF_BUTLER_DIR", prefix)
    return env
