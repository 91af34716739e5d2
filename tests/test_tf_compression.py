"""Compression during training (issue 9): ``CompressionSchedule``, the in-graph factorizers
(``matcompress.tf.factorize.plan``), the compressed and factored Keras layers,
``CompressedMatrix``, ``apply_compression`` / ``CompressionCallback`` / ``strip_compression`` /
``compressed_nbytes``, and ``factored_rows``.

References are independent of the code under test: the numpy face (the compressors'
``compress``, ``Factorization.matmul`` / ``matmul_backward`` / ``to_dense`` / ``nbytes``,
``mc.sparse_encode``), numpy's float64 SVD, numpy products in float64 of the layers' current
weights, and schedule values written out by hand.

Tolerances.

- A TensorFlow product (float32 or float64) against the float64 numpy product of the same
  weights: entry by entry ``|got - ref| <= 16 eps sqrt(K) S``, S the same product on absolute
  values (|x| |A|, |x| |L| |R|, the blend's terms weighted by alpha and 1 - alpha, the
  gradients' |x|^T |dy| ...) and K the summation depth (m plus the factors' inner sizes plus
  the batch): the bound of test_tf_ops.py. A wrong code, index, alpha or a lost term is an
  error of order S / K, far above it.
- Same algorithm on the same input, compared bitwise: k-means codes and scalar codebooks, sign
  bits and seeds, pruning masks and kept values (gathered from A), the snapshot against
  ``plan.factorize`` of the same A, a user compressor's numpy ``compress`` through
  ``tf.numpy_function``, eager against ``tf.function``, stripped against compressed models,
  ``.keras`` and SavedModel round trips, ``factored_rows`` gathers (codebook, pruned).
- Block codebooks, sign-bit scales and sparse-code values (a reduction or GEMM in another
  order): 1e-5 (float32) / 1e-12 (float64) of the largest entry, as test_tf_fit.py.
- Low rank (exact SVD in the graph): the factors' product against numpy's float64 best rank-r
  approximation to 1e-4 (float32) / 1e-10 (float64) of ||A||_2 (the SVD's backward error is
  eps ||A|| over the singular gap; the matrices' gaps are > 0.05 ||A||), and the factors
  balanced (L^T L = R R^T = diag(s)).
- Dictionary (MOD in the graph, K-SVD in numpy): relative reconstruction error at most 1.1x
  numpy's; the codes are Batch-OMP's on the returned dictionary (mc.sparse_encode).

- Outputs of a compressed model before training against the original model: the same ops up
  to grappler's fusions (MatMul + BiasAdd + activation fused in the Dense graph, not inside the
  compressed layer's switch_case): 1e-5 of the largest output; eager calls bitwise.
- Training claims (loss falls every epoch after the snapshot, by a stated factor) are made on
  seeded problems a compressed layer can fit (a rank-3 linear teacher).

Keras' Variable.__array__ warning under numpy >= 2 (which the tests' own conversions may
trigger) is ignored module-wide (KERAS_ARRAY_WARNING); the library's code must not trigger it,
which test_no_numpy_deprecation_warning_from_the_layers checks.

Runtime: under a minute on 2 cores (small matrices: 48 x 40 plans, 40-32-10 MLPs, a few
epochs of 64 samples; one subprocess for the SavedModel).
"""

import dataclasses
import functools
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from numpy.testing import assert_array_equal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's first import
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import matcompress as mc  # noqa: E402
import matcompress.tf as mctf  # noqa: E402
from matcompress.compressors import (  # noqa: E402
    DictionaryCompressor,
    KMeansCompressor,
    LowRankCompressor,
    MatrixCompressor,
    PruningCompressor,
    SimhashCompressor,
)
from matcompress.factors import Codebook, LowRank, Pruned, SignBits, SparseCodes  # noqa: E402
from matcompress.tf.factorize import plan  # noqa: E402
from matcompress.tf.layers import to_factorization  # noqa: E402

#: Keras' Variable.__array__ has no ``copy`` keyword: numpy >= 2 warns (DeprecationWarning)
#: whenever one goes through np.array / keras.ops.convert_to_numpy, which the layers do when they
#: build, sync and strip (see test_no_numpy_deprecation_warning_from_the_layers).
KERAS_ARRAY_WARNING = "ignore:__array__ implementation doesn't accept a copy keyword"
pytestmark = pytest.mark.filterwarnings(KERAS_ARRAY_WARNING)

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
DTYPES = [F32, F64]
#: Block codebooks, scales, sparse-code values: relative to the largest entry (test_tf_fit.py).
TOL = {F32: 1e-5, F64: 1e-12}


# =============================================================================================
# Helpers
# =============================================================================================

def assert_close(got, ref, scale, depth, eps, what):
    """|got - ref| <= 16 eps sqrt(depth) scale, entry by entry (see the module docstring)."""
    got, ref = np.asarray(got, F64), np.asarray(ref, F64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    bound = 16.0 * eps * np.sqrt(depth) * np.broadcast_to(np.asarray(scale, F64), ref.shape)
    err = np.abs(got - ref)
    bad = ~(err <= bound)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, np.nan_to_num(err - bound, nan=np.inf),
                                                -np.inf)), bad.shape)
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} entries out of tolerance; "
                             f"worst at {i}: got {got[i]!r}, expected {ref[i]!r}, bound "
                             f"{bound[i]:.3g} (depth {depth}, eps {eps:.3g})")


def assert_rel(got, ref, dtype, what):
    """max |got - ref| <= TOL[dtype] * max |ref| (same algorithm, another summation order)."""
    got, ref = np.asarray(got, F64), np.asarray(ref, F64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    scale = max(np.abs(ref).max(initial=0.0), 1e-300)
    err = np.abs(got - ref).max(initial=0.0)
    assert err <= TOL[np.dtype(dtype)] * scale, f"{what}: error {err:.3g} of {scale:.3g}"


def abs_twin(f):
    """The factorization with absolute float parts (float64): its products are the S of the
    tolerance. Sign bits: |R| |S| |scale| = (row sums of |R|) x |scale| per column."""
    if isinstance(f, SignBits):
        return None
    return dataclasses.replace(f, **{name: np.abs(getattr(f, name).astype(F64))
                                     for name in f.trainable_fields})


def abs_dense(f):
    """|W| as the tolerance sees it: the dense product of the absolute parts."""
    if isinstance(f, SignBits):
        rows = np.abs(f.projection().astype(F64)).sum(axis=1)
        return rows[:, None] * np.abs(f.scale.astype(F64))[None, :]
    return abs_twin(f).to_dense()


def inner_depth(f):
    if isinstance(f, LowRank):
        return f.rank
    if isinstance(f, SparseCodes):
        return f.dictionary.shape[0] + f.values.shape[1]
    if isinstance(f, SignBits):
        return f.n_bits
    return 1


def parts_numpy(parts):
    return {k: np.asarray(tf.convert_to_tensor(v)) for k, v in parts.items()}


def layer_parts(obj):
    """The current parts (name -> numpy array, the plan's dtypes) of a compressed layer or a
    CompressedMatrix, read through its ``factors()`` (the mapping factored_matmul takes)."""
    f = obj.factors()
    return {k: np.asarray(tf.convert_to_tensor(f[k])) for k in obj.plan.parts}


def factorization_of(p, parts):
    """The numpy Factorization of parts as a plan computes them (to_factorization)."""
    return to_factorization(p.kind, p.static, parts_numpy(parts))


def op_factors(p, parts):
    return {"kind": p.kind, **p.static, **parts}


def grad_or_zero(g, like):
    """A gradient as numpy: None (eager: variable not read) and zeros (graph: untaken branch)
    both mean "no gradient"."""
    if g is None:
        return np.zeros(like.shape, F64)
    return np.asarray(tf.convert_to_tensor(g), F64)


class no_warning(warnings.catch_warnings):
    """Every warning an error inside (but Keras' __array__ one, see KERAS_ARRAY_WARNING)."""

    def __enter__(self):
        out = super().__enter__()
        warnings.simplefilter("error")
        warnings.filterwarnings(*KERAS_ARRAY_WARNING.split(":", 1))
        return out


def matrix(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


_DROP_EDITABLE = not any("editable" in type(f).__module__ for f in sys.meta_path)


def run_python(code, *args, timeout=240):
    """Run ``code`` in a fresh interpreter that imports the same matcompress as this one (as
    test_tf_ops.py: the editable-install finder dropped when this process dropped it)."""
    prelude = textwrap.dedent(f"""\
        import os, sys
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
        if {_DROP_EDITABLE}:
            sys.meta_path = [f for f in sys.meta_path
                             if "editable" not in type(f).__module__]
        def _same_matcompress():
            import matcompress
            assert matcompress.__file__ == {mc.__file__!r}, matcompress.__file__
        """)
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), *args],
                          env=dict(os.environ), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module", autouse=True)
def lib():
    """The op library must load once TensorFlow imports: fail, never skip."""
    try:
        return mctf.load_library()
    except ImportError as exc:  # pragma: no cover - the failure being reported
        pytest.fail(f"TensorFlow {tf.__version__} imports but the op library does not load: {exc}")


# =============================================================================================
# 1. CompressionSchedule
# =============================================================================================

# (begin, update_every, decrement) -> alpha at steps begin, begin + 1, ... written out by hand
# (float64 arithmetic as the docstring states: 1 - d (1 + q)).
SCHEDULES = [
    ((0, 1, 1.0), [0.0, 0.0, 0.0]),
    ((3, 1, 1.0), [0.0, 0.0]),
    ((2, 1, 0.5), [0.5, 0.0, 0.0]),
    ((1, 2, 0.5), [0.5, 0.5, 0.0, 0.0]),
    ((0, 1, 0.25), [0.75, 0.5, 0.25, 0.0, 0.0]),
    ((3, 2, 0.3), [1 - 0.3 * 1] * 2 + [1 - 0.3 * 2] * 2 + [1 - 0.3 * 3] * 2 + [0.0, 0.0]),
    ((4, 1, 0.7), [1 - 0.7 * 1, 0.0]),
    ((0, 3, 0.4), [1 - 0.4 * 1] * 3 + [1 - 0.4 * 2] * 3 + [0.0] * 3),
    ((5, 1, 0.1), [1 - 0.1 * k for k in range(1, 10)] + [0.0, 0.0]),
]


@pytest.mark.parametrize("args, alphas", SCHEDULES, ids=lambda v: str(v))
def test_schedule_alpha_sequence(args, alphas):
    begin, every, dec = args
    s = mctf.CompressionSchedule(begin_step=begin, update_every=every, alpha_decrement=dec)
    for t in range(begin):
        assert s.alpha_at(t) == 1.0
    got = [s.alpha_at(begin + i) for i in range(len(alphas))]
    assert got == alphas  # exact: the same float64 arithmetic, and exactly 0 from the drop
    # drop_step: the first step at which alpha is 0, then 0 for ever.
    assert s.drop_step == begin + alphas.index(0.0)
    assert all(s.alpha_at(t) > 0 for t in range(s.drop_step))
    assert all(s.alpha_at(t) == 0.0 for t in range(s.drop_step, s.drop_step + 50))


