"""Every error path of sparse_encode (and the core's own checks): the right exception type, and a
message naming the offending argument."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse

import matcompress as mc
from conftest import make_dictionary, make_gaussian_signals
from matcompress import _core

K, M, N = 12, 6, 5  # n_components, n_features, n_samples of the valid baseline problem


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    D = make_dictionary(rng, K, M)
    X = make_gaussian_signals(rng, N, M)
    return X, D


def _with(array, index, value):
    out = np.array(array, dtype=np.float64, copy=True)
    out[index] = value
    return out


def test_baseline_problem_is_valid(problem):
    X, D = problem
    code = mc.sparse_encode(X, D, gram=D @ D.T, cov=D @ X.T, n_nonzero_coefs=2)
    assert code.shape == (N, K)


# ---------------------------------------------------------------------------------------------
# Non-finite values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("bad", "what"), [(np.nan, "NaN"), (np.inf, "infinity"), (-np.inf, "infinity")])
@pytest.mark.parametrize("name", ["X", "dictionary", "gram", "cov"])
def test_non_finite_values(problem, name, bad, what, dtype):
    X, D = problem
    args = dict(X=X, dictionary=D, gram=D @ D.T, cov=D @ X.T)
    args[name] = _with(args[name], (1, 2), bad).astype(dtype)
    if name == "X":
        args["X"] = args["X"].astype(dtype)
    X_, D_ = args.pop("X"), args.pop("dictionary")
    with pytest.raises(ValueError, match=rf"^{name} contains {what}"):
        mc.sparse_encode(X_, D_, n_nonzero_coefs=2, **args)


def test_nan_and_inf_together(problem):
    X, D = problem
    X = _with(X, (0, 0), np.inf)
    X[1, 1] = -np.inf  # inf + -inf = nan in the quick sum: the element-wise test must decide
    with warnings.catch_warnings():  # numpy's "invalid value": see test_no_numpy_warnings_leak
        warnings.filterwarnings("ignore", "invalid value", RuntimeWarning)
        with pytest.raises(ValueError, match="X contains infinity"):
            mc.sparse_encode(X, D, n_nonzero_coefs=2)
    X[2, 2] = np.nan
    with pytest.raises(ValueError, match="X contains NaN"):
        mc.sparse_encode(X, D, n_nonzero_coefs=2)


def test_nan_in_dictionary_cast_to_float32(problem):
    X, D = problem
    with pytest.raises(ValueError, match="dictionary contains NaN"):
        mc.sparse_encode(X.astype(np.float32), _with(D, (0, 0), np.nan), n_nonzero_coefs=2)


def test_float64_overflowing_to_inf_in_float32_cast(problem):
    # A finite float64 dictionary entry of 1e300 becomes inf when cast to X's float32.
    X, D = problem
    # A finite float64 value that float32 (X's dtype, the computation's) cannot hold.
    with pytest.raises(ValueError, match="dictionary has values too large for float32"):
        mc.sparse_encode(X.astype(np.float32), _with(D, (0, 0), 1e300), n_nonzero_coefs=2)


def _leak_inf_minus_inf(X, D):
    X = _with(X, (0, 0), np.inf)
    X[1, 1] = -np.inf
    with pytest.raises(ValueError, match="X contains infinity"):
        mc.sparse_encode(X, D, n_nonzero_coefs=2)


def _leak_cast_overflow(X, D):
    with pytest.raises(ValueError, match="dictionary has values too large for float32"):
        mc.sparse_encode(X.astype(np.float32), _with(D, (0, 0), 1e300), n_nonzero_coefs=2)


def _leak_sum_overflow(X, D):
    mc.sparse_encode(np.abs(X) * 1e307 + 1e307, D, n_nonzero_coefs=2)  # finite: must succeed


@pytest.mark.parametrize("case", [_leak_inf_minus_inf, _leak_cast_overflow, _leak_sum_overflow],
                         ids=["inf-minus-inf", "cast-overflow", "sum-overflow"])
def test_no_numpy_warnings_leak(problem, case):
    # pytest runs with filterwarnings=error: any warning on the way fails the call.
    case(*problem)


def test_huge_finite_float64_values_do_not_raise(problem):
    X, D = problem
    code = mc.sparse_encode(X * 1e300, D, n_nonzero_coefs=2)
    assert np.all(np.isfinite(code))


# ---------------------------------------------------------------------------------------------
# Types, dtypes, shapes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["X", "dictionary", "gram", "cov"])
def test_complex_is_refused(problem, name):
    X, D = problem
    args = dict(X=X, dictionary=D, gram=D @ D.T, cov=D @ X.T)
    args[name] = args[name] + 0j
    with pytest.raises(TypeError, match=rf"^{name} must be real"):
        mc.sparse_encode(args.pop("X"), args.pop("dictionary"), n_nonzero_coefs=2, **args)


@pytest.mark.parametrize("name", ["X", "dictionary", "gram", "cov"])
@pytest.mark.parametrize("kind", ["object", "str", "bytes", "datetime"])
def test_non_numeric_dtypes_are_refused(problem, name, kind):
    X, D = problem
    args = dict(X=X, dictionary=D, gram=D @ D.T, cov=D @ X.T)
    a = args[name]
    if kind == "object":
        bad = a.astype(object)
    elif kind == "str":
        bad = a.astype(str)
    elif kind == "bytes":
        bad = a.astype("S8")
    else:
        bad = np.zeros(a.shape, dtype="datetime64[s]")
    args[name] = bad
    with pytest.raises(TypeError, match=rf"^{name} must be a numeric array"):
        mc.sparse_encode(args.pop("X"), args.pop("dictionary"), n_nonzero_coefs=2, **args)


def test_none_is_refused(problem):
    X, D = problem
    with pytest.raises(TypeError, match="^X must be an array, got None"):
        mc.sparse_encode(None, D)
    with pytest.raises(TypeError, match="^dictionary must be an array, got None"):
        mc.sparse_encode(X, None)


@pytest.mark.parametrize("fmt", ["csr_matrix", "csr_array", "coo_matrix", "csc_array"])
@pytest.mark.parametrize("name", ["X", "dictionary", "gram", "cov"])
def test_scipy_sparse_input_is_refused(problem, name, fmt):
    X, D = problem
    args = dict(X=X, dictionary=D, gram=D @ D.T, cov=D @ X.T)
    args[name] = getattr(scipy.sparse, fmt)(args[name])
    with pytest.raises(TypeError, match=rf"^{name} must be a dense array"):
        mc.sparse_encode(args.pop("X"), args.pop("dictionary"), n_nonzero_coefs=2, **args)


def test_ragged_input_is_refused(problem):
    _, D = problem
    with pytest.raises(ValueError, match="^X could not be converted"):
        mc.sparse_encode([[1.0, 2.0], [3.0]], D)


@pytest.mark.parametrize("name", ["X", "dictionary", "gram", "cov"])
@pytest.mark.parametrize("ndim", [0, 1, 3])
def test_wrong_ndim(problem, name, ndim):
    X, D = problem
    args = dict(X=X, dictionary=D, gram=D @ D.T, cov=D @ X.T)
    a = args[name]
    args[name] = {0: a[0, 0], 1: a[0], 3: a[None]}[ndim]
    with pytest.raises(ValueError, match=rf"^{name} must be 2-D; got an array of shape"):
        mc.sparse_encode(args.pop("X"), args.pop("dictionary"), n_nonzero_coefs=2, **args)


def test_mismatched_feature_counts(problem):
    X, D = problem
    with pytest.raises(ValueError, match="dictionary and X have different numbers of features"):
        mc.sparse_encode(X, D[:, :-1])
    with pytest.raises(ValueError, match="dictionary and X have different numbers of features"):
        mc.sparse_encode(X[:, :-1], D)
    with pytest.raises(ValueError, match="dictionary and X"):
        mc.sparse_encode(X, D.T)  # transposed by mistake


@pytest.mark.parametrize("shape", [(0, M), (0, 0), (N, 0)])
def test_empty_X(problem, shape):
    _, D = problem
    with pytest.raises(ValueError, match=r"^X is empty"):
        mc.sparse_encode(np.zeros(shape), D)


@pytest.mark.parametrize("shape", [(0, M), (K, 0), (0, 0)])
def test_empty_dictionary(problem, shape):
    X, _ = problem
    with pytest.raises(ValueError, match=r"^dictionary is empty"):
        mc.sparse_encode(X, np.zeros(shape))


@pytest.mark.parametrize(
    ("shape", "name"),
    [((K, K + 1), "gram"), ((K + 1, K), "gram"), ((K - 1, K - 1), "gram"),
     ((K, N + 1), "cov"), ((N, K), "cov"), ((K + 1, N), "cov")],
)
def test_gram_and_cov_of_the_wrong_shape(problem, shape, name):
    X, D = problem
    kwargs = {name: np.ones(shape)}
    expected = "(n_components, n_components)" if name == "gram" else "(n_components, n_samples)"
    with pytest.raises(ValueError, match=rf"^{name} must have shape " + expected.replace("(", r"\(").replace(")", r"\)")):
        mc.sparse_encode(X, D, n_nonzero_coefs=2, **kwargs)


# ---------------------------------------------------------------------------------------------
# Zero-norm atoms
# ---------------------------------------------------------------------------------------------


def test_zero_norm_atoms_are_listed(problem):
    X, D = problem
    D = D.copy()
    D[[3, 7]] = 0
    with pytest.raises(ValueError, match=r"^dictionary has zero-norm atoms \[3, 7\]: every atom"):
        mc.sparse_encode(X, D, n_nonzero_coefs=2)


def test_many_zero_norm_atoms_are_summarised():
    rng = np.random.default_rng(1)
    D = make_dictionary(rng, 30, 6)
    D[5:17] = 0  # 12 zero atoms: the first 10 are listed
    with pytest.raises(ValueError, match=r"zero-norm atoms \[5, 6, 7, 8, 9, 10, 11, 12, 13, 14\] and 2 more"):
        mc.sparse_encode(make_gaussian_signals(rng, 3, 6), D, n_nonzero_coefs=2)


def test_zero_norm_atom_in_float32(problem):
    X, D = problem
    D = D.astype(np.float32)
    D[0] = 0
    with pytest.raises(ValueError, match=r"zero-norm atoms \[0\]"):
        mc.sparse_encode(X.astype(np.float32), D, n_nonzero_coefs=2)


def test_atom_underflowing_to_zero_norm_in_float32(problem):
    # 1e-30^2 = 1e-60 underflows to 0 in float32: that atom has no usable norm.
    X, D = problem
    D = D.astype(np.float32)
    D[4] = 1e-30
    with pytest.raises(ValueError, match=r"zero-norm atoms \[4\]"):
        mc.sparse_encode(X.astype(np.float32), D, n_nonzero_coefs=2)


@pytest.mark.parametrize("value", [0.0, -1.0, -1e-300])
def test_gram_with_non_positive_diagonal(problem, value):
    X, D = problem
    gram = D @ D.T
    gram[2, 2] = value
    gram[9, 9] = value
    with pytest.raises(ValueError, match=r"^gram has a non-positive diagonal at zero-norm atoms \[2, 9\]"):
        mc.sparse_encode(X, D, gram=gram, n_nonzero_coefs=2)
    with pytest.raises(ValueError, match=r"^gram has a non-positive diagonal"):
        mc.sparse_encode(X, D, gram=gram, tol=0.1)


# ---------------------------------------------------------------------------------------------
# Scalar arguments
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, -100, np.int64(0)])
def test_n_nonzero_coefs_too_small(problem, value):
    X, D = problem
    with pytest.raises(ValueError, match=r"^n_nonzero_coefs must be >= 1; got"):
        mc.sparse_encode(X, D, n_nonzero_coefs=value)


def test_n_nonzero_coefs_too_large(problem):
    X, D = problem  # K = 12 atoms, M = 6 features
    with pytest.raises(ValueError, match=r"^n_nonzero_coefs must be <= 6 \(n_components=12, n_features=6\); got 7"):
        mc.sparse_encode(X, D, n_nonzero_coefs=M + 1)
    with pytest.raises(ValueError, match=r"n_nonzero_coefs must be <= 6 .*; got 13"):
        mc.sparse_encode(X, D, n_nonzero_coefs=K + 1)
    # n_components the binding limit: 4 atoms, 6 features.
    with pytest.raises(ValueError, match=r"^n_nonzero_coefs must be <= 4 \(n_components=4, n_features=6\); got 5"):
        mc.sparse_encode(X, D[:4], n_nonzero_coefs=5)
    # The limits themselves are fine.
    assert mc.sparse_encode(X, D, n_nonzero_coefs=M).shape == (N, K)
    assert mc.sparse_encode(X, D[:4], n_nonzero_coefs=4).shape == (N, 4)


@pytest.mark.parametrize("value", [2.5, 2.0, "2", True, False, np.bool_(True), [2], np.float64(3.0)])
def test_n_nonzero_coefs_not_an_integer(problem, value):
    X, D = problem
    with pytest.raises(TypeError, match=r"^n_nonzero_coefs must be an integer"):
        mc.sparse_encode(X, D, n_nonzero_coefs=value)


def test_numpy_integers_are_accepted(problem):
    X, D = problem
    a = mc.sparse_encode(X, D, n_nonzero_coefs=np.int32(3), n_threads=np.int64(2))
    b = mc.sparse_encode(X, D, n_nonzero_coefs=3, n_threads=2)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value", [-1e-12, -1.0, -np.inf])
def test_negative_tol(problem, value):
    X, D = problem
    with pytest.raises(ValueError, match=r"^tol must be"):
        mc.sparse_encode(X, D, tol=value)


@pytest.mark.parametrize("value", [np.nan, np.inf, float("nan")])
def test_non_finite_tol(problem, value):
    X, D = problem
    with pytest.raises(ValueError, match=r"^tol must be finite"):
        mc.sparse_encode(X, D, tol=value)


@pytest.mark.parametrize("value", ["0.1", b"1", True, [0.1], 1j])
def test_tol_not_a_real_number(problem, value):
    X, D = problem
    with pytest.raises(TypeError, match=r"^tol must be a real number"):
        mc.sparse_encode(X, D, tol=value)


def test_tol_accepts_ints_and_numpy_floats(problem):
    X, D = problem
    a = mc.sparse_encode(X, D, tol=1)
    b = mc.sparse_encode(X, D, tol=np.float32(1.0))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("value", [0, -2, -100])
def test_n_threads_out_of_range(problem, value):
    X, D = problem
    with pytest.raises(ValueError, match=r"^n_threads must be None, -1 or a positive integer"):
        mc.sparse_encode(X, D, n_threads=value)


@pytest.mark.parametrize("value", [1.5, 2.0, "2", True, np.bool_(False)])
def test_n_threads_not_an_integer(problem, value):
    X, D = problem
    with pytest.raises(TypeError, match=r"^n_threads must be an integer"):
        mc.sparse_encode(X, D, n_threads=value)


@pytest.mark.parametrize("name", ["return_sparse", "copy_cov"])
@pytest.mark.parametrize("value", [1, 0, "yes", None, 1.0])
def test_boolean_flags_must_be_bool(problem, name, value):
    X, D = problem
    with pytest.raises(TypeError, match=rf"^{name} must be True or False"):
        mc.sparse_encode(X, D, **{name: value})


def test_numpy_bool_flags_are_accepted(problem):
    X, D = problem
    sp = mc.sparse_encode(X, D, return_sparse=np.bool_(True), copy_cov=np.bool_(False))
    assert isinstance(sp, scipy.sparse.csr_array)


def test_keyword_only(problem):
    X, D = problem
    with pytest.raises(TypeError):
        mc.sparse_encode(X, D, None, None, 2)  # gram, cov, ... are keyword-only


# ---------------------------------------------------------------------------------------------
# Instruction sets
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bogus", "", "AVX2", "sse2", "avx-512"])
def test_set_isa_unknown_name(name):
    before = _core.active_isa()
    with pytest.raises(ValueError, match="unknown instruction set"):
        _core.set_isa(name)
    assert _core.active_isa() == before


def test_set_isa_unsupported_by_cpu():
    order = ["generic", "avx2", "avx512"]
    unsupported = order[order.index(_core.detected_isa()) + 1 :]
    if not unsupported:
        pytest.skip(f"this CPU supports every instruction set ({_core.detected_isa()})")
    before = _core.active_isa()
    for name in unsupported:
        with pytest.raises(ValueError, match="not supported"):
            _core.set_isa(name)
    assert _core.active_isa() == before


# ---------------------------------------------------------------------------------------------
# The core's own checks (MC_CHECK / require -> std::invalid_argument -> ValueError)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_atoms", [K + 1, 1000])
def test_core_max_atoms_above_n_components(problem, max_atoms):
    X, D = problem
    with pytest.raises(ValueError, match=rf"max_atoms={max_atoms} must be in \[1, {K}\]"):
        _core.sparse_encode_omp_f64(X, D, None, None, max_atoms, False, 0.0, 1)


@pytest.mark.parametrize("max_atoms", [0, -3])
def test_core_max_atoms_below_one(problem, max_atoms):
    X, D = problem
    with pytest.raises(ValueError, match="max_atoms"):
        _core.sparse_encode_omp_f64(X, D, None, None, max_atoms, False, 0.0, 1)
    with pytest.raises(ValueError, match="max_atoms"):
        _core.sparse_encode_omp_f32(X.astype(np.float32), D.astype(np.float32), None, None,
                                    max_atoms, False, 0.0, 1)


def test_core_gram_with_zero_diagonal(problem):
    X, D = problem
    gram = D @ D.T
    gram[5, 5] = 0.0
    with pytest.raises(ValueError, match=r"atom 5 has zero norm"):
        _core.sparse_encode_omp_f64(X, D, gram, None, 2, False, 0.0, 1)
    with pytest.raises(ValueError, match=r"atom 5 has zero norm"):
        _core.sparse_encode_omp_f32(X.astype(np.float32), D.astype(np.float32),
                                    gram.astype(np.float32), None, 2, False, 0.0, 2)


def test_core_zero_atom_without_gram(problem):
    X, D = problem
    D = D.copy()
    D[11] = 0
    with pytest.raises(ValueError, match=r"atom 11 has zero norm"):
        _core.sparse_encode_omp_f64(X, D, None, None, 2, False, 0.0, 1)


def test_core_negative_tol(problem):
    X, D = problem
    with pytest.raises(ValueError, match="tol must be >= 0"):
        _core.sparse_encode_omp_f64(X, D, None, None, 2, True, -1.0, 1)


def test_core_shape_checks(problem):
    X, D = problem
    with pytest.raises(ValueError, match="X must be 2-D"):
        _core.sparse_encode_omp_f64(X[0], D, None, None, 2, False, 0.0, 1)
    with pytest.raises(ValueError, match="dictionary must have shape"):
        _core.sparse_encode_omp_f64(X, D[:, :-1], None, None, 2, False, 0.0, 1)
    with pytest.raises(ValueError, match="gram must have shape"):
        _core.sparse_encode_omp_f64(X, D, np.ones((K, K - 1)), None, 2, False, 0.0, 1)
    with pytest.raises(ValueError, match="cov must have shape"):
        _core.sparse_encode_omp_f64(X, D, None, np.ones((N, K)), 2, False, 0.0, 1)


def test_core_errors_leave_the_module_usable(problem):
    X, D = problem
    for _ in range(3):
        with pytest.raises(ValueError):
            _core.sparse_encode_omp_f64(X, D, None, None, K + 1, False, 0.0, 2)
    assert mc.sparse_encode(X, D, n_nonzero_coefs=2).shape == (N, K)


# ---------------------------------------------------------------------------------------------
# Dictionary learning: dict_learning and DictionaryLearning
# ---------------------------------------------------------------------------------------------

DL_N, DL_M, DL_K = 40, 6, 8  # n_samples, n_features, n_components of the valid baseline


@pytest.fixture
def dl_X():
    return make_gaussian_signals(np.random.default_rng(0), DL_N, DL_M)


def _learn(X, n_components=DL_K, **kwargs):
    kwargs.setdefault("n_nonzero_coefs", 2)
    kwargs.setdefault("max_iter", 2)
    kwargs.setdefault("random_state", 0)
    return mc.dict_learning(X, n_components, **kwargs)


@pytest.mark.parametrize("method", ["ksvd", "mod", "online"])
def test_dl_baseline_problem_is_valid(dl_X, method):
    codes, D, errors = _learn(dl_X, method=method, dict_init=np.eye(DL_K, DL_M) + 0.1)
    assert codes.shape == (DL_N, DL_K) and D.shape == (DL_K, DL_M) and len(errors) >= 1


@pytest.mark.parametrize("value", [0, -1, -100])
def test_dl_n_components_too_small(dl_X, value):
    with pytest.raises(ValueError, match=r"^n_components must be >= 1; got"):
        _learn(dl_X, value)
    with pytest.raises(ValueError, match=r"^n_components must be >= 1"):
        mc.DictionaryLearning(value).fit(dl_X)


@pytest.mark.parametrize("value", [2.5, 8.0, "8", None, True, np.float64(8.0), [8]])
def test_dl_n_components_not_an_integer(dl_X, value):
    with pytest.raises(TypeError, match=r"^n_components must be an integer"):
        _learn(dl_X, value)


def test_dl_n_nonzero_coefs_above_n_components(dl_X):
    # 4 atoms, 6 features: n_components is the binding limit.
    with pytest.raises(ValueError, match=r"^n_nonzero_coefs must be <= n_components=4; got 5"):
        _learn(dl_X, 4, n_nonzero_coefs=5)
    assert _learn(dl_X, 4, n_nonzero_coefs=4)[0].shape == (DL_N, 4)  # the limit itself is fine


def test_dl_n_nonzero_coefs_above_n_features(dl_X):
    # 8 atoms, 6 features: n_features is the binding limit.
    with pytest.raises(ValueError, match=r"^n_nonzero_coefs must be <= n_features=6 .*; got 7"):
        _learn(dl_X, n_nonzero_coefs=DL_M + 1)
    with pytest.raises(ValueError, match=r"^n_nonzero_coefs must be <= n_features=6"):
        mc.DictionaryLearning(DL_K, n_nonzero_coefs=DL_M + 1).fit(dl_X)
    assert _learn(dl_X, n_nonzero_coefs=DL_M)[0].shape == (DL_N, DL_K)


@pytest.mark.parametrize(("value", "exc"), [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                            (True, TypeError)])
def test_dl_n_nonzero_coefs_invalid(dl_X, value, exc):
    with pytest.raises(exc, match=r"^n_nonzero_coefs must be"):
        _learn(dl_X, n_nonzero_coefs=value)


@pytest.mark.parametrize("shape", [(DL_K, DL_M + 1), (DL_K + 1, DL_M), (DL_M, DL_K), (1, DL_M)])
def test_dl_dict_init_of_the_wrong_shape(dl_X, shape):
    with pytest.raises(ValueError, match=r"^dict_init must have shape \(n_components, n_features\) = \(8, 6\); got"):
        _learn(dl_X, dict_init=np.ones(shape))


@pytest.mark.parametrize("ndim", [1, 3])
def test_dl_dict_init_wrong_ndim(dl_X, ndim):
    init = np.ones((DL_K, DL_M))
    with pytest.raises(ValueError, match=r"^dict_init must be 2-D"):
        _learn(dl_X, dict_init=init[0] if ndim == 1 else init[None])


def test_dl_dict_init_with_zero_rows(dl_X):
    init = np.ones((DL_K, DL_M))
    init[[2, 5]] = 0
    with pytest.raises(ValueError, match=r"^dict_init has zero-norm rows \[2, 5\]"):
        _learn(dl_X, dict_init=init)
    with pytest.raises(ValueError, match=r"^dict_init has zero-norm rows \[2, 5\]"):
        mc.DictionaryLearning(DL_K, n_nonzero_coefs=2, dict_init=init).partial_fit(dl_X)


@pytest.mark.parametrize(("bad", "what"), [(np.nan, "NaN"), (np.inf, "infinity")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dl_dict_init_non_finite(dl_X, bad, what, dtype):
    init = np.ones((DL_K, DL_M))
    init[3, 1] = bad
    with pytest.raises(ValueError, match=rf"^dict_init contains {what}"):
        _learn(dl_X.astype(dtype), dict_init=init)


def test_dl_dict_init_complex(dl_X):
    with pytest.raises(TypeError, match=r"^dict_init must be real"):
        _learn(dl_X, dict_init=np.ones((DL_K, DL_M)) + 0j)


@pytest.mark.parametrize("method", ["ksvd", "mod", "online"])
def test_dl_fewer_samples_than_components_warns_but_works(method):
    X = make_gaussian_signals(np.random.default_rng(1), 5, DL_M)
    with pytest.warns(UserWarning, match=r"n_samples=5 is smaller than n_components=8"):
        codes, D, errors = _learn(X, method=method)
    assert codes.shape == (5, DL_K) and D.shape == (DL_K, DL_M)
    assert np.all(np.isfinite(D)) and np.allclose(np.linalg.norm(D, axis=1), 1.0)
    with pytest.warns(UserWarning, match=r"n_samples=5 is smaller than n_components=8"):
        mc.DictionaryLearning(DL_K, n_nonzero_coefs=2, method=method, max_iter=2).fit(X)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("bad", "what"), [(np.nan, "NaN"), (np.inf, "infinity"), (-np.inf, "infinity")])
def test_dl_non_finite_X(dl_X, bad, what, dtype):
    X = _with(dl_X, (4, 2), bad).astype(dtype)
    with pytest.raises(ValueError, match=rf"^X contains {what}"):
        _learn(X)


@pytest.mark.parametrize("method", ["fit", "partial_fit", "fit_transform"])
def test_dl_estimator_non_finite_X(dl_X, method):
    # scikit-learn's validate_data: its message names the input X too.
    with pytest.raises(ValueError, match=r"Input X contains NaN"):
        getattr(mc.DictionaryLearning(DL_K, n_nonzero_coefs=2), method)(_with(dl_X, (0, 0), np.nan))


def test_dl_complex_X(dl_X):
    with pytest.raises(TypeError, match=r"^X must be real"):
        _learn(dl_X + 1j)


@pytest.mark.parametrize("kind", ["object", "str", "datetime"])
def test_dl_non_numeric_X(dl_X, kind):
    bad = {"object": dl_X.astype(object), "str": dl_X.astype(str),
           "datetime": np.zeros(dl_X.shape, dtype="datetime64[s]")}[kind]
    with pytest.raises(TypeError, match=r"^X must be a numeric array"):
        _learn(bad)


@pytest.mark.parametrize("ndim", [0, 1, 3])
def test_dl_X_wrong_ndim(dl_X, ndim):
    bad = {0: dl_X[0, 0], 1: dl_X[0], 3: dl_X[None]}[ndim]
    with pytest.raises(ValueError, match=r"^X must be 2-D; got an array of shape"):
        _learn(bad)


@pytest.mark.parametrize("shape", [(0, DL_M), (DL_N, 0), (0, 0)])
def test_dl_empty_X(shape):
    with pytest.raises(ValueError, match=r"^X is empty"):
        _learn(np.zeros(shape))


def test_dl_none_and_sparse_X(dl_X):
    with pytest.raises(TypeError, match=r"^X must be an array, got None"):
        _learn(None)
    with pytest.raises(TypeError, match=r"^X must be a dense array"):
        _learn(scipy.sparse.csr_array(dl_X))


@pytest.mark.parametrize("value", ["KSVD", "k-svd", "lars", "", None, 1])
def test_dl_unknown_method(dl_X, value):
    with pytest.raises(ValueError, match=r"^method must be one of \('ksvd', 'mod', 'online'\); got"):
        _learn(dl_X, method=value)
    with pytest.raises(ValueError, match=r"^method must be one of"):
        mc.DictionaryLearning(DL_K, n_nonzero_coefs=2, method=value).fit(dl_X)


@pytest.mark.parametrize(("value", "exc"), [(-1, ValueError), (-100, ValueError), (2.0, TypeError),
                                            (None, TypeError), (True, TypeError)])
def test_dl_bad_max_iter(dl_X, value, exc):
    with pytest.raises(exc, match=r"^max_iter must be"):
        _learn(dl_X, max_iter=value)


# A tolerance: a finite real number >= 0 (the same check for every iterative method).
BAD_TOL = [(-1e-12, ValueError, "must be >= 0"), (-1.0, ValueError, "must be >= 0"),
           (np.nan, ValueError, "must be finite"), (np.inf, ValueError, "must be finite"),
           ("0.1", TypeError, "must be a real number"), (None, TypeError, "must be a real number")]


@pytest.mark.parametrize(("value", "exc", "msg"), BAD_TOL)
def test_dl_bad_tol(dl_X, value, exc, msg):
    with pytest.raises(exc, match=rf"^tol {msg}"):
        _learn(dl_X, tol=value)


@pytest.mark.parametrize(("value", "exc"), [(0, ValueError), (-5, ValueError), (1.5, TypeError),
                                            ("auto", TypeError)])
def test_dl_bad_batch_size(dl_X, value, exc):
    # Checked for every method, not only "online" (where it is used).
    with pytest.raises(exc, match=r"^batch_size must be"):
        _learn(dl_X, batch_size=value)
    with pytest.raises(exc, match=r"^batch_size must be"):
        mc.DictionaryLearning(DL_K, n_nonzero_coefs=2, batch_size=value).partial_fit(dl_X)


@pytest.mark.parametrize("value", [1, "print", [print], np.zeros(3)])
def test_dl_callback_not_callable(dl_X, value):
    with pytest.raises(TypeError, match=r"^callback must be callable or None"):
        _learn(dl_X, callback=value)


@pytest.mark.parametrize("value", ["yes", None, 1.0, [True]])
def test_dl_verbose_not_a_bool(dl_X, value):
    with pytest.raises(TypeError, match=r"^verbose must be a bool or an int"):
        _learn(dl_X, verbose=value)


@pytest.mark.parametrize(("value", "exc"), [(-1, ValueError), (1.5, TypeError), ("0", TypeError),
                                            (True, TypeError), (np.random, TypeError)])
def test_dl_bad_random_state(dl_X, value, exc):
    with pytest.raises(exc, match=r"^random_state must be"):
        _learn(dl_X, random_state=value)


def test_dl_random_state_types_accepted(dl_X):
    a = _learn(dl_X, random_state=np.int64(3))
    b = _learn(dl_X, random_state=np.random.default_rng(3))
    c = _learn(dl_X, random_state=np.random.RandomState(3))
    np.testing.assert_array_equal(a[1], b[1])
    assert c[1].shape == (DL_K, DL_M)


@pytest.mark.parametrize(("value", "exc"), [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                            (True, TypeError)])
def test_dl_bad_n_threads(dl_X, value, exc):
    with pytest.raises(exc, match=r"^n_threads must be"):
        _learn(dl_X, n_threads=value)


def test_dl_keyword_only(dl_X):
    with pytest.raises(TypeError):
        mc.dict_learning(dl_X, DL_K, 2)  # n_nonzero_coefs, method, ... are keyword-only


def test_dl_transform_before_fit():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="DictionaryLearning instance is not fitted yet"):
        mc.DictionaryLearning(DL_K).transform(np.ones((3, DL_M)))


@pytest.mark.parametrize("method", ["transform", "partial_fit"])
def test_dl_wrong_number_of_features_after_fit(dl_X, method):
    est = mc.DictionaryLearning(DL_K, n_nonzero_coefs=2, max_iter=2, random_state=0).fit(dl_X)
    components = est.components_.copy()
    for bad in (dl_X[:, :-1], np.hstack([dl_X, dl_X[:, :1]])):
        expected = rf"^X has {bad.shape[1]} features, but DictionaryLearning is expecting {DL_M}"
        with pytest.raises(ValueError, match=expected):
            getattr(est, method)(bad)
    np.testing.assert_array_equal(est.components_, components)  # nothing changed


def test_dl_errors_leave_the_estimator_usable(dl_X):
    est = mc.DictionaryLearning(DL_K, n_nonzero_coefs=2, max_iter=2, random_state=0)
    for _ in range(3):
        with pytest.raises(ValueError):
            est.fit(dl_X[:, :0])
    assert est.fit(dl_X).transform(dl_X).shape == (DL_N, DL_K)


# ---------------------------------------------------------------------------------------------
# k-means codebooks: fit_codebook, pack_4bit, unpack_4bit
# ---------------------------------------------------------------------------------------------

KM_N, KM_K = 20, 3  # values and n_codes of the valid baseline


@pytest.fixture
def km_values():
    return np.random.default_rng(0).laplace(size=(4, 5))


def _fit(values, n_codes=KM_K, **kwargs):
    return mc.fit_codebook(values, n_codes, **kwargs)


def test_km_baseline_problem_is_valid(km_values):
    w = np.ones_like(km_values)
    cb, codes, inertia = _fit(km_values, init=np.array([-1.0, 0.0, 1.0]), sample_weight=w,
                              n_init=2, max_iter=5, tol=0.0, random_state=0, n_threads=1)
    assert cb.shape == (KM_K,) and codes.shape == (4, 5) and inertia >= 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("bad", "what"), [(np.nan, "NaN"), (np.inf, "infinity"), (-np.inf, "infinity")])
def test_km_non_finite_values(km_values, bad, what, dtype):
    values = _with(km_values, (2, 3), bad).astype(dtype)
    with pytest.raises(ValueError, match=rf"^values contains {what}"):
        _fit(values)


def test_km_float64_values_too_large_for_float32_weights_dtype(km_values):
    # sample_weight is converted to the dtype of values: 1e300 does not fit float32.
    with pytest.raises(ValueError, match=r"^sample_weight has values too large for float32"):
        _fit(km_values.astype(np.float32), sample_weight=np.full(km_values.shape, 1e300))


def test_km_complex_values(km_values):
    with pytest.raises(TypeError, match=r"^values must be real"):
        _fit(km_values + 1j)


@pytest.mark.parametrize("kind", ["object", "str", "bytes", "datetime"])
def test_km_non_numeric_values(km_values, kind):
    bad = {"object": km_values.astype(object), "str": km_values.astype(str),
           "bytes": km_values.astype("S8"),
           "datetime": np.zeros(km_values.shape, dtype="datetime64[s]")}[kind]
    with pytest.raises(TypeError, match=r"^values must be a numeric array"):
        _fit(bad)


def test_km_none_sparse_and_ragged_values(km_values):
    with pytest.raises(TypeError, match=r"^values must be an array, got None"):
        _fit(None)
    with pytest.raises(TypeError, match=r"^values must be a dense array"):
        _fit(scipy.sparse.csr_array(km_values))
    with pytest.raises(ValueError, match=r"^values could not be converted"):
        _fit([[1.0, 2.0], [3.0]], 1)


@pytest.mark.parametrize("shape", [(0,), (0, 5), (4, 0), (2, 0, 3)])
def test_km_empty_values(shape):
    with pytest.raises(ValueError, match=r"^values is empty"):
        _fit(np.zeros(shape), 1)


@pytest.mark.parametrize("value", [np.float64(1.5), np.array(2.0), 3.0, 7])
def test_km_scalar_values(value):
    with pytest.raises(ValueError, match=r"^values must be an array, not a scalar"):
        _fit(value, 1)


@pytest.mark.parametrize("value", [0, -1, -100])
def test_km_n_codes_too_small(km_values, value):
    with pytest.raises(ValueError, match=r"^n_codes must be >= 1; got"):
        _fit(km_values, value)


@pytest.mark.parametrize("value", [KM_N + 1, 1000])
def test_km_n_codes_above_the_number_of_values(km_values, value):
    with pytest.raises(ValueError, match=rf"^n_codes must be <= {KM_N} \(the number of values, {KM_N}\); got {value}"):
        _fit(km_values, value)
    assert _fit(km_values, KM_N)[0].shape == (KM_N,)  # the limit itself is fine


@pytest.mark.parametrize("value", [2.0, 2.5, "3", None, True, np.float64(3.0), [3]])
def test_km_n_codes_not_an_integer(km_values, value):
    with pytest.raises(TypeError, match=r"^n_codes must be an integer"):
        _fit(km_values, value)


def test_km_n_codes_numpy_integer_accepted(km_values):
    a, b = _fit(km_values, np.int64(3)), _fit(km_values, 3)
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("value", ["Optimal", "kmeans", "elkan", "", None, 1])
def test_km_unknown_method(km_values, value):
    with pytest.raises(ValueError, match=r"^method must be one of \('auto', 'optimal', 'lloyd'\); got"):
        _fit(km_values, method=value)


# "random" is a start too since block k-means (drawn values, for the scalar path as well).
BAD_INIT_NAMES = ["Random", "kmeans++", "k-means||", "", "bogus"]


@pytest.mark.parametrize("value", BAD_INIT_NAMES)
def test_km_init_unknown_string(km_values, value):
    with pytest.raises(ValueError, match=r"^init must be one of \('k-means\+\+', 'random'\) or an "
                                         r"array of starting centroids; got"):
        _fit(km_values, init=value)


@pytest.mark.parametrize("shape", [(KM_K + 1,), (KM_K - 1,), (1,)])
def test_km_init_wrong_length(km_values, shape):
    with pytest.raises(ValueError, match=rf"^init must have shape \({KM_K},\) .*; got \({shape[0]},\)"):
        _fit(km_values, init=np.zeros(shape))


@pytest.mark.parametrize("init", [np.zeros((KM_K, 1)), np.zeros((1, KM_K)), np.float64(0.5)])
def test_km_init_wrong_ndim(km_values, init):
    with pytest.raises(ValueError, match=r"^init must be 1-D"):
        _fit(km_values, init=init)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("bad", "what"), [(np.nan, "NaN"), (np.inf, "infinity")])
def test_km_init_non_finite(km_values, bad, what, dtype):
    with pytest.raises(ValueError, match=rf"^init contains {what}"):
        _fit(km_values.astype(dtype), init=np.array([0.0, bad, 1.0]))


def test_km_init_of_the_wrong_type(km_values):
    with pytest.raises(TypeError, match=r"^init must be an array, got None"):
        _fit(km_values, init=None)
    with pytest.raises(TypeError, match=r"^init must be real"):
        _fit(km_values, init=np.zeros(KM_K) + 1j)
    with pytest.raises(TypeError, match=r"^init must be a numeric array"):
        _fit(km_values, init=np.array(["a", "b", "c"]))


@pytest.mark.parametrize(("value", "exc"), [(0, ValueError), (-1, ValueError), (1.0, TypeError),
                                            (None, TypeError), (True, TypeError)])
def test_km_bad_n_init(km_values, value, exc):
    with pytest.raises(exc, match=r"^n_init must be"):
        _fit(km_values, n_init=value)


@pytest.mark.parametrize(("value", "exc"), [(0, ValueError), (-3, ValueError), (2.0, TypeError),
                                            (None, TypeError), (True, TypeError)])
def test_km_bad_max_iter(km_values, value, exc):
    with pytest.raises(exc, match=r"^max_iter must be"):
        _fit(km_values, max_iter=value)


@pytest.mark.parametrize(("value", "exc", "msg"), BAD_TOL)
def test_km_bad_tol(km_values, value, exc, msg):
    with pytest.raises(exc, match=rf"^tol {msg}"):
        _fit(km_values, tol=value)


@pytest.mark.parametrize("shape", [(KM_N,), (5, 4), (4, 5, 1), (4, 4), (1, 5)])
def test_km_sample_weight_wrong_shape(km_values, shape):
    with pytest.raises(ValueError, match=r"^sample_weight must have the shape of values, \(4, 5\); got"):
        _fit(km_values, sample_weight=np.ones(shape))


def test_km_sample_weight_scalar(km_values):
    with pytest.raises(ValueError, match=r"^sample_weight must be an array, not a scalar"):
        _fit(km_values, sample_weight=1.0)


def test_km_sample_weight_negative(km_values):
    w = np.ones(km_values.shape)
    w[1, 1] = -1e-9
    with pytest.raises(ValueError, match=r"^sample_weight must be non-negative"):
        _fit(km_values, sample_weight=w)


def test_km_sample_weight_all_zero(km_values):
    with pytest.raises(ValueError, match=r"^sample_weight is zero everywhere"):
        _fit(km_values, sample_weight=np.zeros(km_values.shape))
    w = np.zeros(km_values.shape)
    w[3, 4] = 1e-30  # one positive weight is enough
    assert _fit(km_values, sample_weight=w)[0].shape == (KM_K,)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("bad", "what"), [(np.nan, "NaN"), (np.inf, "infinity")])
def test_km_sample_weight_non_finite(km_values, bad, what, dtype):
    with pytest.raises(ValueError, match=rf"^sample_weight contains {what}"):
        _fit(km_values.astype(dtype), sample_weight=_with(np.ones(km_values.shape), (0, 0), bad))


def test_km_sample_weight_of_the_wrong_type(km_values):
    with pytest.raises(TypeError, match=r"^sample_weight must be real"):
        _fit(km_values, sample_weight=np.ones(km_values.shape) + 0j)
    with pytest.raises(TypeError, match=r"^sample_weight must be a numeric array"):
        _fit(km_values, sample_weight=np.ones(km_values.shape).astype(object))


@pytest.mark.parametrize(("value", "exc"), [(-1, ValueError), (1.5, TypeError), ("0", TypeError),
                                            (True, TypeError), (np.random, TypeError)])
def test_km_bad_random_state(km_values, value, exc):
    with pytest.raises(exc, match=r"^random_state must be"):
        _fit(km_values, random_state=value)


@pytest.mark.parametrize(("value", "exc"), [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                            (True, TypeError), ("2", TypeError)])
def test_km_bad_n_threads(km_values, value, exc):
    with pytest.raises(exc, match=r"^n_threads must be"):
        _fit(km_values, n_threads=value)


def test_km_keyword_only(km_values):
    with pytest.raises(TypeError):
        mc.fit_codebook(km_values, KM_K, "optimal")  # method, init, ... are keyword-only


def test_km_errors_leave_the_inputs_unchanged(km_values):
    values = km_values.copy()
    w = np.ones(km_values.shape)
    w[0, 0] = -1.0
    w_copy = w.copy()
    with pytest.raises(ValueError):
        _fit(values, sample_weight=w)
    np.testing.assert_array_equal(values, km_values)
    np.testing.assert_array_equal(w, w_copy)


def test_km_core_checks():
    # The binding's own checks (the Python layer never sends these).
    x = np.linspace(0.0, 1.0, 10)
    with pytest.raises(ValueError, match="values must be 1-D"):
        _core.kmeans_1d_f64(x.reshape(2, 5), None, 2, None, "lloyd", 10, 0.0, 0, 1, 1)
    with pytest.raises(ValueError, match="method must be 'lloyd' or 'optimal'"):
        _core.kmeans_1d_f64(x, None, 2, None, "auto", 10, 0.0, 0, 1, 1)
    with pytest.raises(ValueError, match="weights: wrong shape"):
        _core.kmeans_1d_f64(x, np.ones(9), 2, None, "lloyd", 10, 0.0, 0, 1, 1)
    with pytest.raises(ValueError, match="init: wrong shape"):
        _core.kmeans_1d_f64(x, None, 2, np.zeros(3), "lloyd", 10, 0.0, 0, 1, 1)
    with pytest.raises(ValueError, match="need n >= 1 and k >= 1"):
        _core.kmeans_1d_f64(x, None, 0, None, "lloyd", 10, 0.0, 0, 1, 1)
    with pytest.raises(ValueError, match="need n >= 1 and k >= 1"):
        _core.kmeans_1d_f32(np.zeros(0, np.float32), None, 1, None, "optimal", 10, 0.0, 0, 1, 1)
    with pytest.raises(ValueError, match="bad options"):
        _core.kmeans_1d_f64(x, None, 2, None, "lloyd", 10, -1.0, 0, 1, 1)
    with pytest.raises(ValueError, match="bad options"):
        _core.kmeans_1d_f64(x, None, 2, None, "lloyd", 10, 0.0, 0, 0, 1)


# --- blocks: fit_codebook(block_size=b) and KMeansQuantizer ----------------------------------
# The valid baseline: 4 rows of 6 values, so 12 blocks of 2, into 3 codes.

KMB_B, KMB_K, KMB_POINTS = 2, 3, 12


def _fit_blocks(values, n_codes=KMB_K, **kwargs):
    kwargs.setdefault("block_size", KMB_B)
    return mc.fit_codebook(values, n_codes, **kwargs)


@pytest.fixture
def kmb_values():
    return np.random.default_rng(1).laplace(size=(4, 6))


def test_kmb_baseline_problem_is_valid(kmb_values):
    cb, codes, inertia = _fit_blocks(kmb_values, init=np.zeros((KMB_K, KMB_B)) + [[-1], [0], [1]],
                                     sample_weight=np.ones((4, 3)), max_iter=5, tol=0.0,
                                     max_points_per_centroid=2, random_state=0, n_threads=1)
    assert cb.shape == (KMB_K, KMB_B) and codes.shape == (4, 3) and inertia >= 0
    q = mc.KMeansQuantizer(KMB_K, block_size=KMB_B, random_state=0).fit(kmb_values)
    assert q.predict(kmb_values).shape == (4, 3)


@pytest.mark.parametrize(("value", "exc", "msg"),
                         [(0, ValueError, "must be >= 1; got 0"), (-1, ValueError, "must be >= 1"),
                          (2.5, TypeError, "must be an integer"), (2.0, TypeError, "must be an integer"),
                          ("2", TypeError, "must be an integer"), (None, TypeError, "must be an integer"),
                          (True, TypeError, "must be an integer")])
def test_kmb_bad_block_size(kmb_values, value, exc, msg):
    with pytest.raises(exc, match=rf"^block_size {msg}"):
        _fit_blocks(kmb_values, block_size=value)
    with pytest.raises(exc, match=rf"^block_size {msg}"):
        mc.KMeansQuantizer(KMB_K, block_size=value).fit(kmb_values)


@pytest.mark.parametrize("value", [4, 5, 7, 12])
def test_kmb_block_size_must_divide_the_last_axis(kmb_values, value):
    with pytest.raises(ValueError, match=rf"^block_size={value} must divide the length of the last "
                                         r"axis of values, 6"):
        _fit_blocks(kmb_values, 1, block_size=value)
    assert _fit_blocks(kmb_values, 1, block_size=6)[1].shape == (4, 1)  # 6 itself is fine


def test_kmb_numpy_integer_block_size_accepted(kmb_values):
    a, b = _fit_blocks(kmb_values, block_size=np.int64(2)), _fit_blocks(kmb_values, block_size=2)
    assert a[0].shape == b[0].shape == (KMB_K, KMB_B)


def test_kmb_optimal_method_is_for_scalars_only(kmb_values):
    with pytest.raises(ValueError, match=r"^method='optimal' .* exists for block_size=1 only"):
        _fit_blocks(kmb_values, method="optimal")
    with pytest.raises(ValueError, match=r"^method='optimal' .* exists for block_size=1 only"):
        mc.KMeansQuantizer(KMB_K, block_size=KMB_B, method="optimal").fit(kmb_values)


@pytest.mark.parametrize("value", ["Optimal", "elkan", "", None, 1])
def test_kmb_unknown_method(kmb_values, value):
    with pytest.raises(ValueError, match=r"^method must be one of \('auto', 'optimal', 'lloyd'\); got"):
        _fit_blocks(kmb_values, method=value)


@pytest.mark.parametrize("shape", [(KMB_K, KMB_B + 1), (KMB_K + 1, KMB_B), (KMB_K - 1, KMB_B),
                                   (KMB_B, KMB_K), (1, KMB_B)])
def test_kmb_init_wrong_shape(kmb_values, shape):
    expected = rf"^init must have shape \({KMB_K}, {KMB_B}\) \(n_codes, block_size\); got \({shape[0]}, {shape[1]}\)"
    with pytest.raises(ValueError, match=expected):
        _fit_blocks(kmb_values, init=np.zeros(shape))
    with pytest.raises(ValueError, match=expected):
        mc.KMeansQuantizer(KMB_K, block_size=KMB_B, init=np.zeros(shape)).fit(kmb_values)


@pytest.mark.parametrize("init", [np.zeros(KMB_K * KMB_B), np.zeros(KMB_K), np.zeros((KMB_K, KMB_B, 1)),
                                  np.float64(0.5)])
def test_kmb_init_wrong_ndim(kmb_values, init):
    # Blocks need a 2-D start (the scalar path's 1-D one is refused, not reshaped).
    with pytest.raises(ValueError, match=r"^init must (be 2-D|be an array, not a scalar)"):
        _fit_blocks(kmb_values, init=init)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("bad", "what"), [(np.nan, "NaN"), (np.inf, "infinity"), (-np.inf, "infinity")])
def test_kmb_init_non_finite(kmb_values, bad, what, dtype):
    init = _with(np.zeros((KMB_K, KMB_B)), (1, 0), bad)
    with pytest.raises(ValueError, match=rf"^init contains {what}"):
        _fit_blocks(kmb_values.astype(dtype), init=init)


@pytest.mark.parametrize("value", BAD_INIT_NAMES)
def test_kmb_init_unknown_string(kmb_values, value):
    with pytest.raises(ValueError, match=r"^init must be one of \('k-means\+\+', 'random'\) or an "
                                         r"array of starting centroids; got"):
        _fit_blocks(kmb_values, init=value)
    with pytest.raises(ValueError, match=r"^init must be one of"):
        mc.KMeansQuantizer(KMB_K, block_size=KMB_B, init=value).fit(kmb_values)


@pytest.mark.parametrize("shape", [(4, 6), (KMB_POINTS,), (3, 4), (4, 3, 1), (1, 3), (4, 2)])
def test_kmb_sample_weight_wrong_shape(kmb_values, shape):
    # One weight per block (the codes' shape, (4, 3)); the values' shape (4, 6) is refused.
    with pytest.raises(ValueError, match=r"^sample_weight must have the shape of the codes \(one "
                                         r"weight per block\), \(4, 3\).*; got"):
        _fit_blocks(kmb_values, sample_weight=np.ones(shape))


def test_kmb_sample_weight_wrong_shape_message(kmb_values):
    with pytest.raises(ValueError) as info:
        _fit_blocks(kmb_values, sample_weight=np.ones((4, 6)))
    assert str(info.value).count("(4, 3)") == 1, str(info.value)


def test_kmb_sample_weight_negative_or_all_zero(kmb_values):
    w = np.ones((4, 3))
    w[2, 1] = -1e-9
    with pytest.raises(ValueError, match=r"^sample_weight must be non-negative"):
        _fit_blocks(kmb_values, sample_weight=w)
    with pytest.raises(ValueError, match=r"^sample_weight is zero everywhere"):
        _fit_blocks(kmb_values, sample_weight=np.zeros((4, 3)))
    w = np.zeros((4, 3))
    w[3, 2] = 1e-30  # one positive weight is enough
    assert _fit_blocks(kmb_values, sample_weight=w)[0].shape == (KMB_K, KMB_B)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("bad", "what"), [(np.nan, "NaN"), (np.inf, "infinity")])
def test_kmb_sample_weight_non_finite(kmb_values, bad, what, dtype):
    with pytest.raises(ValueError, match=rf"^sample_weight contains {what}"):
        _fit_blocks(kmb_values.astype(dtype), sample_weight=_with(np.ones((4, 3)), (0, 1), bad))


@pytest.mark.parametrize("value", [KMB_POINTS + 1, 24, 1000])
def test_kmb_n_codes_above_the_number_of_blocks(kmb_values, value):
    with pytest.raises(ValueError, match=rf"^n_codes must be <= {KMB_POINTS} \(the number of blocks, "
                                         rf"{KMB_POINTS}\); got {value}"):
        _fit_blocks(kmb_values, value)
    assert _fit_blocks(kmb_values, KMB_POINTS)[0].shape == (KMB_POINTS, KMB_B)  # the limit is fine


@pytest.mark.parametrize(("value", "exc", "msg"),
                         [(0, ValueError, "must be >= 1; got 0"), (-1, ValueError, "must be >= 1"),
                          (2.5, TypeError, "must be an integer"), (2.0, TypeError, "must be an integer"),
                          ("2", TypeError, "must be an integer"), (True, TypeError, "must be an integer")])
def test_kmb_bad_max_points_per_centroid(kmb_values, value, exc, msg):
    with pytest.raises(exc, match=rf"^max_points_per_centroid {msg}"):
        _fit_blocks(kmb_values, max_points_per_centroid=value)
    with pytest.raises(exc, match=rf"^max_points_per_centroid {msg}"):
        mc.KMeansQuantizer(KMB_K, block_size=KMB_B, max_points_per_centroid=value).fit(kmb_values)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("bad", "what"), [(np.nan, "NaN"), (np.inf, "infinity"), (-np.inf, "infinity")])
def test_kmb_non_finite_values(kmb_values, bad, what, dtype):
    values = _with(kmb_values, (2, 3), bad).astype(dtype)
    with pytest.raises(ValueError, match=rf"^values contains {what}"):
        _fit_blocks(values)


@pytest.mark.parametrize(("value", "exc"), [(0, ValueError), (-1, ValueError), (1.0, TypeError)])
def test_kmb_bad_n_init(kmb_values, value, exc):
    with pytest.raises(exc, match=r"^n_init must be"):
        _fit_blocks(kmb_values, n_init=value)


@pytest.mark.parametrize(("value", "exc", "msg"), BAD_TOL)
def test_kmb_bad_tol(kmb_values, value, exc, msg):
    with pytest.raises(exc, match=rf"^tol {msg}"):
        _fit_blocks(kmb_values, tol=value)
    with pytest.raises(exc, match=rf"^tol {msg}"):
        mc.KMeansQuantizer(KMB_K, block_size=KMB_B, tol=value).fit(kmb_values)


@pytest.mark.parametrize("n_features", [3, 5, 7])
def test_kmb_estimator_n_features_not_divisible(n_features):
    X = np.ones((4, n_features))
    with pytest.raises(ValueError, match=rf"^block_size=2 must divide n_features={n_features}"):
        mc.KMeansQuantizer(KMB_K, block_size=2).fit(X)


@pytest.mark.parametrize("method", ["predict", "transform", "score"])
def test_kmb_estimator_wrong_number_of_features_after_fit(kmb_values, method):
    est = mc.KMeansQuantizer(KMB_K, block_size=KMB_B, random_state=0).fit(kmb_values)
    centers = est.cluster_centers_.copy()
    for bad in (kmb_values[:, :4], np.hstack([kmb_values, kmb_values[:, :2]]), kmb_values[:, :5]):
        expected = rf"^X has {bad.shape[1]} features, but KMeansQuantizer is expecting 6"
        with pytest.raises(ValueError, match=expected):
            getattr(est, method)(bad)
    np.testing.assert_array_equal(est.cluster_centers_, centers)  # nothing changed


@pytest.mark.parametrize("method", ["predict", "transform", "score"])
def test_kmb_estimator_before_fit(kmb_values, method):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="KMeansQuantizer instance is not fitted yet"):
        getattr(mc.KMeansQuantizer(KMB_K, block_size=KMB_B), method)(kmb_values)


def test_kmb_estimator_bad_sample_weight(kmb_values):
    est = mc.KMeansQuantizer(KMB_K, block_size=KMB_B)
    with pytest.raises(ValueError, match=r"sample_weight.shape == \(5,\), expected \(4,\)"):
        est.fit(kmb_values, sample_weight=np.ones(5))
    with pytest.raises(ValueError, match=r"^sample_weight must be non-negative"):
        est.fit(kmb_values, sample_weight=-np.ones(4))
    with pytest.raises(ValueError, match=r"sample_weight|[Ss]ample weights"):
        est.fit(kmb_values, sample_weight=np.zeros(4))


@pytest.mark.parametrize(("bad", "what"), [(np.nan, "NaN"), (np.inf, "infinity")])
def test_kmb_estimator_non_finite_X(kmb_values, bad, what):
    bad_X = _with(kmb_values, (1, 1), bad)
    with pytest.raises(ValueError, match=rf"Input X contains {what}"):
        mc.KMeansQuantizer(KMB_K, block_size=KMB_B).fit(bad_X)
    est = mc.KMeansQuantizer(KMB_K, block_size=KMB_B).fit(kmb_values)
    with pytest.raises(ValueError, match=rf"Input X contains {what}"):
        est.predict(bad_X)


def test_kmb_errors_leave_the_estimator_usable(kmb_values):
    est = mc.KMeansQuantizer(KMB_K, block_size=KMB_B, random_state=0)
    for _ in range(3):
        with pytest.raises(ValueError):
            est.fit(kmb_values[:, :5])
    assert est.fit(kmb_values).transform(kmb_values).shape == (4, 6)


def test_kmb_core_checks():
    # The bindings' own checks (the Python layer never sends these).
    X = np.linspace(0.0, 1.0, 20).reshape(10, 2)
    args = (10, 0.0, 0, 1, False, 0, 1)  # max_iter, tol, seed, n_init, random_init, mppc, threads
    with pytest.raises(ValueError, match="X must be 2-D"):
        _core.kmeans_block_f64(X.ravel(), None, 2, None, *args)
    for k, Y in ((11, X), (0, X), (1, X[:, :0])):
        with pytest.raises(ValueError, match=r"need 1 <= k <= n_points and dim >= 1"):
            _core.kmeans_block_f64(Y, None, k, None, *args)
    with pytest.raises(ValueError, match="weights: wrong shape"):
        _core.kmeans_block_f64(X, np.ones(9), 2, None, *args)
    with pytest.raises(ValueError, match="init: wrong shape"):
        _core.kmeans_block_f32(X.astype(np.float32), None, 2, np.zeros((2, 3), np.float32), *args)
    for bad in ((-1, 0.0, 0, 1, False, 0, 1), (10, -1.0, 0, 1, False, 0, 1),
                (10, 0.0, 0, 0, False, 0, 1), (10, 0.0, 0, 1, False, -1, 1)):
        with pytest.raises(ValueError, match="kmeans_block: bad options"):
            _core.kmeans_block_f64(X, None, 2, None, *bad)
    with pytest.raises(ValueError, match="X and centers must be 2-D with the same number of columns"):
        _core.kmeans_assign_f64(X, np.zeros((2, 3)), None, 1)
    with pytest.raises(ValueError, match="need at least one center and one column"):
        _core.kmeans_assign_f64(X, np.zeros((0, 2)), None, 1)
    with pytest.raises(ValueError, match="weights: wrong shape"):
        _core.kmeans_assign_f64(X, np.zeros((2, 2)), np.ones(3), 1)


@pytest.mark.parametrize("codes", [[16], [0, 1, 255], [[3, 4], [5, 99]], np.array([300], np.int64)])
def test_pack_4bit_codes_above_15(codes):
    with pytest.raises(ValueError, match=r"^codes must lie in \[0, 15\]"):
        mc.pack_4bit(codes)


@pytest.mark.parametrize("codes", [[-1], [0, 5, -3], np.array([[-128, 0]], np.int8)])
def test_pack_4bit_negative_codes(codes):
    with pytest.raises(ValueError, match=r"^codes must lie in \[0, 15\]"):
        mc.pack_4bit(codes)


@pytest.mark.parametrize("codes", [[1.0, 2.0], np.array([1, 2], np.float32), [True, False],
                                   ["1", "2"], [1 + 0j], np.array([1, 2], object)])
def test_pack_4bit_non_integer_codes(codes):
    with pytest.raises(TypeError, match=r"^codes must be integers; got dtype"):
        mc.pack_4bit(codes)


def test_pack_4bit_scalar():
    with pytest.raises(ValueError, match=r"^codes must have at least one axis"):
        mc.pack_4bit(np.uint8(3))


@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint16, np.float32, np.bool_])
def test_unpack_4bit_not_uint8(dtype):
    with pytest.raises(TypeError, match=r"^packed must be uint8; got dtype"):
        mc.unpack_4bit(np.array([1, 2], dtype), 3)
    with pytest.raises(TypeError, match=r"^packed must be uint8; got dtype int"):
        mc.unpack_4bit([1, 2], 3)  # a list is int64, not uint8


@pytest.mark.parametrize(("n_bytes", "n"), [(2, 5), (2, 100), (3, 7)])
def test_unpack_4bit_n_too_large(n_bytes, n):
    with pytest.raises(ValueError, match=rf"^n must be <= {2 * n_bytes}; got {n}"):
        mc.unpack_4bit(np.zeros(n_bytes, np.uint8), n)


@pytest.mark.parametrize(("n_bytes", "n"), [(2, 2), (2, 0), (3, 4), (1, 0)])
def test_unpack_4bit_n_too_small(n_bytes, n):
    # n must need every byte: 2 * n_bytes - 1 or 2 * n_bytes.
    with pytest.raises(ValueError, match=rf"^n={n} does not match {n_bytes} packed bytes"):
        mc.unpack_4bit(np.zeros((2, n_bytes), np.uint8), n)


@pytest.mark.parametrize(("value", "exc"), [(-1, ValueError), (3.0, TypeError), ("3", TypeError),
                                            (None, TypeError), (True, TypeError)])
def test_unpack_4bit_bad_n(value, exc):
    with pytest.raises(exc, match=r"^n must be"):
        mc.unpack_4bit(np.zeros(2, np.uint8), value)


@pytest.mark.parametrize("n", [0, 1])
def test_unpack_4bit_scalar(n):
    with pytest.raises(ValueError, match=r"^packed"):
        mc.unpack_4bit(np.uint8(0x21), n)  # expected: a ValueError naming packed


# ---------------------------------------------------------------------------------------------
# Factored products: the batch-1 4-bit codebook GEMV binding
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["codes_rows", "codes_bytes", "codebook_17", "codebook_empty",
                                 "x_2d", "n_zero"])
def test_codebook4_gemv_bad_input(bad):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (10, 20)).astype(np.uint8)
    cb = rng.standard_normal(16).astype(np.float32)
    x = rng.standard_normal(10).astype(np.float32)
    packed = mc.pack_4bit(codes)
    n = 20
    if bad == "codes_rows":
        packed = packed[:-1]
    elif bad == "codes_bytes":
        packed = np.ascontiguousarray(packed[:, :-1])
    elif bad == "codebook_17":
        cb = np.zeros(17, np.float32)
    elif bad == "codebook_empty":
        cb = np.zeros(0, np.float32)
    elif bad == "x_2d":
        x = x[None, :]
    elif bad == "n_zero":
        n = 0
    with pytest.raises(ValueError, match="codes|codebook|x must|ceil"):
        _core.codebook4_gemv(x, packed, n, cb, 1)


# ---------------------------------------------------------------------------------------------
# Factored products: bad inputs of matmul / matmul_backward, and the corrupted factors that the
# constructors (and the native entry points) reject
# ---------------------------------------------------------------------------------------------

Codebook, LowRank, Pruned = mc.factors.Codebook, mc.factors.LowRank, mc.factors.Pruned
SignBits, SparseCodes = mc.factors.SignBits, mc.factors.SparseCodes
_FM, _FN = 6, 8  # W is 6 x 8 in every form below


def _factored_forms():
    rng = np.random.default_rng(0)
    f32 = np.float32
    return {
        "low_rank": LowRank(rng.standard_normal((_FM, 3)).astype(f32),
                            rng.standard_normal((3, _FN)).astype(f32)),
        "sparse_codes": SparseCodes(rng.integers(0, 5, (_FM, 2)),
                                    rng.standard_normal((_FM, 2)).astype(f32),
                                    rng.standard_normal((5, _FN)).astype(f32)),
        "codebook_4bit": Codebook(mc.pack_4bit(rng.integers(0, 16, (_FM, _FN))),
                                  rng.standard_normal((16, 1)).astype(f32), _FN, packed=True),
        "codebook_blocks": Codebook(rng.integers(0, 7, (_FM, _FN // 2)).astype(np.uint16),
                                    rng.standard_normal((7, 2)), _FN),
        "sign_bits": SignBits(rng.integers(0, 256, (4, 1)).astype(np.uint8),
                              rng.standard_normal(_FN).astype(f32), 7, _FM),
        "pruned_values": Pruned(np.array([0, 2, 2, 3, 5, 5, 6]), np.array([1, 7, 0, 2, 3, 5]),
                                _FN, values=rng.standard_normal(6)),
        "pruned_codes": Pruned(np.array([0, 2, 2, 3, 5, 5, 6]), np.array([1, 7, 0, 2, 3, 5]),
                               _FN, codes=np.array([0, 1, 2, 0, 1, 2]),
                               codebook=np.array([0.5, -1.0, 2.0], f32)),
    }


_FORM_NAMES = sorted(_factored_forms())


@pytest.fixture(params=_FORM_NAMES)
def factored(request):
    return _factored_forms()[request.param]


def test_factored_baseline_is_valid(factored):
    x = np.ones((3, _FM), np.float32)
    assert factored.matmul(x).shape == (3, _FN)
    dx, grads = factored.matmul_backward(x, np.ones((3, _FN), np.float32))
    assert dx.shape == (3, _FM) and set(grads) == set(factored.trainable_fields)


@pytest.mark.parametrize(("x_shape", "dy_shape"), [
    ((3, _FM), (3, _FN + 1)),      # wrong n
    ((3, _FM), (3, _FN - 1)),
    ((3, _FM), (4, _FN)),          # other batch
    ((3, _FM), (1, _FN)),          # no broadcasting
    ((3, _FM), (_FN,)),
    ((3, _FM), (3, 1, _FN)),
    ((2, 3, _FM), (6, _FN)),       # same batch, other leading shape
    ((2, 3, _FM), (3, 2, _FN)),
    ((_FM,), (1, _FN)),
    ((_FM,), ()),
    ((0, _FM), (1, _FN)),
])
def test_factored_backward_dy_wrong_shape(factored, x_shape, dy_shape):
    x = np.ones(x_shape, np.float32)
    with pytest.raises(ValueError, match=r"\bdy must have shape"):
        factored.matmul_backward(x, np.ones(dy_shape, np.float32))


@pytest.mark.parametrize("x_shape", [(3, _FM + 1), (3, _FM - 1), (_FN,), (1,), (), (_FM, 1),
                                     (2, 3, _FN)])
def test_factored_x_wrong_last_dim(factored, x_shape):
    x = np.ones(x_shape, np.float32)
    with pytest.raises(ValueError, match=rf"^x must have shape \(\.\.\., {_FM}\)"):
        factored.matmul(x)
    dy_shape = x_shape[:-1] + (_FN,) if x_shape else (_FN,)
    with pytest.raises(ValueError, match=rf"^x must have shape \(\.\.\., {_FM}\)"):
        factored.matmul_backward(x, np.ones(dy_shape, np.float32))


_NON_NUMERIC = [np.array([["a"] * _FM]), np.array([[None] * _FM], dtype=object),
                np.ones((1, _FM), np.complex64), np.zeros((1, _FM), "datetime64[s]"),
                [["1.0"] * _FM]]


@pytest.mark.parametrize("x", _NON_NUMERIC, ids=["str", "object", "complex", "datetime", "list"])
def test_factored_non_numeric_x(factored, x):
    with pytest.raises(TypeError, match=r"^x must be a real numeric array"):
        factored.matmul(x)
    with pytest.raises(TypeError, match=r"^x must be a real numeric array"):
        factored.matmul_backward(x, np.ones((1, _FN)))


@pytest.mark.parametrize("dy", [np.array([["a"] * _FN]), np.ones((1, _FN), np.complex128),
                                np.array([[None] * _FN], dtype=object)],
                         ids=["str", "complex", "object"])
def test_factored_non_numeric_dy(factored, dy):
    with pytest.raises(TypeError, match=r"^dy must be a real numeric array"):
        factored.matmul_backward(np.ones((1, _FM)), dy)


def test_factored_backward_flags_are_keyword_only(factored):
    with pytest.raises(TypeError):
        factored.matmul_backward(np.ones((1, _FM)), np.ones((1, _FN)), True, False)


# Corrupted factors: rejected when the factorization is built, never reaching a kernel.

@pytest.mark.parametrize(("build", "msg"), [
    (lambda: Codebook(np.array([[0, 3]], np.uint8), np.zeros((3, 1)), 2),
     r"^codes must lie in \[0, 3\); got values in \[0, 3\]"),
    (lambda: Codebook(np.array([[0, 70000]], np.int64), np.zeros((300, 2)), 4),
     r"^codes must lie in \[0, 300\)"),
    (lambda: Codebook(np.array([[-1, 0]], np.int32), np.zeros((3, 1)), 2),
     r"^codes must lie in \[0, 3\)"),
    (lambda: Codebook(np.array([[0x50]], np.uint8), np.zeros((5, 1)), 2, packed=True),
     r"^packed codes must lie in \[0, 5\)"),   # the high nibble is 5
    (lambda: Codebook(np.array([[0x05]], np.uint8), np.zeros((5, 1)), 2, packed=True),
     r"^packed codes must lie in \[0, 5\)"),   # the low nibble is 5
    (lambda: Codebook(np.array([[0x21, 0x13]], np.uint8), np.zeros((16, 1)), 3, packed=True),
     r"unused high nibble"),                   # 3 blocks: the 4th nibble must be 0
    (lambda: SparseCodes(np.array([[0, 4]]), np.zeros((1, 2)), np.zeros((4, 3))),
     r"^indices must lie in \[0, 4\)"),
    (lambda: SparseCodes(np.array([[-1, 0]]), np.zeros((1, 2)), np.zeros((4, 3))),
     r"^indices must lie in \[0, 4\)"),
    (lambda: Pruned(np.array([0, 2]), np.array([0, 1]), 3, codes=np.array([0, 2]),
                    codebook=np.zeros(2)),
     r"^codes must lie in \[0, 2\)"),
], ids=["codebook_u8", "codebook_i64", "codebook_negative", "packed_high", "packed_low",
        "packed_pad", "sparse_codes_high", "sparse_codes_negative", "pruned_codes"])
def test_factored_codes_out_of_range(build, msg):
    with pytest.raises(ValueError, match=msg):
        build()


@pytest.mark.parametrize(("indptr", "indices", "msg"), [
    ([0, 2, 1, 3], [0, 1, 2], r"^indptr must start at 0 and never decrease"),
    ([0, 3, 1, 3], [0, 1, 2], r"^indptr must start at 0 and never decrease"),
    ([1, 2, 3, 3], [0, 1, 2], r"^indptr must start at 0"),
    ([0, 1, 2, 3], [0, 5, 2], r"^indices must lie in \[0, 5\); got values in \[0, 5\]"),
    ([0, 1, 2, 3], [0, 9, 2], r"^indices must lie in \[0, 5\)"),
    ([0, 1, 2, 3], [0, -1, 2], r"^indices must lie in \[0, 5\)"),
    ([0, 1, 2, 4], [0, 1, 2], r"^indices must have indptr\[-1\] = 4 entries; got 3"),
    ([0, 1, 2, 2], [0, 1, 2], r"^indices must have indptr\[-1\] = 2 entries; got 3"),
], ids=["decreasing", "decreasing_inside", "start", "index_n", "index_above", "index_negative",
        "nnz_above", "nnz_below"])
@pytest.mark.parametrize("kind", ["values", "codes"])
def test_factored_corrupted_csr(indptr, indices, msg, kind):
    nnz = len(indices)
    extra = (dict(values=np.ones(nnz)) if kind == "values"
             else dict(codes=np.zeros(nnz, np.uint8), codebook=np.ones(2)))
    with pytest.raises(ValueError, match=msg):
        Pruned(np.array(indptr), np.array(indices), 5, **extra)


# The native entry points check what they are given too (check_csr and the shape checks in
# _core.cpp): a corrupted pattern passed past the Python layer raises ValueError, not a crash.

@pytest.mark.parametrize(("indptr", "indices", "msg"), [
    ([0, 2, 1, 3], [0, 1, 2], r"CSR: indptr decreases at row 1"),
    ([1, 2, 3, 3], [0, 1, 2], r"CSR: indptr\[0\] must be 0"),
    ([0, 1, 2, 3], [0, 5, 2], r"CSR: column index 5 at entry 1 outside \[0, 5\)"),
    ([0, 1, 2, 4], [0, 1, 2], r"CSR: indptr\[-1\] = 4 but there are 3 entries"),
    ([0, 3, 3, 3], [2, 1, 4], r"CSR: column indices decrease within row 0 at entry 1"),
])
@pytest.mark.parametrize("index_dtype", [np.uint16, np.int32])
@pytest.mark.parametrize("entry", ["pruned_matmul_f32", "pruned_backward_f32",
                                   "pruned_matmul_f64"])
def test_factored_native_csr_checks(entry, index_dtype, indptr, indices, msg):
    dt = np.float32 if entry.endswith("f32") else np.float64
    x = np.ones((2, 3), dt)
    pattern = (np.array(indptr, np.int64), np.array(indices, index_dtype))
    fn = getattr(_core, entry)
    # (values, codes, codebook): the entries as values, or as codes read through a codebook.
    for entries in ((np.ones(3, dt), None, None),
                    (None, np.zeros(3, np.uint8), np.ones(2, dt))):
        with pytest.raises(ValueError, match=msg):
            if entry.startswith("pruned_backward"):
                fn(x, np.ones((2, 5), dt), *pattern, *entries, 5, True, True, 1)
            else:
                fn(x, *pattern, *entries, 5, 1)


def test_factored_native_shape_checks():
    f32 = np.float32
    left, right = np.ones((4, 2), f32), np.ones((2, 3), f32)
    with pytest.raises(ValueError, match=r"x must be 2-D with 4 columns"):
        _core.lowrank_matmul_f32(np.ones((2, 5), f32), left, right, 1)
    with pytest.raises(ValueError, match=r"dy must be 2-D with 3 columns"):
        _core.lowrank_backward_f32(np.ones((2, 4), f32), np.ones((2, 4), f32), left, right,
                                   True, True, 1)
    with pytest.raises(ValueError, match=r"x and dy must have the same number of rows"):
        _core.lowrank_backward_f32(np.ones((2, 4), f32), np.ones((3, 3), f32), left, right,
                                   True, True, 1)
    with pytest.raises(ValueError, match=r"left \(m, r\) and right \(r, n\) must chain"):
        _core.lowrank_matmul_f32(np.ones((2, 4), f32), left, np.ones((3, 3), f32), 1)
    codes = np.zeros((4, 3), np.uint8)
    with pytest.raises(ValueError, match=r"fmt must be 0"):
        _core.codebook_matmul_f32(np.ones((1, 4), f32), codes, 7, np.ones((2, 1), f32), 3, 1)
    with pytest.raises(ValueError, match=r"codes must be uint16 for this format"):
        _core.codebook_matmul_f32(np.ones((1, 4), f32), codes, 2, np.ones((2, 1), f32), 3, 1)
    with pytest.raises(ValueError, match=r"4-bit codes need at most 16 codebook entries"):
        _core.codebook_matmul_f32(np.ones((1, 4), f32), np.zeros((4, 2), np.uint8), 0,
                                  np.ones((17, 1), f32), 3, 1)
    with pytest.raises(ValueError, match=r"codes have the wrong number of columns"):
        _core.codebook_matmul_f32(np.ones((1, 4), f32), codes, 1, np.ones((2, 1), f32), 4, 1)
    with pytest.raises(ValueError, match=r"bits must have ceil\(n / 8\) bytes per row"):
        _core.signbits_matmul_f32(np.ones((1, 4), f32), np.zeros((2, 2), np.uint8),
                                  np.ones(8, f32), 3, 1)
    with pytest.raises(ValueError, match=r"indices and values must have the same shape"):
        _core.sparse_codes_matmul_f32(np.ones((1, 4), f32), np.zeros((4, 2), np.int32),
                                      np.ones((4, 3), f32), np.ones((5, 3), f32), 1)
    indptr, indices = np.array([0, 1, 2, 2, 3], np.int64), np.array([0, 1, 2], np.uint16)
    with pytest.raises(ValueError, match=r"give values or codes, not both"):
        _core.pruned_matmul_f32(np.ones((1, 4), f32), indptr, indices, np.ones(3, f32),
                                np.zeros(3, np.uint8), np.ones(2, f32), 3, 1)
    with pytest.raises(ValueError, match=r"give values or codes, not both"):
        _core.pruned_matmul_f32(np.ones((1, 4), f32), indptr, indices, None, None, None, 3, 1)
    with pytest.raises(ValueError, match=r"codes must be uint8 or uint16"):
        _core.pruned_matmul_f32(np.ones((1, 4), f32), indptr, indices, None,
                                np.zeros(3, np.int32), np.ones(2, f32), 3, 1)
    with pytest.raises(ValueError, match=r"codes need a non-empty 1-D codebook"):
        _core.pruned_matmul_f32(np.ones((1, 4), f32), indptr, indices, None,
                                np.zeros(3, np.uint8), None, 3, 1)
    with pytest.raises(ValueError, match=r"values must have one entry per index"):
        _core.pruned_matmul_f32(np.ones((1, 4), f32), indptr, indices, np.ones(4, f32), None,
                                None, 3, 1)


# ---------------------------------------------------------------------------------------------
# Additive and structural forms (issues 12 and 13): one clear ValueError naming the argument

_W = np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)
_ONES = np.ones((4, 4), np.float32)
_BOOKS = np.ones((2, 4, 4), np.float32)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: mc.additive_encode(np.ones((4, 3), np.float32), _BOOKS),
     r"codebooks must have shape \(M, K, 3\)"),
    (lambda: mc.additive_encode(_ONES, _BOOKS, beam_size=0), r"beam_size must be >= 1"),
    (lambda: mc.additive_encode(_ONES, _BOOKS, init=np.full((4, 2), 9)),
     r"init codes must lie in \[0, 4\)"),
    (lambda: mc.additive_encode(np.full((4, 4), np.nan, np.float32), _BOOKS),
     r"X contains NaN"),
    (lambda: _core.additive_encode_f32(_ONES, _BOOKS, np.full((4, 2), 9, np.int32), 4, 1),
     r"init: codes must lie in \[0, n_codes\)"),
    (lambda: mc.AdditiveCompressor(2, 4, 4).compress(_W, X=np.ones((10, 5), np.float32)),
     r"X must have one column per row"),
    (lambda: mc.AdditiveCompressor(2, 4, 3).compress(_W), r"block_size=3 must divide n=16"),
    (lambda: mc.AdditiveCompressor(2, 1000, 4).compress(_W), r"n_codes must be <= 64"),
    (lambda: mc.compress(_W, "additive", compression_ratio=200),
     r"compression_ratio=200 is unreachable.*best reachable ratio is"),
    (lambda: mc.compress(np.full((8, 8), np.nan), "additive", compression_ratio=2),
     r"A contains NaN"),
    (lambda: mc.compress(_W, "block", n_blocks=40), r"n_blocks must be <= 16"),
    (lambda: mc.compress(_W, "mixed_block", block_size=5, num_bases=2),
     r"block_size=5 must divide both sides"),
    (lambda: mc.compress(_W, "mixed_block", block_size=4, num_bases=17),
     r"num_bases must be <= 16"),
    (lambda: mc.compress(_W, "input_output", input_block_size=4, input_factor=8,
                         output_factor=1), r"input_factor=8 is larger than input_block_size=4"),
    (lambda: mc.compress(_W, "input_output", input_block_size=5, input_factor=1,
                         output_factor=1), r"input_block_size=5 must divide"),
], ids=["encode-shapes", "encode-beam", "encode-init", "encode-nan", "core-init", "X-width",
        "block-size", "n-codes", "ratio", "nan", "n-blocks", "mixed-block-size", "num-bases",
        "io-factor", "io-block"])
def test_additive_and_structural_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
