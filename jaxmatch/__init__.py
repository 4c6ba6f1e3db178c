"""jaxmatch: batched, differentiable background matching of astronomical exposures."""

from . import io as io
from ._config import MatchBackgroundsConfig as MatchBackgroundsConfig
from ._exposure import (
    DEFAULT_MASK_PLANES as DEFAULT_MASK_PLANES,
)
from ._exposure import (
    Exposure as Exposure,
)
from ._exposure import (
    estimate_variance as estimate_variance,
)
from ._exposure import (
    stack_exposures as stack_exposures,
)
from ._match import (
    STATUS_MESSAGES as STATUS_MESSAGES,
)
from ._match import (
    MatchResult as MatchResult,
)
from ._match import (
    check_result as check_result,
)
from ._match import (
    match as match,
)
from ._model import BackgroundModel as BackgroundModel
from ._model import Basis as Basis
from ._reference import (
    reference_costs as reference_costs,
)
from ._reference import (
    reference_statistics as reference_statistics,
)
from ._reference import (
    select_reference as select_reference,
)
from ._reference import (
    soft_reference as soft_reference,
)
from ._reference import (
    softmin_weights as softmin_weights,
)
from ._scaler import ImageScaler as ImageScaler
from ._simulate import SimulatedPatch as SimulatedPatch
from ._simulate import simulate_patch as simulate_patch
from ._task import MatchBackgroundsTask as MatchBackgroundsTask
from ._taskbase import ConfigurableField as ConfigurableField
from ._taskbase import Struct as Struct
from ._taskbase import Task as Task

__version__ = "0.1.0"