def test_schedule_decrement_0_1_reaches_exactly_0_on_the_10th_step():
    s = mctf.CompressionSchedule(begin_step=7, update_every=3, alpha_decrement=0.1)
    seq = [s.alpha_at(7 + 3 * k) for k in range(11)]
    assert seq[9] == 0.0 and seq[10] == 0.0
    assert min(seq[:9]) > 0.09  # 1 - 0.9 in float64 is 0.09999999999999998, never ~1e-17
    assert s.drop_step == 7 + 9 * 3


@pytest.mark.parametrize("dec", [1.0, 0.5, 0.3, 1 / 3, 0.25, 0.2, 0.15, 0.1, 0.07, 0.05, 0.01,
                                 0.7, 0.9, 0.999])
@pytest.mark.parametrize("begin, every", [(0, 1), (4, 3)])
def test_schedule_properties_and_tensor_alpha(dec, begin, every):
    s = mctf.CompressionSchedule(begin_step=begin, update_every=every, alpha_decrement=dec)
    ts = np.arange(-3, s.drop_step + 3 * every + 2)
    ref = np.array([s.alpha_at(int(t)) for t in ts])
    # Non-increasing, in [0, 1], 1 before the snapshot, 1 - d (1 + q) while positive.
    assert np.all(np.diff(ref) <= 0) and ref.min() == 0.0 and ref.max() == 1.0
    for t, a in zip(ts, ref):
        if t < begin:
            assert a == 1.0
        elif t < s.drop_step:
            q = (t - begin) // every
            assert abs(a - (1 - dec * (1 + q))) < 1e-12 and a > 0
        else:
            assert a == 0.0
    # The number of blended decrement periods is ceil(1 / d) - 1 (exact arithmetic).
    n_periods = int(np.ceil(round(1 / dec, 9))) - 1
    assert s.drop_step == begin + n_periods * every
    # The tensor version: the same values, as float64 and float32, on a vector and in a graph.
    got64 = s.alpha(tf.constant(ts, tf.int64), tf.float64).numpy()
    assert_array_equal(got64, ref)
    got32 = tf.function(lambda t: s.alpha(t, tf.float32))(tf.constant(ts, tf.int64)).numpy()
    assert got32.dtype == np.float32
    assert_array_equal(got32, ref.astype(np.float32))
    assert s.alpha(int(ts[-1])).numpy() == np.float32(ref[-1])


@pytest.mark.parametrize("kwargs, arg", [
    (dict(begin_step=5, end_step=5), "end_step"),
    (dict(begin_step=5, end_step=3), "end_step"),
    (dict(end_step=-2), "end_step"),
    (dict(alpha_decrement=0.0), "alpha_decrement"),
    (dict(alpha_decrement=-0.1), "alpha_decrement"),
    (dict(alpha_decrement=1.5), "alpha_decrement"),
    (dict(alpha_decrement=float("nan")), "alpha_decrement"),
    (dict(alpha_decrement=float("inf")), "alpha_decrement"),
    (dict(begin_step=-1), "begin_step"),
    (dict(update_every=0), "update_every"),
])
def test_schedule_bad_values_raise_value_error_naming_the_argument(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        mctf.CompressionSchedule(**kwargs)


@pytest.mark.parametrize("kwargs, arg", [(dict(begin_step=1.5), "begin_step"),
                                         (dict(update_every=True), "update_every"),
                                         (dict(alpha_decrement="0.1"), "alpha_decrement")])
def test_schedule_bad_types_raise_type_error_naming_the_argument(kwargs, arg):
    with pytest.raises(TypeError, match=arg):
        mctf.CompressionSchedule(**kwargs)


def test_schedule_config_round_trip_and_defaults():
    s = mctf.CompressionSchedule(begin_step=3, end_step=40, update_every=2, alpha_decrement=0.25)
    cfg = s.get_config()
    assert cfg == {"begin_step": 3, "end_step": 40, "update_every": 2, "alpha_decrement": 0.25,
                   "calibrate": False}
    back = mctf.CompressionSchedule.from_config(cfg)
    assert back == s and back is not s and back.drop_step == s.drop_step == 3 + 3 * 2
    assert eval(repr(s), {"CompressionSchedule": mctf.CompressionSchedule}) == s
    assert s != mctf.CompressionSchedule(begin_step=3, end_step=41, update_every=2,
                                         alpha_decrement=0.25)
    d = mctf.CompressionSchedule()
    assert d.get_config() == {"begin_step": 0, "end_step": -1, "update_every": 1,
                              "alpha_decrement": 0.1, "calibrate": False}
    assert d.drop_step == 9


# =============================================================================================
# 2. Plans: the in-graph factorizers against the numpy face
# =============================================================================================

PLAN_CASES = {
    "low_rank_r4": lambda: LowRankCompressor(rank=4),
    "low_rank_ratio4": lambda: LowRankCompressor(compression_ratio=4, random_state=0),
    "kmeans_8": lambda: KMeansCompressor(n_codes=8, random_state=0),
    "kmeans_16_b2": lambda: KMeansCompressor(n_codes=16, block_size=2, random_state=1),
    "kmeans_40_b4": lambda: KMeansCompressor(n_codes=40, block_size=4, random_state=2),
    "kmeans_300": lambda: KMeansCompressor(n_codes=300, random_state=3),
    "kmeans_ratio6": lambda: KMeansCompressor(compression_ratio=6, random_state=4),
    "simhash_24": lambda: SimhashCompressor(n_bits=24, random_state=5),
    "simhash_ratio4": lambda: SimhashCompressor(compression_ratio=4, random_state=6),
    "pruning_0.7": lambda: PruningCompressor(sparsity=0.7),
    "pruning_ratio3": lambda: PruningCompressor(compression_ratio=3),
    "pruning_blocks_4x2": lambda: PruningCompressor(sparsity=0.5, block_shape=(4, 2)),
    "pruning_2:4": lambda: PruningCompressor(n_m=(2, 4)),
    "pruning_codes16": lambda: PruningCompressor(sparsity=0.6, n_codes=16, random_state=7),
    "pruning_blocks_codes5": lambda: PruningCompressor(sparsity=0.5, block_shape=(2, 4),
                                                       n_codes=5, random_state=8),
    "dictionary_16_3": lambda: DictionaryCompressor(n_atoms=16, n_nonzero_coefs=3,
                                                    random_state=9),
    "dictionary_ratio4": lambda: DictionaryCompressor(compression_ratio=4, random_state=10),
}
CODED_PRUNING = ("pruning_codes16", "pruning_blocks_codes5")
M, N = 48, 40


@functools.lru_cache(maxsize=None)
def plan_inputs(dtype):
    """A (48 x 40) with Gaussian singular vectors and singular values 10 * 0.9^i (gaps of
    > 0.05 s_0 between the leading ones: the low-rank subspaces are well defined), and x."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng([1, dtype.num])
    U, _ = np.linalg.qr(rng.standard_normal((M, N)))
    V, _ = np.linalg.qr(rng.standard_normal((N, N)))
    A = (U * (10 * 0.9 ** np.arange(N))) @ V.T
    return A.astype(dtype), matrix((5, M), dtype, [2, dtype.num])


def numpy_rank_r(A, r):
    U, s, Vt = np.linalg.svd(A.astype(F64), full_matrices=False)
    return (U[:, :r] * s[:r]) @ Vt[:r], s


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", list(PLAN_CASES))
def test_plan_factorize_matches_the_numpy_face(case, dtype):
    A, x = plan_inputs(dtype)
    c = PLAN_CASES[case]()
    p = plan(c, A.shape, dtype)
    ref = PLAN_CASES[case]().compress(A)  # a fresh compressor: the same random_state
    assert p.in_graph and p.compressor is c
    assert p.kind == ref.kind
    parts = p.factorize(A)
    # The parts: what the plan announced (names, shapes, dtypes, trainability).
    assert set(parts) == set(p.parts)
    for name, (shape, dt, _) in p.parts.items():
        assert tuple(parts[name].shape) == tuple(shape), name
        assert parts[name].dtype == tf.as_dtype(dt), name
    assert {k for k, (_, _, tr) in p.parts.items() if tr} == set(ref.trainable_fields)
    f = factorization_of(p, parts)
    assert type(f) is type(ref) and f.shape == (M, N) and f.dtype == dtype
    # The stored bytes: the numpy compressor's (its compression_ratio counts these).
    assert f.nbytes == ref.nbytes
    # The product through the ops equals the numpy face's product of the same factors.
    y = mctf.factored_matmul(x, op_factors(p, parts)).numpy()
    assert y.dtype == dtype
    eps, depth = np.finfo(dtype).eps, M + inner_depth(f) + 2
    assert_close(y, f.matmul(x), np.abs(x.astype(F64)) @ abs_dense(f), depth, eps, "y vs f")
    # ... and the factors are the numpy compressor's (same algorithm), or as good (other one).
    if isinstance(ref, Codebook):
        assert f.packed == ref.packed and f.codes.dtype == ref.codes.dtype
        assert_array_equal(f.codes, ref.codes)
        if ref.block_size == 1:
            assert_array_equal(f.codebook, ref.codebook)
        else:
            assert_rel(f.codebook, ref.codebook, dtype, "codebook")
        assert_close(y, ref.matmul(x), np.abs(x.astype(F64)) @ abs_dense(ref), depth, eps, "y")
    elif isinstance(ref, SignBits):
        assert f.seed == ref.seed and f.n_rows == ref.n_rows
        assert_array_equal(f.bits, ref.bits)
        assert_rel(f.scale, ref.scale, dtype, "scale")
        assert_close(y, ref.matmul(x), np.abs(x.astype(F64)) @ abs_dense(ref), depth, eps, "y")
    elif isinstance(ref, Pruned):
        assert_array_equal(f.indptr, ref.indptr)
        assert_array_equal(f.indices, ref.indices)
        assert f.indptr.dtype == ref.indptr.dtype and f.indices.dtype == ref.indices.dtype
        if ref.values is not None:
            assert_array_equal(f.values, ref.values)  # gathered from A: exact
        else:
            assert_array_equal(f.codes, ref.codes)
            assert_array_equal(f.codebook, ref.codebook)
            assert f.codes.dtype == ref.codes.dtype
        assert_array_equal(f.to_dense(), ref.to_dense())
        assert_close(y, ref.matmul(x), np.abs(x.astype(F64)) @ abs_dense(ref), depth, eps, "y")
    elif isinstance(ref, LowRank):
        r = ref.rank
        W_r, s = numpy_rank_r(A, r)
        assert f.rank == r and (s[r - 1] - s[r]) > 0.05 * s[0]  # a clear gap: a stable subspace
        tol = {F32: 1e-4, F64: 1e-10}[dtype] * s[0]
        assert np.abs(f.to_dense() - W_r).max() <= tol
        y_ref = x.astype(F64) @ W_r
        assert np.abs(y - y_ref).max() <= tol * np.abs(x.astype(F64)).sum(axis=1).max()
        # Balanced factors U sqrt(S), sqrt(S) V^T as matcompress.low_rank.
        L, R = f.left.astype(F64), f.right.astype(F64)
        assert np.abs(L.T @ L - np.diag(s[:r])).max() <= tol
        assert np.abs(R @ R.T - np.diag(s[:r])).max() <= tol
    else:  # dictionary: MOD in the graph, K-SVD in numpy
        k, nz = ref.dictionary.shape[0], ref.values.shape[1]
        assert f.dictionary.shape == (k, N) and f.values.shape == (M, nz)
        assert f.indices.dtype == ref.indices.dtype
        assert np.abs(np.linalg.norm(f.dictionary.astype(F64), axis=1) - 1).max() < 1e-5
        A64 = A.astype(F64)
        err = np.linalg.norm(f.to_dense() - A64) / np.linalg.norm(A64)
        err_np = np.linalg.norm(ref.to_dense() - A64) / np.linalg.norm(A64)
        assert err <= 1.1 * err_np, (err, err_np)
        assert err < 0.95  # better than nothing by a clear margin
        # The codes: Batch-OMP's (numpy's sparse_encode) on the dictionary returned.
        codes = mc.sparse_encode(A, f.dictionary, n_nonzero_coefs=nz)
        dense = np.zeros((M, k), F64)
        np.add.at(dense, (np.repeat(np.arange(M), nz), f.indices.ravel().astype(np.intp)),
                  f.values.ravel())
        assert_array_equal(dense != 0, codes != 0)
        assert_rel(dense, codes, dtype, "codes")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", PLAN_CASES)
def test_plan_factorize_same_bits_in_eager_and_tf_function(case, dtype):
    A, _ = plan_inputs(dtype)
    p = plan(PLAN_CASES[case](), A.shape, dtype)
    eager = parts_numpy(p.factorize(A))
    fn = tf.function(p.factorize, input_signature=[tf.TensorSpec(A.shape, dtype)])
    graph = fn.get_concrete_function()
    for name, (shape, dt, _) in p.parts.items():  # static shapes known when traced
        assert graph.structured_outputs[name].shape.as_list() == list(shape), name
    traced = parts_numpy(fn(tf.constant(A)))
    assert set(traced) == set(eager)
    for name in eager:
        assert_array_equal(traced[name], eager[name], err_msg=name)
        assert traced[name].dtype == eager[name].dtype


def test_plan_routes_and_errors():
    A, _ = plan_inputs(F32)
    # A built-in option the graph cannot run goes the numpy route, and gives compress's result.
    c = KMeansCompressor(n_codes=8, init="random", random_state=0)
    p = plan(c, A.shape, F32, initial=A)
    assert not p.in_graph
    got = factorization_of(p, p.factorize(A))
    ref = c.compress(A)
    assert got.kind == ref.kind and got.nbytes == ref.nbytes
    assert_array_equal(got.to_dense(), ref.to_dense())
    # Shapes the numpy face rejects too (ragged N:M groups, partial blocks): its error, at once.
    with pytest.raises(ValueError, match=r"n_m=\(2, 3\): M must divide"):
        plan(PruningCompressor(n_m=(2, 3)), A.shape, F32, initial=A)
    with pytest.raises(ValueError, match=r"block_shape=\(5, 5\) must divide"):
        mctf.CompressedDense(40, PruningCompressor(sparsity=0.5, block_shape=(5, 5))).build(
            (None, 48))
    # Taylor pruning needs the gradient: no in-graph route, and compress fails without grad.
    taylor = PruningCompressor(sparsity=0.5, scores="taylor")
    with pytest.raises(ValueError, match="has no in-graph route"):
        plan(taylor, A.shape, F32)
    with pytest.raises(ValueError, match="needs grad"):
        plan(taylor, A.shape, F32, initial=A)
    with pytest.raises(ValueError, match="needs grad"):
        mctf.CompressedDense(4, taylor).build((None, 6))
    with pytest.raises(ValueError, match=r"initial must have shape \(48, 40\)"):
        plan(KMeansCompressor(n_codes=4, init="random"), A.shape, F32, initial=A.T)
    with pytest.raises(TypeError, match="MatrixCompressor"):
        plan("kmeans", A.shape, F32)


# =============================================================================================
# 3. User-defined compressors: the numpy_function route
# =============================================================================================

class Rank2SVD(MatrixCompressor):
    """W ~ the best rank-2 approximation, as LowRank."""

    name = "test_tf_compression_rank2"

    def compress(self, A, *, grad=None):
        A = np.asarray(A)
        U, s, Vt = np.linalg.svd(A.astype(F64), full_matrices=False)
        return LowRank((U[:, :2] * s[:2]).astype(A.dtype), Vt[:2].astype(A.dtype))


class SignQuantizer(MatrixCompressor):
    """W ~ sign(A) * mean |A|: a 2-entry codebook, codes 4-bit packed."""

    name = "test_tf_compression_sign"

    def compress(self, A, *, grad=None):
        A = np.asarray(A)
        mean = np.abs(A).mean()
        codes = mc.pack_4bit((A >= 0).astype(np.uint8))
        return Codebook(codes, np.array([[-mean], [mean]], A.dtype), A.shape[1], packed=True)


class ShapeShifter(MatrixCompressor):
    """Rank 2 at the first call (the plan), rank 3 afterwards (the snapshot)."""

    def __init__(self):
        self.calls = 0

    def compress(self, A, *, grad=None):
        self.calls += 1
        r = 2 if self.calls == 1 else 3
        U, s, Vt = np.linalg.svd(np.asarray(A, F64), full_matrices=False)
        return LowRank((U[:, :r] * s[:r]).astype(A.dtype), Vt[:r].astype(A.dtype))


class KindShifter(MatrixCompressor):
    """LowRank at the first call, a Codebook afterwards."""

    def __init__(self):
        self.calls = 0

    def compress(self, A, *, grad=None):
        self.calls += 1
        if self.calls == 1:
            return Rank2SVD().compress(A)
        return SignQuantizer().compress(A)


class NotAFactorization(MatrixCompressor):
    def compress(self, A, *, grad=None):
        return np.asarray(A)


class Transposed(MatrixCompressor):
    def compress(self, A, *, grad=None):
        return Rank2SVD().compress(np.asarray(A).T)


USER = {"rank2_svd": Rank2SVD, "sign_quantizer": SignQuantizer}


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(USER))
def test_user_compressor_plan_runs_its_numpy_compress(name, dtype):
    A, x = plan_inputs(dtype)
    c = USER[name]()
    init = matrix(A.shape, dtype, 99)  # the plan's shapes come from the initial value
    p = plan(c, A.shape, dtype, initial=init)
    ref = c.compress(A)
    assert not p.in_graph and p.kind == ref.kind
    assert {k: (tuple(s), np.dtype(d), tr) for k, (s, d, tr) in p.parts.items()} == {
        k: (getattr(ref, k).shape, getattr(ref, k).dtype, k in ref.trainable_fields)
        for k in p.parts}
    eager = parts_numpy(p.factorize(A))
    traced = parts_numpy(tf.function(p.factorize)(tf.constant(A)))
    for k in p.parts:
        assert_array_equal(eager[k], getattr(ref, k), err_msg=k)  # the numpy result itself
        assert_array_equal(traced[k], getattr(ref, k), err_msg=k)
    f = factorization_of(p, p.factorize(A))
    assert f.nbytes == ref.nbytes
    y = mctf.factored_matmul(x, op_factors(p, p.factorize(A))).numpy()
    assert_close(y, ref.matmul(x), np.abs(x.astype(F64)) @ abs_dense(ref), M + 4,
                 np.finfo(dtype).eps, "y")


def _mlp(seed, hidden=32, n_in=40, n_out=10, activation="relu", dtype=None):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((n_in,), dtype=dtype),
                             keras.layers.Dense(hidden, activation=activation, name="hidden",
                                                dtype=dtype),
                             keras.layers.Dense(n_out, name="out", dtype=dtype)])


def _regression(seed, n=64, n_in=40, n_out=10, rank=3):
    """x and a target from a low-rank teacher (learnable through any compressed layer)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in)).astype(np.float32)
    W = rng.standard_normal((n_in, rank)) @ rng.standard_normal((rank, n_out)) / np.sqrt(n_in)
    return X, (X @ W).astype(np.float32)


