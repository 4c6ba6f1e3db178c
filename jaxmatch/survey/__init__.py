"""Survey scale: ``jaxmatch match`` over many patches on a Dask cluster.

A survey is many patches; a patch is one folder of FITS exposures of one sky patch
on one pixel grid. `run_survey` (and ``jaxmatch survey PATCH_DIR... --out OUT``)
sends one task per patch to a Dask ``distributed`` cluster. Each task runs the
``jaxmatch match`` command in the worker's process::

    jaxmatch match PATCH_DIR/*.fits --out OUT/<patch> --table OUT/<patch>/table.json [options]

so ``OUT/<patch>/`` holds exactly what ``jaxmatch match`` writes for that patch
(matched exposures, model files, its table), and the survey table has one row per
exposure with the patch's name and outcome. The engine is either an embedded
``distributed.LocalCluster`` (``workers`` processes with one thread each, bound to
127.0.0.1) or any running Dask scheduler (``client=``, ``--scheduler``,
``--scheduler-file``): ``dask scheduler`` / ``dask worker``, dask-jobqueue (SLURM,
PBS), Kubernetes.

Failures
--------
- A worker that dies (killed, out of memory) loses nothing: Dask sends its patch to
  another worker; every output file is written whole or not at all and the next
  run of a patch removes the temporary files a killed one left, so the outputs
  equal those of a run without the failure. A patch that kills
  ``distributed.scheduler.allowed-failures`` + 1 workers (default 3 + 1) is
  reported as failed.
- A patch whose data are bad (an unreadable file, a failed fit, mismatched
  shapes, no FITS file) is reported in the table (``patch_status`` ``"failed"``,
  ``patch_message`` saying why, as ``jaxmatch match`` would) and the survey goes
  on. The command's exit status is 0 only when every patch succeeded.
- ``skip_existing`` (``--skip-existing``) passes the match command's resume flag
  to every patch, so a rerun keeps the outputs already written and finishes the
  rest.

Efficiency
----------
JAX keeps the programs it compiled in the process that compiled them, so a
long-lived worker compiles once per (image shape, exposure count, config) and
reuses the programs for every later patch of the same kind: the table's
``patch_compiles`` counts the XLA compilations each patch caused (0 once the
worker is warm). ``compilation_cache`` (``--compilation-cache DIR``) also shares
them between worker processes and runs through JAX's persistent cache, so a new
or restarted worker loads instead of compiling. Each worker reads only its
patch's files; its memory is that of one ``jaxmatch match`` run on one patch.

Dask is an optional dependency: ``pip install "jaxmatch[survey]"``.
"""

from ._cli import add_parser as add_parser
from ._client import (
    check_options as check_options,
    plan_survey as plan_survey,
    run_survey as run_survey,
)
from ._records import (
    FITS_SUFFIXES as FITS_SUFFIXES,
    INSTALL_HINT as INSTALL_HINT,
    PATCH_COLUMNS as PATCH_COLUMNS,
    PATCH_TABLE as PATCH_TABLE,
    PatchJob as PatchJob,
    PatchResult as PatchResult,
    SurveyUsageError as SurveyUsageError,
)
from ._table import survey_table as survey_table, write_table as write_table
from ._worker import match_patch as match_patch, patch_files as patch_files
