"""Named `MatchBackgroundsConfig`s the benchmark runs.

binSize defaults to ``side // 16`` (a 16 × 16 grid at every image size: 32 px at
512², 256 px — LSST's default — at 4096²), so every Chebyshev order up to 8 is
legal (``order <= ceil(side / binSize) - 1 = 15``) and AKIMA has its 5 knots.
"""

from __future__ import annotations

import jaxmatch

GRID_BINS = 16

CONFIGS = {
    # name: (fields)
    # LSST's defaults (AKIMA_SPLINE, MEAN, REDUCE_INTERP_ORDER), binSize as below.
    "lsst-default": dict(),
    "lsst-default-meanclip": dict(gridStatistic="MEANCLIP"),
    "spline-natural": dict(
        usePolynomial=False, interpStyle="NATURAL_SPLINE", gridStatistic="MEANCLIP"
    ),
    "spline-akima": dict(usePolynomial=False, interpStyle="AKIMA_SPLINE", gridStatistic="MEANCLIP"),
    "spline-natural-median": dict(
        usePolynomial=False, interpStyle="NATURAL_SPLINE", gridStatistic="MEDIAN"
    ),
    "cheb4": dict(usePolynomial=True, order=4, gridStatistic="MEANCLIP"),
    "cheb6": dict(usePolynomial=True, order=6, gridStatistic="MEANCLIP"),
    "cheb8": dict(usePolynomial=True, order=8, gridStatistic="MEANCLIP"),
    "cheb6-median": dict(usePolynomial=True, order=6, gridStatistic="MEDIAN"),
}


def make_config(
    name: str, side: int, bin_size: int | None = None
) -> jaxmatch.MatchBackgroundsConfig:
    """The config ``name`` for a ``side × side`` image (binSize ``side // 16`` unless given)."""
    fields = dict(CONFIGS[name])
    fields["binSize"] = bin_size or max(side // GRID_BINS, 1)
    return jaxmatch.MatchBackgroundsConfig(**fields)