def _compressed_layers(model):
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, (mctf.CompressedDense, mctf.CompressedEmbedding))]


@pytest.mark.parametrize("name", list(USER))
def test_user_compressor_snapshot_in_model_fit(name):
    # With a zero learning rate A stays its initial value, so the parts after the snapshot (run
    # inside the compiled train function) must be exactly the numpy compress of it.
    X, Y = _regression(0)
    sch = mctf.CompressionSchedule(begin_step=2, update_every=1, alpha_decrement=0.5)
    model = mctf.apply_compression(_mlp(1), USER[name](), schedule=sch)
    layers = _compressed_layers(model)
    assert len(layers) == 2 and not any(layer.plan.in_graph for layer in layers)
    A0 = [layer.kernel.numpy().copy() for layer in layers]
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    model.fit(X, Y, batch_size=16, epochs=1, callbacks=[mctf.CompressionCallback()], verbose=0,
              shuffle=False)
    for layer, A in zip(layers, A0):
        assert int(layer.step.numpy()) == 4
        assert_array_equal(layer.kernel.numpy(), A)
        ref = USER[name]().compress(A)
        for k, v in layer_parts(layer).items():
            assert_array_equal(v, getattr(ref, k), err_msg=k)
    # After the drop (step 3): the model is x -> factors.
    f_hidden, f_out = (to_factorization(layer.plan.kind, layer.plan.static,
                                        layer_parts(layer)) for layer in layers)
    h = np.maximum(f_hidden.matmul(X) + layers[0].bias.numpy(), 0)
    want = f_out.matmul(h) + layers[1].bias.numpy()
    got = model.predict(X, verbose=0)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("name", list(USER))
def test_user_compressor_trains_in_model_fit(name):
    X, Y = _regression(1)
    sch = mctf.CompressionSchedule(begin_step=4, update_every=2, alpha_decrement=0.5)
    model = mctf.apply_compression(_mlp(2), USER[name](), schedule=sch)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    hist = model.fit(X, Y, batch_size=16, epochs=6, callbacks=[mctf.CompressionCallback()],
                     verbose=0, shuffle=False).history["loss"]
    assert all(np.isfinite(hist))
    # Snapshot in epoch 2 (step 4), drop at step 6 (epoch 2): the factors alone train from
    # epoch 3 on, and the loss keeps falling.
    assert hist[-1] < hist[2], hist
    assert all(not any(w is layer.kernel for w in model.trainable_weights)
               for layer in _compressed_layers(model))


def test_user_compressor_changing_shape_raises_naming_it():
    layer = mctf.CompressedDense(6, ShapeShifter(),
                                 schedule=mctf.CompressionSchedule(0, alpha_decrement=1.0))
    layer.build((None, 9))
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError),
                       match=r"ShapeShifter\.compress returned part 'left' of shape \(9, 3\) "
                             r"at the snapshot, but \(9, 2\)"):
        layer(np.ones((2, 9), np.float32), training=True)
    # In model.fit: the error of the compiled function carries the same message.
    X, Y = _regression(2, n_out=6)
    model = mctf.apply_compression(_mlp(3, n_out=6), ShapeShifter(),
                                   schedule=mctf.CompressionSchedule(1, alpha_decrement=0.5),
                                   filter_fn=lambda layer: layer.name == "out")
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"ShapeShifter\.compress returned part 'left'"):
        model.fit(X, Y, batch_size=16, epochs=1, verbose=0)


def test_user_compressor_changing_kind_raises_naming_it():
    layer = mctf.CompressedDense(6, KindShifter(),
                                 schedule=mctf.CompressionSchedule(0, alpha_decrement=1.0))
    layer.build((None, 9))
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError),
                       match=r"KindShifter\.compress returned a codebook factorization at the "
                             r"snapshot, but a low_rank one"):
        layer(np.ones((2, 9), np.float32), training=True)


