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

__version__ = "0.1.0"
