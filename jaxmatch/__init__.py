"""jaxmatch: batched, differentiable background matching of astronomical exposures."""

from ._config import MatchBackgroundsConfig as MatchBackgroundsConfig
from ._exposure import (
    DEFAULT_MASK_PLANES as DEFAULT_MASK_PLANES,
    Exposure as Exposure,
    estimate_variance as estimate_variance,
    stack_exposures as stack_exposures,
)
from ._match import (
    MatchResult as MatchResult,
    STATUS_MESSAGES as STATUS_MESSAGES,
    check_result as check_result,
    match as match,
)
from ._model import BackgroundModel as BackgroundModel, Basis as Basis
from ._reference import (
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
from . import io as io

__version__ = "0.1.0"