def test_user_compressor_bad_returns_raise_naming_it():
    with pytest.raises(TypeError, match="NotAFactorization.compress must return a matcompress "
                                        "Factorization; got ndarray"):
        mctf.CompressedDense(6, NotAFactorization()).build((None, 9))
    with pytest.raises(TypeError, match="NotAFactorization.compress must return"):
        mctf.apply_compression(_mlp(4), NotAFactorization(),
                               schedule=mctf.CompressionSchedule(1))
    with pytest.raises(ValueError, match=r"Transposed.compress returned a factorization of shape "
                                         r"\(6, 9\) for a matrix of shape \(9, 6\)"):
        mctf.CompressedDense(6, Transposed()).build((None, 9))


def test_compressed_layers_config_round_trip_with_a_user_compressor():
    # A registered user compressor (class attribute ``name``) survives get_config/from_config,
    # and so do the schedule and the layer's own options.
    sch = mctf.CompressionSchedule(begin_step=3, end_step=9, update_every=2, alpha_decrement=0.3)
    dense = mctf.CompressedDense(7, Rank2SVD(), sch, activation="tanh", use_bias=False)
    emb = mctf.CompressedEmbedding(20, 6, SignQuantizer(), sch, mask_zero=True)
    for layer in (dense, emb):
        back = type(layer).from_config(layer.get_config())
        assert type(back.compressor) is type(layer.compressor)
        assert back.schedule == sch and back.get_config() == layer.get_config()
    assert mctf.CompressedDense.from_config(dense.get_config()).activation is \
        keras.activations.tanh
    with pytest.raises((TypeError, ValueError), match="unknown compressor 'ShapeShifter'"):
        mctf.CompressedDense.from_config(mctf.CompressedDense(3, ShapeShifter()).get_config())


# =============================================================================================
# 4. The phases of a compressed layer
# =============================================================================================

# begin 3, blend periods of 2 steps with alpha 0.7, 0.4, 0.1, drop at 9, parts frozen from 12.
PHASES = mctf.CompressionSchedule(begin_step=3, end_step=12, update_every=2, alpha_decrement=0.3)
PHASE_COMPRESSORS = {
    "kmeans": lambda: KMeansCompressor(n_codes=8, random_state=0),
    "pruning": lambda: PruningCompressor(sparsity=0.6),
    "low_rank": lambda: LowRankCompressor(rank=3),
    "dictionary": lambda: DictionaryCompressor(n_atoms=8, n_nonzero_coefs=2, random_state=0),
}


def _built_dense(compressor, schedule, m=40, units=10, dtype="float32", seed=0):
    layer = mctf.CompressedDense(units, compressor, schedule, dtype=dtype,
                                 kernel_initializer=keras.initializers.GlorotUniform(seed=seed))
    layer.build((None, m))
    layer.bias.assign(matrix((units,), dtype, [seed, 7]))
    return layer


def by_atom(indices, per_term, f):
    """(m, s) per-term values of sparse codes -> (m, k) by atom (duplicates hold equal values)."""
    out = np.zeros((indices.shape[0], f.dictionary.shape[0]))
    out[np.arange(indices.shape[0])[:, None], indices.astype(np.intp)] = per_term
    return out


@pytest.mark.parametrize("mode", ["eager", "graph"])
@pytest.mark.parametrize("comp, dtype", [("kmeans", F32), ("pruning", F32), ("low_rank", F32),
                                         ("low_rank", F64), ("dictionary", F32)],
                         ids=["kmeans", "pruning", "low_rank", "low_rank-f64", "dictionary"])
def test_compressed_dense_phases(comp, dtype, mode):
    assert PHASES.drop_step == 9
    layer = _built_dense(PHASE_COMPRESSORS[comp](), PHASES, dtype=dtype.name)
    p = layer.plan
    assert p.in_graph and layer.kernel.trainable
    variables = [layer.kernel, layer.bias] + list(layer._parts.values())
    part_names = list(layer._parts)

    def step(x, dy):
        with tf.GradientTape() as tape:
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * dy)
        return y, tape.gradient(loss, [v.value for v in variables])

    if mode == "graph":
        step = tf.function(step)
    eps = np.finfo(dtype).eps
    rng = np.random.default_rng(3)
    lr = 0.05
    for t in range(15):
        x = rng.standard_normal((8, 40)).astype(dtype)
        dy = rng.standard_normal((8, 10)).astype(dtype)
        A = layer.kernel.numpy().astype(F64)
        before = layer_parts(layer)
        y, grads = step(tf.constant(x), tf.constant(dy))
        y = y.numpy()
        assert int(layer.step.numpy()) == t + 1
        parts = layer_parts(layer)
        if t == PHASES.begin_step:  # the snapshot: the plan's factorization of A at that moment
            want = parts_numpy(p.factorize(layer.kernel.numpy()))
            for k in parts:
                assert_array_equal(parts[k], want[k], err_msg=k)
        else:  # the call itself changes nothing else
            for k in parts:
                assert_array_equal(parts[k], before[k], err_msg=k)
        alpha = PHASES.alpha_at(t)
        b = layer.bias.numpy().astype(F64)
        x64, dy64 = x.astype(F64), dy.astype(F64)
        f = to_factorization(p.kind, p.static, parts) if t >= PHASES.begin_step else None
        ref, scale = b.copy(), np.abs(b)
        if alpha > 0:
            ref = ref + alpha * (x64 @ A)
            scale = scale + alpha * (np.abs(x64) @ np.abs(A))
        if alpha < 1:
            ref = ref + (1 - alpha) * f.matmul(x64)
            scale = scale + (1 - alpha) * (np.abs(x64) @ abs_dense(f))
        depth = 40 + 8 + 4 + (inner_depth(f) if f is not None else 0)
        assert_close(y, ref, scale, depth, eps, f"y at step {t} (alpha {alpha})")
        # Inference repeats the phase of the last training step without advancing the counter.
        y_inf = layer(x, training=False).numpy()
        assert int(layer.step.numpy()) == t + 1
        assert_close(y_inf, ref, scale, depth, eps, f"inference at step {t}")
        # Gradients: A's is alpha x^T dy (none once alpha is 0); the parts' (1 - alpha) times
        # the numpy face's, none before the snapshot and from end_step (frozen).
        gA = grad_or_zero(grads[0], A)
        assert_close(gA, alpha * (x64.T @ dy64), alpha * (np.abs(x64).T @ np.abs(dy64)), 8, eps,
                     f"dA at step {t}")
        if alpha == 0.0:
            assert not np.any(gA), f"A has a gradient at step {t}"
            if mode == "eager":
                assert grads[0] is None
        g_parts = {k: grad_or_zero(g, before[k]) for k, g in zip(part_names, grads[2:])}
        trained = {k for k, (_, _, tr) in p.parts.items() if tr}
        for k in part_names:
            if k not in trained or t < PHASES.begin_step or t >= PHASES.end_step:
                assert not np.any(g_parts[k]), f"part {k} has a gradient at step {t}"
        if PHASES.begin_step <= t < PHASES.end_step:
            _, g_ref = f.matmul_backward(x64, (1 - alpha) * dy64)
            _, g_abs = abs_twin(f).matmul_backward(np.abs(x64), (1 - alpha) * np.abs(dy64))
            if p.kind == "sparse_codes":
                # SparseCodes keeps each row's terms in atom order, the layer in OMP's order:
                # compare d(values) per (row, atom), which is what it depends on.
                g_parts["values"] = by_atom(parts["indices"], g_parts["values"], f)
                g_ref["values"] = by_atom(f.indices, g_ref["values"], f)
                g_abs["values"] = by_atom(f.indices, g_abs["values"], f)
            for k in trained:
                assert np.any(g_parts[k])
                assert_close(g_parts[k], g_ref[k], g_abs[k], depth, eps, f"d{k} at step {t}")
        # A plain SGD step on whatever has a gradient (A trains before the snapshot, the
        # snapshot must see the trained A).
        for v, g in zip(variables, grads):
            if g is not None:
                v.assign_sub(lr * tf.convert_to_tensor(g))
    # Frozen parts stayed frozen, A unchanged since the drop (its gradient was 0).
    assert int(layer.step.numpy()) == 15


