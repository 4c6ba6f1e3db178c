"""jaxmatch: batched, differentiable background matching of astronomical exposures."""

# _xla_flags first: it sets XLA_FLAGS before JAX starts its backend.
from . import _xla_flags as _xla_flags, io as io
from ._allocator import (
    apply_from_environment as _apply_allocator_environment,
    retain_freed_memory as retain_freed_memory,
)
from ._autotune import (
    AutotuneResult as AutotuneResult,
    CandidateLoss as CandidateLoss,
    autotune as autotune,
    heldout_cell_loss as heldout_cell_loss,
    mask_difference_sources as mask_difference_sources,
)
from ._config import (
    MatchBackgroundsConfig as MatchBackgroundsConfig,
    MatchBackgroundsTaskConfig as MatchBackgroundsTaskConfig,
)
from ._exceptions import (
    FieldValidationError as FieldValidationError,
    JaxmatchError as JaxmatchError,
    MatchFailedError as MatchFailedError,
    UndersampledError as UndersampledError,
)
from ._exposure import (
    DEFAULT_MASK_PLANES as DEFAULT_MASK_PLANES,
    Exposure as Exposure,
    estimate_variance as estimate_variance,
    stack_exposures as stack_exposures,
)
from ._filematch import MatchReport as MatchReport, match_files as match_files
from ._global import (
    GlobalResult as GlobalResult,
    choose_pairs as choose_pairs,
    connected_groups as connected_groups,
    global_structure as global_structure,
    group_summary as group_summary,
    match_all as match_all,
    match_global as match_global,
    model_uncertainty as model_uncertainty,
    pair_overlaps as pair_overlaps,
)
from ._match import (
    ILL_CONDITIONED as ILL_CONDITIONED,
    STATUS_MESSAGES as STATUS_MESSAGES,
    MatchResult as MatchResult,
    Status as Status,
    check_result as check_result,
    fitted as fitted,
    match as match,
)
from ._model import (
    AbstractBasis as AbstractBasis,
    BackgroundModel as BackgroundModel,
    Basis as Basis,
    ChebyshevBasis as ChebyshevBasis,
    SplineBasis as SplineBasis,
)
from ._reference import (
    gen3_reference_costs as gen3_reference_costs,
    gen3_reference_statistics as gen3_reference_statistics,
    reference_costs as reference_costs,
    reference_statistics as reference_statistics,
    select_reference as select_reference,
    soft_reference as soft_reference,
    softmin_weights as softmin_weights,
)
from ._scaler import ImageScaler as ImageScaler
from ._simulate import SimulatedPatch as SimulatedPatch, simulate_patch as simulate_patch
from ._task import MatchBackgroundsTask as MatchBackgroundsTask
from ._taskbase import ConfigurableField as ConfigurableField, Struct as Struct, Task as Task
from ._tuning import (
    InSampleLosses as InSampleLosses,
    TuningParameters as TuningParameters,
    TuningResult as TuningResult,
    fold_labels as fold_labels,
    grid_search as grid_search,
    heldout_loss as heldout_loss,
    insample_losses as insample_losses,
    tune as tune,
)

# JAXMATCH_RETAIN_FREED_MEMORY=1 (opt-in): before any computation (importing runs none).
_apply_allocator_environment()

__version__ = "0.1.0"
