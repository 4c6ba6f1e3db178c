"""The test suite's one tolerance table, keyed by ``(dtype, method)``.

``method`` names what is compared; each entry says why its number is what it is.
A test reads ``TOL[dtype, method]`` (keyword arguments of
``np.testing.assert_allclose``; the finite-difference entries also carry their step).
A float32 tolerance is stated against the float64 answer on the same inputs.
"""

TOL: dict[tuple[str, str], dict[str, float]] = {
    # -- value: against a NumPy/SciPy float64 reference ------------------------------
    # The same few float64 operations on O(1..100) numbers in both codes (bases:
    # the natural spline adds a (k-2)x(k-2) diagonally dominant solve, condition < 10;
    # binning: MEANCLIP amplifies none of the rounding errors): errors ~1e-15,
    # 1e-12 leaves margin.
    ("float64", "value"): dict(rtol=1e-12, atol=1e-12),
    # jaxmatch and SciPy build the same Akima piecewise cubic by different formulas;
    # extrapolating a cubic a few knots out multiplies rounding by ~1e3: 1e-10.
    ("float64", "akima"): dict(rtol=1e-10, atol=1e-10),
    # QR (jaxmatch) and SVD (NumPy) of a system with cond ≲ 1e2 agree to
    # cond · 1e-16 ≈ 1e-14 relative; 1e-11 leaves margin.
    ("float64", "solve"): dict(rtol=1e-11, atol=1e-11),
    # A rank-deficient design held by √ε = 1e-5 · √m, compared along the directions
    # the data determine: cond ≈ 1e5..1e6 there, so ≲ 1e-10 (the undetermined
    # direction has its own, derived bound in the test).
    ("float64", "solve-guarded"): dict(rtol=1e-9, atol=1e-9),
    # `match` against the NumPy oracle: both minimise the same objective
    # (docs/algorithm.md §6), one by QR and one by lstsq; the guarded problem has
    # cond(A) ≲ 1e4, so float64 answers agree to ~1e-12 relative. 1e-9 leaves room
    # for summation order in the bins.
    ("float64", "match-oracle"): dict(rtol=1e-9, atol=1e-9),
    # The same float64 sums in another order (vectorised reductions, NumPy's
    # pairwise sums): 4096 terms of size ~1 differ by at most ~4096 · 2**-53 ≈ 5e-13
    # relative; 1e-12 leaves margin and still catches any change of value.
    ("float64", "reordered-sum"): dict(rtol=1e-12, atol=0.0),
    # The reference cost from NumPy statistics: same formula, different summation
    # order (the absolute part for costs that are exactly 0).
    ("float64", "cost"): dict(rtol=1e-12, atol=1e-14),
    # -- transform: jit / vmap / batching against the plain call ---------------------
    # jit/vmap may fuse a multiply-add or reorder a reduction: last bits only.
    ("float64", "transform"): dict(rtol=1e-13, atol=1e-13),
    # jit/vmap may reorder the Householder sums of the QR: a few ulps of cond.
    ("float64", "solve-transform"): dict(rtol=1e-12, atol=1e-12),
    # The task's `run` fits a batch of N under vmap, `matchBackgrounds` a batch of
    # 1, with the same jitted engine: only the summation order of the vectorised
    # reductions can differ, a few ulps on O(1e3) diagnostics (observed ~1e-15).
    ("float64", "batched-vs-single"): dict(rtol=1e-10, atol=0.0),
    # Model images are O(10) ADU; the same few-ulp argument (observed ~1e-14 ADU).
    ("float64", "model-image"): dict(rtol=0.0, atol=1e-10),
    # matched = sci + model is one float64 addition: exact up to an ulp.
    ("float64", "matched-image"): dict(rtol=1e-14, atol=0.0),
    # Softmax at T = 1e-4 with cost gaps >= 0.1: the losers get exp(-1000) = 0.
    ("float64", "one-hot"): dict(rtol=0.0, atol=1e-12),
    # -- grad: autodiff against central finite differences ---------------------------
    # Central differences with eps = 1e-5 (bases, binning) or 1e-6 (solve) on O(1)
    # smooth functions: truncation ~eps² f''' ≲ 1e-10, rounding ~1e-16 / eps ≲ 1e-10;
    # 1e-7 is well above both.
    ("float64", "grad"): dict(rtol=1e-7, atol=1e-7),
    # Reference costs, step 1e-4: truncation O(eps²·f''') ≈ 1e-8 on O(1) functions,
    # round-off eps64/eps ≈ 1e-12; 1e-6 leaves margin.
    ("float64", "fd-grad-cost"): dict(atol=1e-6, rtol=1e-6, eps=1e-4),
    # The task's loss, step 1e-5: truncation O(h² f''') and round-off O(eps64 / h)
    # are both < 1e-9 (observed <= 2e-9 on a temperature gradient of 0.19); 1e-6
    # relative leaves margin and still fails for any real error.
    ("float64", "fd-grad-loss"): dict(rtol=1e-6, atol=1e-9, step=1e-5),
    # -- float32 against float64 on the same (float32) inputs ------------------------
    # float32 cannot hold 1e4 better than its ulp 2**-10 ≈ 9.8e-4; the mean of the
    # rounded inputs must be within 2 ulp of the float64 mean of the same inputs.
    ("float32", "mean"): dict(rtol=0.0, atol=2 * 2.0**-10),
    # A shifted two-pass variance loses only (δ/σ)² with δ ≲ 1 ulp, σ = 1e-2:
    # relative 1e-2 (a one-pass E[x²] - E[x]² would be off by orders of magnitude).
    ("float32", "std"): dict(rtol=1e-2, atol=0.0),
    # Level 1e4, scatter 0.1, 64x64 pixels: the centred sum of squares has a relative
    # error of ~sqrt(n)·eps32 ≈ 1e-5 typically (n·eps32 ≈ 5e-4 worst case); a naive
    # E[x²]-E[x]² would be off by ~1e3 relative (asserted in test_reference).
    ("float32", "variance"): dict(rtol=1e-4, atol=0.0),
    # The mean: one rounding of 1e4 in float32 (6e-8) plus a small sum.
    ("float32", "level"): dict(rtol=1e-6, atol=0.0),
    # -- one computation compiled as two programs (the task's fast paths) ------------
    # Data: sky 100 ADU, noise sigma 1 ADU, model images ~10 ADU. A batch of N
    # under vmap vs the list program, the jitted image vs the element-by-element
    # one: only the order of additions differs, a few ulps of O(1e2) values.
    ("float64", "program-vs-program"): dict(rtol=0.0, atol=1e-9),
    # float32: a few ulps of the values: ~1e-5 ADU on the O(1e2) sky (1e-5 of the
    # noise sigma), 2e-3 ADU on the masked -1e4 ADU pixels of the matched images.
    ("float32", "program-vs-program"): dict(rtol=1e-6, atol=5e-4),
}