def test_compressed_dense_rank3_input_and_decrement_1():
    # alpha_decrement=1: snapshot and drop at the same step; inputs (batch, time, m).
    s = mctf.CompressionSchedule(begin_step=1, alpha_decrement=1.0)
    assert s.drop_step == 1
    layer = _built_dense(LowRankCompressor(rank=2), s, m=12, units=5)
    x = matrix((3, 4, 12), F32, 5)
    A = layer.kernel.numpy().astype(F64)
    b = layer.bias.numpy().astype(F64)
    y0 = layer(x, training=True).numpy()
    assert y0.shape == (3, 4, 5)
    assert_close(y0, x.astype(F64) @ A + b, np.abs(x.astype(F64)) @ np.abs(A) + np.abs(b), 20,
                 np.finfo(F32).eps, "dense")
    y1 = layer(x, training=True).numpy()
    W2, _ = numpy_rank_r(layer.kernel.numpy(), 2)
    assert np.abs(y1 - (x.astype(F64) @ W2 + b)).max() <= 1e-4 * np.abs(y1).max()


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory):
    """A 40-32-10 MLP, both Dense layers compressed (k-means, 8 codes), trained by model.fit
    with CompressionCallback and Adam over 24 steps: snapshot at 4, blend alpha 0.5 at steps
    4-5, drop at 6, parts frozen from 14. A recorder (after the callback) keeps, per step, the
    weights before and after it and what model.trainable_weights held; at step 5 (blend) the
    model is saved (.keras) with its inference outputs."""
    X, Y = _regression(5)
    sch = mctf.CompressionSchedule(begin_step=4, end_step=14, update_every=2,
                                   alpha_decrement=0.5)
    assert sch.drop_step == 6
    model = mctf.apply_compression(_mlp(6), KMeansCompressor(n_codes=8, random_state=0),
                                   schedule=sch)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    layers = _compressed_layers(model)
    saved = tmp_path_factory.mktemp("fit") / "mid.keras"
    rec = {"begin": {}, "end": {}, "trainable": {}, "saved": saved}

    def snap():
        return [(layer.kernel.numpy().copy(), layer_parts(layer)) for layer in layers]

    class Recorder(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            t = int(layers[0].step.numpy())
            rec["begin"][t] = snap()
            ids = {id(w) for w in self.model.trainable_weights}
            rec["trainable"][t] = [(id(layer.kernel) in ids,
                                    {k: id(v) in ids for k, v in layer._parts.items()})
                                   for layer in layers]

        def on_train_batch_end(self, batch, logs=None):
            t = int(layers[0].step.numpy()) - 1
            rec["end"][t] = snap()
            if t == 5:
                self.model.save(saved)
                rec["mid_outputs"] = self.model(X, training=False).numpy()
                rec["mid_step"] = t + 1

    hist = model.fit(X, Y, batch_size=16, epochs=6, verbose=0, shuffle=False,
                     callbacks=[mctf.CompressionCallback(), Recorder()])
    rec.update(model=model, layers=layers, schedule=sch, X=X, Y=Y, loss=hist.history["loss"])
    return rec


def test_fit_a_trains_until_the_drop_then_leaves_the_trainable_weights(fit_run):
    sch, steps = fit_run["schedule"], sorted(fit_run["end"])
    assert steps == list(range(24))
    for t in steps:
        for i, (A_before, _) in enumerate(fit_run["begin"][t]):
            A_after = fit_run["end"][t][i][0]
            a_trainable = fit_run["trainable"][t][i][0]
            if t < sch.drop_step:  # A is read: it trains
                assert a_trainable and not np.array_equal(A_before, A_after), t
            elif t > sch.drop_step:  # A is not read, not trainable, and bitwise unchanged
                assert not a_trainable, t
                assert_array_equal(A_after, A_before, err_msg=f"A moved at step {t}")
    final = fit_run["layers"][0].kernel.numpy()
    assert_array_equal(final, fit_run["end"][sch.drop_step + 1][0][0])
    ids = {id(w) for w in fit_run["model"].trainable_weights}
    for layer in fit_run["layers"]:
        assert id(layer.kernel) not in ids and not layer.kernel.trainable


def test_fit_a_is_not_trainable_and_unchanged_at_the_drop_step(fit_run):
    t = fit_run["schedule"].drop_step
    for i, (A_before, _) in enumerate(fit_run["begin"][t]):
        assert not fit_run["trainable"][t][i][0], "A still trainable at the drop step"
        assert_array_equal(fit_run["end"][t][i][0], A_before)


def test_fit_parts_snapshot_train_then_freeze_at_end_step(fit_run):
    sch = fit_run["schedule"]
    for i, layer in enumerate(fit_run["layers"]):
        p = layer.plan
        trained = [k for k, (_, _, tr) in p.parts.items() if tr]
        assert trained == ["codebook"]
        for t in range(24):
            before, after = fit_run["begin"][t][i][1], fit_run["end"][t][i][1]
            flags = fit_run["trainable"][t][i][1]
            if t < sch.begin_step:
                assert all(not np.any(v) for v in after.values()), t  # zeros until the snapshot
            if t == sch.begin_step:
                # The snapshot factorizes A as it was before this step's update; the codes stay,
                # the codebook then moves by one Adam step.
                want = parts_numpy(p.factorize(fit_run["begin"][t][i][0]))
                assert_array_equal(after["codes"], want["codes"])
                assert np.abs(after["codebook"] - want["codebook"]).max() <= 1.5e-2
            if t > sch.begin_step:
                assert_array_equal(after["codes"], before["codes"])  # codes never train
            if sch.begin_step < t < sch.end_step:
                assert flags["codebook"] and not np.array_equal(after["codebook"],
                                                                before["codebook"]), t
            if t >= sch.end_step:
                assert not flags["codebook"], t
                assert_array_equal(after["codebook"], before["codebook"],
                                   err_msg=f"codebook moved at step {t}")
            assert not flags["codes"]
    # Only the biases are left to train.
    assert sorted(w.path for w in fit_run["model"].trainable_weights) == \
        sorted(layer.bias.path for layer in fit_run["layers"])


@pytest.mark.parametrize("comp, factor", [("low_rank", 0.35), ("pruning", 0.5)])
def test_training_loss_decreases_after_the_snapshot(comp, factor):
    # Linear regression on a rank-3 teacher, one compressed Dense (low rank 3 can fit it
    # exactly, pruning at 50 % nearly). 4 steps per epoch: the snapshot opens epoch 2, the drop
    # is at step 11; from then on only the factors (and the bias) learn.
    X, Y = _regression(5)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((40,)), keras.layers.Dense(10)])
    sch = mctf.CompressionSchedule(begin_step=8, update_every=1, alpha_decrement=0.25)
    c = {"low_rank": LowRankCompressor(rank=3), "pruning": PruningCompressor(sparsity=0.5)}[comp]
    comp_model = mctf.apply_compression(model, c, schedule=sch)
    comp_model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    loss = comp_model.fit(X, Y, batch_size=16, epochs=12, verbose=0, shuffle=False,
                          callbacks=[mctf.CompressionCallback()]).history["loss"]
    assert all(np.isfinite(loss))
    after = loss[2:]
    assert all(b < a for a, b in zip(after, after[1:])), loss  # falls every epoch
    assert loss[-1] < factor * loss[2], loss
    # The loss is that of the factors: evaluate equals the numpy product of the final factors.
    layer = _compressed_layers(comp_model)[0]
    f = to_factorization(layer.plan.kind, layer.plan.static, layer_parts(layer))
    pred = f.matmul(X) + layer.bias.numpy()
    assert comp_model.evaluate(X, Y, verbose=0) == pytest.approx(
        float(np.mean((pred - Y) ** 2)), rel=1e-5)


def test_coded_pruning_trains_in_model_fit():
    X, Y = _regression(6)
    sch = mctf.CompressionSchedule(begin_step=2, update_every=1, alpha_decrement=0.5)
    c = PruningCompressor(sparsity=0.5, n_codes=8, random_state=0)
    model = mctf.apply_compression(_mlp(7), c, schedule=sch)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(X, Y, batch_size=16, epochs=2, verbose=0, callbacks=[mctf.CompressionCallback()])
    stripped = mctf.strip_compression(model)
    assert_array_equal(stripped.predict(X, verbose=0), model.predict(X, verbose=0))
    f = stripped.layers[0].factorization()
    assert isinstance(f, Pruned) and f.codebook.shape == (8,) and f.nnz == 40 * 32 // 2


def test_gradient_of_a_is_zero_after_the_drop_without_the_callback():
    # Without CompressionCallback A stays in the trainable weights, but it is not read after
    # the drop: its gradient is None (eager) or zero (graph), so plain SGD leaves it unchanged.
    X, Y = _regression(7)
    sch = mctf.CompressionSchedule(begin_step=1, alpha_decrement=1.0)
    model = mctf.apply_compression(_mlp(8), LowRankCompressor(rank=2), schedule=sch)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0, shuffle=False)  # steps 0-3
    layer = _compressed_layers(model)[1]
    assert layer.kernel.trainable and any(w is layer.kernel for w in model.trainable_weights)
    A = layer.kernel.numpy().copy()
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    assert_array_equal(layer.kernel.numpy(), A)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(X, training=True) - Y) ** 2)
    g = tape.gradient(loss, [layer.kernel.value] + [v.value for v in layer._parts.values()])
    assert g[0] is None and all(gi is not None and np.any(gi.numpy()) for gi in g[1:])


