"""Numerical tolerances that follow the precision a result was computed in.

Two computations of the same float16 or bfloat16 values may take different kernels (oneDNN
runs bfloat16 and float16 natively on AVX-512 and AMX CPUs and emulates them in float32 on
AVX2 ones, a SavedModel's graph may fuse what Keras ran op by op), so they agree only to a
few units in the last place of that type, not to float32 tolerances. Float32 comparisons keep
their own tight tolerances; these are for results rounded to a lower precision.
"""

import ml_dtypes
import numpy as np

COMPUTE_DTYPES = {
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float32": np.float32,
}


def machine_epsilon(dtype):
    """The gap between 1 and the next representable number: 2**-10 for float16, 2**-7 for
    bfloat16, 2**-23 for float32. `dtype` is a name, a NumPy or a TensorFlow dtype."""
    name = getattr(dtype, "name", dtype)
    name = getattr(name, "__name__", name)
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {dtype!r}.")
    return float(ml_dtypes.finfo(COMPUTE_DTYPES[name]).eps)


def assert_close_in(dtype, actual, expected, ulps=2, err_msg=""):
    """Asserts `actual` equals `expected` to `ulps` machine epsilons of `dtype`.

    The relative tolerance is `ulps * eps`; the absolute one is the same fraction of the
    largest magnitude in `expected`, since values near zero carry the rounding error of the
    larger values they were computed from.
    """
    expected = np.asarray(expected, np.float64)
    rtol = ulps * machine_epsilon(dtype)
    atol = rtol * max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol,
                               err_msg=err_msg)