def test_no_numpy_deprecation_warning_from_the_layers():
    sch = mctf.CompressionSchedule(begin_step=0, alpha_decrement=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        layer = mctf.CompressedDense(4, LowRankCompressor(rank=2), sch)
        layer.build((None, 6))
        layer(np.ones((2, 6), np.float32), training=True)
        layer.sync_trainable()
        twin = mctf.strip_compression(layer)
        twin.factorization()


def test_jit_compile_is_declined_by_the_compressed_layers():
    model = mctf.apply_compression(_mlp(9), KMeansCompressor(n_codes=4, random_state=0),
                                   schedule=mctf.CompressionSchedule(1))
    with pytest.warns(UserWarning, match="jit_compile"):
        model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    assert model.jit_compile is False


# =============================================================================================
# 5. apply_compression
# =============================================================================================

SCHEDULE = mctf.CompressionSchedule(begin_step=2, update_every=1, alpha_decrement=0.5)


def test_apply_to_sequential_copies_weights():
    keras.utils.set_random_seed(10)
    model = keras.Sequential([keras.Input((40,)), keras.layers.Dense(32, activation="tanh"),
                              keras.layers.Dropout(0.3), keras.layers.LayerNormalization(),
                              keras.layers.Dense(10, activation="softmax", use_bias=False)])
    norm = model.layers[2]
    norm.gamma.assign(matrix((32,), F32, 11))
    before = [w.numpy().copy() for w in model.weights]
    c = KMeansCompressor(n_codes=8, random_state=0)
    comp = mctf.apply_compression(model, c, schedule=SCHEDULE)
    kinds = [type(layer).__name__ for layer in comp.layers]
    assert kinds == ["CompressedDense", "Dropout", "LayerNormalization", "CompressedDense"]
    for old, new in zip(model.layers, comp.layers):
        assert old is not new and old.name == new.name
        if isinstance(new, mctf.CompressedDense):
            assert_array_equal(new.kernel.numpy(), old.kernel.numpy())
            assert new.use_bias == old.use_bias and new.activation is old.activation
            assert new.compressor == c and new.schedule == SCHEDULE
            if old.use_bias:
                assert_array_equal(new.bias.numpy(), old.bias.numpy())
    assert_array_equal(comp.layers[2].gamma.numpy(), norm.gamma.numpy())
    X = matrix((16, 40), F32, 12)
    # The same ops, up to grappler's fusions (MatMul + BiasAdd + activation fused in the Dense
    # graph, not inside the compressed layer's switch_case): float32 rounding.
    ref = model.predict(X, verbose=0)
    assert np.abs(comp.predict(X, verbose=0) - ref).max() <= 1e-5 * np.abs(ref).max()
    assert_array_equal(comp(X, training=False).numpy(), model(X, training=False).numpy())
    # The original is untouched.
    assert all(type(layer) is not mctf.CompressedDense for layer in model.layers)
    for w, b in zip(model.weights, before):
        assert_array_equal(w.numpy(), b)
    # A compressor given as its config works the same.
    comp2 = mctf.apply_compression(model, c.get_config(), schedule=SCHEDULE)
    assert comp2.layers[0].compressor == c


def _functional(seed):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((40,))
    h = keras.layers.Dense(32, activation="relu", name="hidden")(inp)
    skip = keras.layers.Dense(32, name="skip")(inp)
    out = keras.layers.Dense(10, name="out")(keras.layers.Add()([h, skip]))
    return keras.Model(inp, out)


def test_apply_to_functional_model_copies_weights():
    model = _functional(13)
    comp = mctf.apply_compression(model, LowRankCompressor(rank=4), schedule=SCHEDULE,
                                  filter_fn=lambda layer: layer.name in ("hidden", "out"))
    types = {layer.name: type(layer).__name__ for layer in comp.layers}
    assert types["hidden"] == types["out"] == "CompressedDense" and types["skip"] == "Dense"
    X = matrix((16, 40), F32, 14)
    assert_array_equal(comp.predict(X, verbose=0), model.predict(X, verbose=0))


def test_functional_model_of_compressed_layers_trains_and_strips():
    # Functional models built from the compressed layers directly.
    keras.utils.set_random_seed(15)
    sch = mctf.CompressionSchedule(begin_step=2, update_every=1, alpha_decrement=0.5)
    inp = keras.Input((40,))
    h = mctf.CompressedDense(24, PruningCompressor(sparsity=0.5), sch, activation="relu")(inp)
    skip = keras.layers.Dense(24)(inp)
    out = mctf.CompressedDense(10, LowRankCompressor(rank=3), sch)(keras.layers.Add()([h, skip]))
    model = keras.Model(inp, out)
    X, Y = _regression(16)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(X, Y, batch_size=16, epochs=2, verbose=0, callbacks=[mctf.CompressionCallback()])
    stripped = mctf.strip_compression(model)
    kinds = sorted(type(layer).__name__ for layer in stripped.layers)
    assert kinds == ["Add", "Dense", "FactoredDense", "FactoredDense", "InputLayer"]
    assert_array_equal(stripped.predict(X, verbose=0), model.predict(X, verbose=0))


def test_apply_to_single_layers():
    c = LowRankCompressor(rank=2)
    dense = keras.layers.Dense(5, activation="relu")
    dense.build((None, 7))
    twin = mctf.apply_compression(dense, c, schedule=SCHEDULE)
    assert isinstance(twin, mctf.CompressedDense) and twin.built
    assert_array_equal(twin.kernel.numpy(), dense.kernel.numpy())
    x = matrix((3, 7), F32, 17)
    assert_array_equal(twin(x).numpy(), dense(x).numpy())
    unbuilt = mctf.apply_compression(keras.layers.Dense(5), c, schedule=SCHEDULE)
    assert isinstance(unbuilt, mctf.CompressedDense) and not unbuilt.built
    assert unbuilt(x).shape == (3, 5) and unbuilt.kernel.shape == (7, 5)
    emb = keras.layers.Embedding(20, 6)
    emb.build(None)
    etwin = mctf.apply_compression(emb, c, schedule=SCHEDULE)
    assert isinstance(etwin, mctf.CompressedEmbedding)
    ids = np.array([[0, 19, 3]])
    assert_array_equal(etwin(ids).numpy(), emb(ids).numpy())
    assert_array_equal(etwin.embeddings.numpy(), emb.embeddings.numpy())
    # A layer the filter rejects comes back unchanged, with a warning.
    other = keras.layers.Dense(3)
    with pytest.warns(UserWarning, match="filter_fn rejects the layer"):
        assert mctf.apply_compression(other, c, schedule=SCHEDULE,
                                      filter_fn=lambda layer: False) is other


def test_apply_filter_fn_selects_a_subset():
    model = _mlp(18)
    comp = mctf.apply_compression(model, PruningCompressor(sparsity=0.5), schedule=SCHEDULE,
                                  filter_fn=lambda layer: layer.name == "out")
    assert [type(layer) for layer in comp.layers] == [keras.layers.Dense, mctf.CompressedDense]
    assert_array_equal(comp.layers[0].kernel.numpy(), model.layers[0].kernel.numpy())
    X = matrix((8, 40), F32, 19)
    assert_array_equal(comp.predict(X, verbose=0), model.predict(X, verbose=0))
    with pytest.warns(UserWarning, match="selected no layer"):
        same = mctf.apply_compression(model, PruningCompressor(sparsity=0.5), schedule=SCHEDULE,
                                      filter_fn=lambda layer: False)
    assert not _compressed_layers(same)


def test_apply_bad_inputs():
    c = LowRankCompressor(rank=2)
    model = _mlp(20)
    comp = mctf.apply_compression(model, c, schedule=SCHEDULE)
    with pytest.raises(ValueError, match="compressed already.*cannot be applied twice"):
        mctf.apply_compression(comp, c, schedule=SCHEDULE)
    with pytest.raises(ValueError, match="compressed already"):
        mctf.apply_compression(comp.layers[0], c, schedule=SCHEDULE)

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    sub = Subclassed()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    before = sub(x).numpy()
    assert mctf.apply_compression(sub, c, schedule=SCHEDULE) is sub  # in place
    assert isinstance(sub.dense, mctf.CompressedDense)
    assert len(sub.weights) == len(sub.dense.weights)  # the old Dense's variables are gone
    np.testing.assert_allclose(sub(x).numpy(), before, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="compressed already"):
        mctf.apply_compression(sub, c, schedule=SCHEDULE)
    with pytest.raises(TypeError, match="target must be a Keras model, a Keras layer or a "
                                        "tf.Variable; got str"):
        mctf.apply_compression("model", c, schedule=SCHEDULE)
    with pytest.raises(TypeError, match="target must be"):
        mctf.apply_compression(np.zeros((3, 4), np.float32), c, schedule=SCHEDULE)
    from_dict = mctf.apply_compression(model, c, schedule=SCHEDULE.get_config())
    assert from_dict.layers[0].schedule == SCHEDULE
    with pytest.raises(TypeError, match="schedule must be a CompressionSchedule; got NoneType"):
        mctf.apply_compression(model, c, schedule=None)
    with pytest.raises(TypeError, match="compressor must be a matcompress MatrixCompressor; "
                                        "got str"):
        mctf.apply_compression(model, "low_rank", schedule=SCHEDULE)
    conv = keras.Sequential([keras.Input((6, 4)),
                             keras.layers.Conv1DTranspose(2, 3, name="conv")])
    with pytest.raises(TypeError, match="'conv' of type Conv1DTranspose"):
        mctf.apply_compression(conv, c, schedule=SCHEDULE, filter_fn=lambda layer: True)
    lora = keras.layers.Dense(5, lora_rank=2)
    lora.build((None, 7))
    with pytest.raises(ValueError, match="uses LoRA"):
        mctf.apply_compression(lora, c, schedule=SCHEDULE)
    with pytest.raises(TypeError, match="2-D tf.Variable"):
        mctf.apply_compression(tf.Variable(np.zeros(4, np.float32)), c, schedule=SCHEDULE)
    with pytest.raises(TypeError, match="float32 or float64; got int32"):
        mctf.apply_compression(tf.Variable(np.zeros((4, 3), np.int32)), c, schedule=SCHEDULE)
    with pytest.raises(TypeError, match="float32 or float64"):
        mctf.CompressedDense(3, c, dtype="float16").build((None, 4))


def _custom_loop(cm, xs, dys, opt, use_function):
    """Train cm with tape + optimizer; returns per step (t, names of trainable variables before
    the step, A before, A after)."""
    log = []

    def step(x, dy, variables):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(cm.matmul(x, training=True) * dy)
        grads = tape.gradient(loss, variables)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if pairs:
            opt.apply_gradients(pairs)

    opt.build(list(cm.trainable_variables))  # the slots, outside any trace
    fn = tf.function(step) if use_function else step
    for x, dy in zip(xs, dys):
        t = int(cm.step.numpy())
        variables = list(cm.trainable_variables)
        A = cm.kernel.numpy().copy()
        fn(tf.constant(x), tf.constant(dy), variables)
        log.append((t, [v.name.split(":")[0] for v in variables], A, cm.kernel.numpy().copy()))
        cm.sync_trainable()
    return log


@pytest.mark.parametrize("use_function", [False, True], ids=["eager", "tf.function"])
def test_compressed_matrix_in_a_custom_loop(use_function):
    sch = mctf.CompressionSchedule(begin_step=2, end_step=7, update_every=1,
                                   alpha_decrement=0.5)  # drop at 3
    A0 = matrix((30, 12), F32, 21)
    var = tf.Variable(A0, name="W")
    cm = mctf.apply_compression(var, KMeansCompressor(n_codes=8, random_state=0), schedule=sch)
    assert isinstance(cm, mctf.CompressedMatrix) and cm.kernel is var and cm.plan.in_graph
    rng = np.random.default_rng(22)
    xs = rng.standard_normal((9, 4, 30)).astype(np.float32)
    dys = rng.standard_normal((9, 4, 12)).astype(np.float32)
    # value() before training: A itself.
    assert_array_equal(cm.value().numpy(), A0)
    log = _custom_loop(cm, xs, dys, keras.optimizers.Adam(1e-2), use_function)
    for t, names, A_before, A_after in log:
        if t < sch.drop_step:
            assert "W" in names and not np.array_equal(A_before, A_after), t
        if t > sch.drop_step:
            assert "W" not in names, t
            assert_array_equal(A_after, A_before)
        if t < sch.end_step:
            assert "codebook" in names, t
        else:
            assert names == [], t
        assert "codes" not in names
    # value() and matmul follow the last step's phase: the factors alone now.
    f = cm.factorization()
    assert isinstance(f, Codebook) and f.packed
    assert_array_equal(cm.value().numpy(), f.to_dense())
    x = xs[0]
    y = cm.matmul(x, training=False).numpy()
    assert_close(y, f.matmul(x), np.abs(x.astype(F64)) @ abs_dense(f), 36, np.finfo(F32).eps,
                 "matmul")
    assert mctf.strip_compression(cm).nbytes == KMeansCompressor(
        n_codes=8, random_state=0).compress(A0).nbytes


def test_compressed_matrix_drops_a_at_the_drop_step():
    sch = mctf.CompressionSchedule(begin_step=1, alpha_decrement=1.0)  # drop at 1
    cm = mctf.apply_compression(tf.Variable(matrix((10, 6), F32, 23)),
                                LowRankCompressor(rank=2), schedule=sch)
    cm.matmul(np.ones((1, 10), np.float32), training=True)  # step 0
    assert int(cm.step.numpy()) == sch.drop_step and sch.alpha_at(1) == 0.0
    assert not any(v is cm.kernel for v in cm.trainable_variables)


def test_compressed_matrix_blend_value_and_keras_variable():
    sch = mctf.CompressionSchedule(begin_step=1, update_every=1, alpha_decrement=0.25)
    kv = keras.Variable(matrix((16, 9), F64, 24), dtype="float64")
    cm = mctf.apply_compression(kv, PruningCompressor(sparsity=0.5), schedule=sch)
    assert cm.kernel is kv.value and cm.kernel.dtype == tf.float64
    x = matrix((3, 16), F64, 25)
    A = kv.numpy()
    for t in range(6):
        y = cm.matmul(x, training=True).numpy()
        alpha = sch.alpha_at(t)
        W = A if t < 1 else alpha * A + (1 - alpha) * cm.factorization().to_dense()
        assert np.abs(cm.value().numpy() - W).max() <= 1e-14 * np.abs(A).max()
        assert np.abs(y - x @ W).max() <= 1e-13 * (np.abs(x) @ np.abs(A)).max()
    assert sch.alpha_at(5) == 0.0
    assert_array_equal(cm.factorization().to_dense(), PruningCompressor(sparsity=0.5)
                       .compress(A).to_dense())


# =============================================================================================
# 6. factored_rows and the compressed embedding
# =============================================================================================

def _rows_forms():
    rng = np.random.default_rng(26)
    A = rng.standard_normal((30, 12)).astype(np.float32)
    A11 = rng.standard_normal((30, 11)).astype(np.float32)
    keep = rng.random((30, 12)) < 0.4
    counts = keep.sum(axis=1)
    cols = np.flatnonzero(keep.ravel()) % 12
    indptr = np.concatenate([[0], np.cumsum(counts)])
    dup_cols = cols.copy()
    dup_cols[1] = dup_cols[0] if counts[0] >= 2 else dup_cols[1]  # a duplicate in row 0: adds
    return {
        "low_rank": LowRankCompressor(rank=3).compress(A),
        "sparse_codes": DictionaryCompressor(n_atoms=8, n_nonzero_coefs=2,
                                             random_state=0).compress(A),
        "codebook_4bit_odd_b1": KMeansCompressor(n_codes=9, random_state=0).compress(A11),
        "codebook_4bit_b2": KMeansCompressor(n_codes=16, block_size=2,
                                             random_state=0).compress(A),
        "codebook_4bit_odd_b4": KMeansCompressor(n_codes=5, block_size=4,
                                                 random_state=0).compress(A),
        "codebook_u8_b2": Codebook(rng.integers(0, 40, (30, 6)).astype(np.uint8),
                                   rng.standard_normal((40, 2)).astype(np.float32), 12),
        "codebook_u16_b1": KMeansCompressor(n_codes=300, random_state=0).compress(A),
        "codebook_i64_b3": Codebook(rng.integers(0, 7, (30, 4)).astype(np.int64),
                                    rng.standard_normal((7, 3)).astype(np.float32), 12),
        "sign_bits": SimhashCompressor(n_bits=10, random_state=0).compress(A),
        "pruned_values": PruningCompressor(sparsity=0.6).compress(A),
        "pruned_codes": PruningCompressor(sparsity=0.6, n_codes=4, random_state=0).compress(A),
        "pruned_duplicates": Pruned(indptr, dup_cols.astype(np.uint8), 12,
                                    values=rng.standard_normal(cols.size).astype(np.float32)),
    }


ROWS_FORMS = _rows_forms()
ROW_IDS = np.array([[3, 0, 29, 7], [7, 7, 1, 0]])


@pytest.mark.parametrize("form", list(ROWS_FORMS))
def test_factored_rows_equal_dense_rows(form):
    f = ROWS_FORMS[form]
    W = f.to_dense().astype(F64)
    for ids in (ROW_IDS, ROW_IDS[0], np.array(5), np.zeros((0,), np.int64)):
        got = mctf.factored_rows(ids, f).numpy()
        assert got.shape == np.shape(ids) + (f.shape[1],) and got.dtype == f.dtype
        if form.startswith(("codebook", "pruned")):  # gathers: exact
            assert_array_equal(got, W[ids].astype(f.dtype))
        else:
            assert_close(got, W[ids], abs_dense(f)[ids], inner_depth(f) + 2,
                         np.finfo(np.float32).eps, form)
    # From tensors (factor_tensors) and int32 ids inside a tf.function: the same bits.
    parts = mctf.factor_tensors(f)
    eager = mctf.factored_rows(ROW_IDS, parts).numpy()
    traced = tf.function(lambda ids: mctf.factored_rows(ids, parts))(
        tf.constant(ROW_IDS, tf.int32)).numpy()
    assert_array_equal(traced, eager)
    with pytest.raises(TypeError, match="ids must be integers"):
        mctf.factored_rows(np.array([0.5]), f)


@pytest.mark.parametrize("form", list(ROWS_FORMS))
def test_factored_rows_gradients_equal_one_hot_products(form):
    f = ROWS_FORMS[form]
    m, n = f.shape
    parts = mctf.factor_tensors(f, np.float64)
    train = {k: tf.Variable(parts[k]) for k in f.trainable_fields}
    parts.update(train)
    dy = np.random.default_rng(27).standard_normal(ROW_IDS.shape + (n,))
    onehot = np.eye(m)[ROW_IDS]

    def grads(fn):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(fn() * dy)
        return [np.asarray(tf.convert_to_tensor(g))
                for g in tape.gradient(loss, list(train.values()))]

    got = grads(lambda: mctf.factored_rows(ROW_IDS, parts))
    ref = grads(lambda: mctf.factored_matmul(onehot, parts))
    assert len(got) == len(f.trainable_fields) >= 1
    for name, g, r in zip(train, got, ref):
        assert g.shape == r.shape == tuple(train[name].shape)
        assert np.any(r)
        assert np.abs(g - r).max() <= 1e-12 * max(np.abs(r).max(), 1.0), name


def _embedding_model(seed, compressor, schedule, vocab=50, dim=12):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((6,), dtype="int32"),
                              keras.layers.Embedding(vocab, dim, name="emb"),
                              keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(1, name="head")])
    return model, mctf.apply_compression(model, compressor, schedule=schedule,
                                         filter_fn=lambda layer: layer.name == "emb")


@pytest.mark.parametrize("comp", ["low_rank", "kmeans", "pruning"])
def test_compressed_embedding_phases(comp):
    sch = mctf.CompressionSchedule(begin_step=2, update_every=1, alpha_decrement=0.5)  # drop 3
    c = {"low_rank": LowRankCompressor(rank=3), "kmeans": KMeansCompressor(n_codes=8,
                                                                           random_state=0),
         "pruning": PruningCompressor(sparsity=0.5)}[comp]
    layer = mctf.CompressedEmbedding(30, 12, c, sch)
    layer.build(None)
    layer.kernel.assign(matrix((30, 12), F32, 28))
    ids = ROW_IDS
    dy = matrix(ids.shape + (12,), F32, 29)
    for t in range(6):
        A = layer.kernel.numpy().astype(F64)
        with tf.GradientTape() as tape:
            out = layer(ids, training=True)
            loss = tf.reduce_sum(out * dy)
        gA = tape.gradient(loss, layer.kernel.value)
        alpha = sch.alpha_at(t)
        ref = alpha * A[ids]
        if t >= sch.begin_step:
            if t == sch.begin_step:
                want = parts_numpy(layer.plan.factorize(A.astype(np.float32)))
                for k, v in layer_parts(layer).items():
                    assert_array_equal(v, want[k], err_msg=k)
            W = to_factorization(layer.plan.kind, layer.plan.static,
                                 layer_parts(layer)).to_dense()
            ref = ref + (1 - alpha) * W[ids]
        assert np.abs(out.numpy() - ref).max() <= 1e-5 * np.abs(ref).max(), t
        assert_array_equal(layer(ids).numpy(), out.numpy())  # inference: the same phase
        if alpha == 0:
            assert gA is None, t
        else:
            dense = np.zeros((30, 12))
            np.add.at(dense, ids, alpha * dy.astype(F64))
            assert np.abs(np.asarray(tf.convert_to_tensor(gA)) - dense).max() <= 1e-6, t
        if gA is not None:
            layer.kernel.assign_sub(0.1 * tf.convert_to_tensor(gA))
    assert layer.compute_output_shape((2, 4)) == (2, 4, 12)


def test_embedding_model_trains_through_the_phases_and_strips():
    rng = np.random.default_rng(30)
    ids = rng.integers(0, 50, (256, 6)).astype(np.int32)
    teacher = rng.standard_normal((50, 2)) @ rng.standard_normal((2, 12))
    Y = (teacher[ids].mean(axis=1) @ rng.standard_normal((12, 1))).astype(np.float32)
    sch = mctf.CompressionSchedule(begin_step=8, update_every=4, alpha_decrement=0.5)
    model, comp = _embedding_model(31, LowRankCompressor(rank=3), sch)
    assert [type(layer).__name__ for layer in comp.layers] == [
        "CompressedEmbedding", "GlobalAveragePooling1D", "Dense"]
    assert_array_equal(comp.predict(ids, verbose=0), model.predict(ids, verbose=0))
    comp.compile(optimizer=keras.optimizers.Adam(2e-2), loss="mse")
    loss = comp.fit(ids, Y, batch_size=32, epochs=6, verbose=0, shuffle=False,
                    callbacks=[mctf.CompressionCallback()]).history["loss"]
    # 8 steps per epoch: the snapshot opens epoch 1, the drop is at step 12.
    assert loss[-1] < 0.7 * loss[1], loss
    emb = comp.layers[0]
    assert int(emb.step.numpy()) == 48 and not emb.kernel.trainable
    stripped = mctf.strip_compression(comp)
    assert type(stripped.layers[0]) is mctf.FactoredEmbedding
    assert_array_equal(stripped.predict(ids, verbose=0), comp.predict(ids, verbose=0))
    f = stripped.layers[0].factorization()
    assert isinstance(f, LowRank) and f.shape == (50, 12) and f.rank == 3


# =============================================================================================
# 7. strip_compression, compressed_nbytes, serialization
# =============================================================================================

STRIP_CASES = {
    "kmeans": lambda: KMeansCompressor(n_codes=8, random_state=0),
    "kmeans_ratio5": lambda: KMeansCompressor(compression_ratio=5, random_state=1),
    "pruning": lambda: PruningCompressor(sparsity=0.75),
    "pruning_1:2_codes": lambda: PruningCompressor(n_m=(1, 2), n_codes=16, random_state=2),
    "low_rank": lambda: LowRankCompressor(compression_ratio=4),
    "dictionary": lambda: DictionaryCompressor(n_atoms=8, n_nonzero_coefs=2, random_state=3),
    "simhash": lambda: SimhashCompressor(compression_ratio=4, random_state=4),
}


@functools.lru_cache(maxsize=None)
def stripped_case(case):
    """A compressed MLP (both Dense layers) driven past its drop by direct training calls
    (begin 1, alpha 1 - 1 = 0 at once; eager, no optimizer), and its stripped copy."""
    sch = mctf.CompressionSchedule(begin_step=1, alpha_decrement=1.0)
    model = mctf.apply_compression(_mlp(32), STRIP_CASES[case](), schedule=sch)
    X = matrix((16, 40), F32, 33)
    for _ in range(3):
        model(X, training=True)
    with no_warning():  # past the drop: no "still blends" warning
        stripped = mctf.strip_compression(model)
    return model, stripped, X


@pytest.mark.parametrize("case", list(STRIP_CASES))
def test_strip_gives_the_same_predictions(case):
    model, stripped, X = stripped_case(case)
    assert [type(layer).__name__ for layer in stripped.layers] == ["FactoredDense"] * 2
    assert not _compressed_layers(stripped)
    if case == "simhash":
        # The compressed layer multiplies by its kept R @ S (a GEMM), the stripped one
        # regenerates R (the op's tiles): another summation order, 1e-5 of the largest output.
        for got, ref in ((stripped.predict(X, verbose=0), model.predict(X, verbose=0)),
                         (stripped(X).numpy(), model(X, training=False).numpy())):
            assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    else:
        assert_array_equal(stripped.predict(X, verbose=0), model.predict(X, verbose=0))
        assert_array_equal(stripped(X).numpy(), model(X, training=False).numpy())
    for old, new in zip(model.layers, stripped.layers):
        assert new.name == old.name and new.activation is old.activation
        assert_array_equal(new.bias.numpy(), old.bias.numpy())
        # The stripped factors are the layer's parts (narrowed as the numpy compressor stores).
        f = new.factorization()
        assert f.kind == old.plan.kind
        ref = to_factorization(old.plan.kind, old.plan.static, layer_parts(old))
        assert_array_equal(f.to_dense(), ref.to_dense())
        # Only the float parts train in the stripped layer (fine-tuning).
        assert {w.path.split("/")[-1] for w in new.trainable_weights} == \
            set(f.trainable_fields) | {"bias"}


@pytest.mark.parametrize("case", STRIP_CASES)
def test_compressed_nbytes_equals_the_numpy_compressors_bytes(case):
    model, stripped, _ = stripped_case(case)
    factored, dense = mctf.compressed_nbytes(stripped)
    # The numpy compressor on the layers' final kernels (the bytes depend on the shapes only).
    refs = [STRIP_CASES[case]().compress(layer.kernel.numpy()) for layer in model.layers]
    assert dense == sum(f.dense_nbytes for f in refs) == (40 * 32 + 32 * 10) * 4
    assert [layer.factorization().nbytes for layer in stripped.layers] == \
        [f.nbytes for f in refs]
    assert factored == sum(f.nbytes for f in refs)
    for layer, f in zip(stripped.layers, refs):
        assert layer.factor_nbytes == f.nbytes
    cfg = STRIP_CASES[case]().get_config()["config"]
    if cfg.get("compression_ratio"):
        assert dense / factored >= cfg["compression_ratio"]


@pytest.mark.parametrize("case", list(STRIP_CASES))
def test_stripped_model_keras_round_trip(case, tmp_path):
    _, stripped, X = stripped_case(case)
    path = tmp_path / "stripped.keras"
    stripped.save(path)
    loaded = keras.models.load_model(path)
    assert [type(layer) for layer in loaded.layers] == [mctf.FactoredDense] * 2
    assert_array_equal(loaded.predict(X, verbose=0), stripped.predict(X, verbose=0))
    for a, b in zip(loaded.layers, stripped.layers):
        assert a.kind == b.kind and a.static == b.static
        for wa, wb in zip(a.weights, b.weights):
            assert wa.dtype == wb.dtype and wa.path == wb.path
            assert_array_equal(wa.numpy(), wb.numpy())


def test_compressed_model_keras_round_trip_mid_schedule(fit_run):
    # Saved at step 6 (after the blend step 5): the counter, the parts and A come back, and
    # the reloaded model computes the same blend.
    loaded = keras.models.load_model(fit_run["saved"])
    layers = _compressed_layers(loaded)
    assert len(layers) == 2
    for layer in layers:
        assert type(layer) is mctf.CompressedDense
        assert int(layer.step.numpy()) == fit_run["mid_step"] == 6
        assert layer.schedule == fit_run["schedule"]
        assert layer.compressor == KMeansCompressor(n_codes=8, random_state=0)
        assert fit_run["schedule"].alpha_at(5) == 0.5
    X = fit_run["X"]
    out = loaded(X, training=False).numpy()
    assert_array_equal(out, fit_run["mid_outputs"])
    # A blend indeed: neither A alone nor the factors alone give it.
    out_layer = layers[1]
    h = loaded.layers[0](X, training=False).numpy().astype(F64)
    A = out_layer.kernel.numpy().astype(F64)
    W = to_factorization("codebook", out_layer.plan.static,
                         layer_parts(out_layer)).to_dense()
    b = out_layer.bias.numpy()
    assert np.abs(out - (0.5 * h @ A + 0.5 * h @ W + b)).max() <= 1e-5 * np.abs(out).max()
    assert np.abs(out - (h @ A + b)).max() > 1e-3 and np.abs(out - (h @ W + b)).max() > 1e-3
    # The loaded optimizer state and counter let training resume through the schedule.
    loaded.fit(X, fit_run["Y"], batch_size=16, epochs=1, verbose=0,
               callbacks=[mctf.CompressionCallback()])
    assert int(layers[0].step.numpy()) == 10 and not layers[0].kernel.trainable


def test_saved_model_of_stripped_models_loads_in_a_fresh_process(tmp_path):
    xs, expected = {}, {}
    cases = ["kmeans", "pruning_1:2_codes", "dictionary", "simhash", "low_rank"]
    for case in cases:
        _, stripped, X = stripped_case(case)
        stripped.export(str(tmp_path / case), verbose=False)
        xs[case], expected[case] = X, stripped.predict(X, verbose=0)
    # An embedding too (FactoredEmbedding through factored_rows).
    sch = mctf.CompressionSchedule(begin_step=0, alpha_decrement=1.0)
    _, comp = _embedding_model(34, KMeansCompressor(n_codes=16, block_size=2, random_state=0),
                               sch)
    ids = np.random.default_rng(35).integers(0, 50, (8, 6)).astype(np.int32)
    comp(ids, training=True)
    emb = mctf.strip_compression(comp)
    emb.export(str(tmp_path / "embedding"), verbose=False)
    xs["embedding"], expected["embedding"] = ids, emb.predict(ids, verbose=0)
    np.savez(tmp_path / "x.npz", **xs)
    run_python("""
        import numpy as np
        import matcompress.tf
        import tensorflow as tf
        _same_matcompress()
        d = sys.argv[1]
        xs = np.load(os.path.join(d, "x.npz"))
        out = {}
        for name in xs.files:
            loaded = tf.saved_model.load(os.path.join(d, name))
            out[name] = loaded.serve(tf.constant(xs[name])).numpy()
        np.savez(os.path.join(d, "y.npz"), **out)
        """, str(tmp_path))
    got = np.load(tmp_path / "y.npz")
    assert sorted(got.files) == sorted(expected)
    for name in expected:
        assert_array_equal(got[name], expected[name], err_msg=name)


def test_strip_timing_errors_and_targets():
    sch = mctf.CompressionSchedule(begin_step=2, update_every=1, alpha_decrement=0.5)  # drop 3
    model = mctf.apply_compression(_mlp(36), LowRankCompressor(rank=2), schedule=sch)
    X = matrix((4, 40), F32, 37)
    for t in range(5):
        if t <= sch.begin_step:  # the last training step (t - 1) was before the snapshot
            with pytest.raises(ValueError, match="has not been factorized yet"):
                mctf.strip_compression(model)
        elif t <= sch.drop_step:  # the last step still blended A
            with pytest.warns(UserWarning, match="still blends its full matrix"):
                mctf.strip_compression(model)
        else:
            with no_warning():
                mctf.strip_compression(model)
        model(X, training=True)
    with pytest.raises(ValueError, match="no compressed layer"):
        mctf.strip_compression(_mlp(38))
    with pytest.raises(TypeError, match="target must be a model from apply_compression"):
        mctf.strip_compression(keras.layers.Dense(3))
    # A compressed layer gives its factored twin.
    layer = model.layers[1]
    twin = mctf.strip_compression(layer)
    assert type(twin) is mctf.FactoredDense and twin.name == layer.name
    h = model.layers[0](X).numpy()
    assert_array_equal(twin(h).numpy(), layer(h).numpy())


@pytest.mark.parametrize("form", ["low_rank", "sparse_codes", "codebook_4bit_odd_b4",
                                  "codebook_u16_b1", "sign_bits", "pruned_values",
                                  "pruned_codes"])
def test_factored_layers_from_factorization(form):
    f = ROWS_FORMS[form]
    m, n = f.shape
    bias = matrix((n,), F32, 39)
    layer = mctf.FactoredDense.from_factorization(f, bias=bias, activation="relu")
    x = matrix((5, m), F32, 40)
    got = layer(x).numpy()
    ref = np.maximum(f.matmul(x).astype(F64) + bias, 0)
    assert_close(got, ref, np.abs(x.astype(F64)) @ abs_dense(f) + np.abs(bias),
                 m + inner_depth(f) + 2, np.finfo(F32).eps, form)
    back = layer.factorization()
    assert type(back) is type(f) and back.kind == f.kind
    assert_array_equal(back.to_dense(), f.to_dense())
    assert layer.factor_nbytes == f.nbytes  # sign bits too: seed and row count counted
    nobias = mctf.FactoredDense.from_factorization(f)
    assert nobias.bias is None
    assert_close(nobias(x).numpy(), f.matmul(x), np.abs(x.astype(F64)) @ abs_dense(f),
                 m + inner_depth(f) + 2, np.finfo(F32).eps, form)
    emb = mctf.FactoredEmbedding.from_factorization(f, mask_zero=True)
    assert_array_equal(emb(ROW_IDS).numpy(), mctf.factored_rows(ROW_IDS, f).numpy())
    assert_array_equal(emb.compute_mask(ROW_IDS).numpy(), ROW_IDS != 0)
    # get_config / from_config rebuild the same layer (weights assigned separately).
    clone = mctf.FactoredDense.from_config(layer.get_config())
    clone.build((None, m))
    clone.set_weights(layer.get_weights())
    assert_array_equal(clone(x).numpy(), got)


def test_snapshot_taken_when_alpha_is_zero_at_begin_step():
    """alpha_decrement = 1: drop_step == begin_step. CompressionCallback marks A untrainable for
    that step, yet the step still takes the snapshot (a regression: the factors stayed zero)."""
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((32, 12)).astype("float32")
    y = rng.standard_normal((32, 6)).astype("float32")
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(6, name="d")])
    schedule = mctf.CompressionSchedule(begin_step=2, alpha_decrement=1.0)
    assert schedule.drop_step == 2
    cm = mctf.apply_compression(model, LowRankCompressor(rank=2), schedule=schedule)
    cm.compile(keras.optimizers.SGD(0.0), "mse")  # A and the parts stay as they are
    cm.fit(x, y, batch_size=8, epochs=1, callbacks=[mctf.CompressionCallback()], verbose=0)
    layer = cm.get_layer("d")
    A = layer.kernel.numpy()
    f = to_factorization(layer.plan.kind, layer.plan.static, layer._core.arrays())
    u, s, vt = np.linalg.svd(A.astype(np.float64))
    best = (u[:, :2] * s[:2]) @ vt[:2]
    assert np.abs(f.to_dense() - best).max() <= 1e-4 * s[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sign_bits_with_projected_signs_equal_the_op(dtype):
    """The compressed layers' kept R @ S ("projected_signs"): the product, its gradients and
    the rows equal the op that regenerates R (numpy's R @ S as the kept matrix)."""
    rng = np.random.default_rng(7)
    A = rng.standard_normal((40, 24)).astype(dtype)
    f = SimhashCompressor(compression_ratio=4, random_state=3).compress(A)
    x = tf.constant(rng.standard_normal((6, 40)).astype(dtype))
    plain = mctf.factor_tensors(f)
    kept = dict(plain, projected_signs=tf.constant(f.projection() @ f.signs()))
    results = []
    for parts in (plain, kept):
        scale = tf.Variable(parts["scale"])
        parts = dict(parts, scale=scale)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y = mctf.factored_matmul(x, parts)
            loss = tf.reduce_sum(y * y)
        results.append((y.numpy(), *[g.numpy() for g in tape.gradient(loss, [x, scale])],
                        mctf.factored_rows(tf.constant([[3, 0], [39, 3]]), parts).numpy()))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for got, ref in zip(results[1], results[0]):
        assert np.abs(got - ref).max() <= tol * np.abs(ref).max()
    assert_array_equal(results[1][3][0, 0], results[1][3][1, 1])


def test_sign_bit_scales_trained_at_the_magnitude_of_a():
    """The scales' variable holds scale * k / sqrt(m) (an optimizer's steps are absolute; the
    scales themselves are ~ ||a_j|| / k); every reader sees the scales themselves."""
    rng = np.random.default_rng(11)
    A = rng.standard_normal((64, 20)).astype(np.float32) * 0.1
    comp = SimhashCompressor(compression_ratio=2, random_state=4)
    cm = mctf.apply_compression(tf.Variable(A), comp,
                                schedule=mctf.CompressionSchedule(begin_step=0))
    cm.matmul(tf.zeros((1, 64)))  # the snapshot
    ref = comp.compress(A)
    k = ref.n_bits
    assert k > 500  # 2x of a 64 x 20 matrix: ~ 16 bits per weight
    got = cm.factorization()
    assert_array_equal(got.bits, ref.bits)
    np.testing.assert_allclose(got.scale, ref.scale, rtol=1e-6)
    stored = cm._parts["scale"].numpy()
    np.testing.assert_allclose(stored, ref.scale * k / 8.0, rtol=1e-6)
    # of the order of A's entries, where the scales are k / 8 (~100) times smaller
    assert 0.2 < np.median(np.abs(stored)) / np.median(np.abs(A)) < 5
