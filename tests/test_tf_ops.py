"""The TensorFlow face: ``matcompress.tf.factored_matmul``, the raw ops and their gradients.

References come from the numpy face (``Factorization.matmul`` / ``matmul_backward``: pybind11,
SciPy's BLAS, the core's OpenMP threads), a separate path from the TF kernels (Eigen GEMM on
TF's intra-op pool). Every form is tested: the five ``matcompress.compress`` methods, coded
pruning, and hand-built codebooks (4-bit packed, uint8, uint16, int32, int64 codes, blocks of
1, 2 and 4), sparse codes, sign bits and pruned matrices (uint16 and int32 column indices).

Tolerance. Each output entry is a sum of products through the factors, of total depth K (the
inner dimensions, the batch and the largest segment sum; K = m + n + batch + inner is used for
every output of a case, an upper bound). Rounded in any order, each of the two implementations
is within 8 eps sqrt(K) S of the exact value (Higham & Mary 2019, as derived in
test_factored.py), S being the same computation on absolute values (|x| |L| |R|, |C|^T |x|^T
|dy|, ...: computed here with the numpy face on the absolute factors, by hand for sign bits).
So we check ``|tf - numpy| <= 16 eps sqrt(K) S`` entry by entry, eps of the compute dtype:
float32 with K = 300 gives 3.3e-5 of S, float64 6.1e-14 of S. A wrong code, index, block or a
lost term is an error of order S / K, far above the bound. Where S = 0 both must be exactly 0;
NaN never passes.

Bitwise claims: eager and ``tf.function`` (static and unknown batch) give the same bits; the
intra-op pool size (1 or 2 threads, set in subprocesses) does not change the bits of the
matcompress ops (the core sums in an order fixed by the shapes).

Subprocesses (import check, SavedModel, threads) keep this process's environment and drop the
editable-install finder when this process did (as ``scripts/private_test.sh`` does), and check
that they imported the same matcompress.
"""

import dataclasses
import functools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # before TensorFlow's first import: no INFO/WARNING logs
tf = pytest.importorskip("tensorflow")

import matcompress as mc  # noqa: E402
import matcompress.tf as mctf  # noqa: E402
from matcompress.compressors import PruningCompressor  # noqa: E402
from matcompress.factors import Codebook, LowRank, Pruned, SignBits, SparseCodes  # noqa: E402
from matcompress.tf import ops as tf_ops  # noqa: E402

F64 = np.float64


@pytest.fixture(scope="module", autouse=True)
def lib():
    """The op library. TensorFlow imports here, so the library must load: fail, never skip."""
    try:
        return mctf.load_library()
    except ImportError as exc:  # pragma: no cover - the failure being reported
        pytest.fail(f"TensorFlow {tf.__version__} imports but the op library does not load: {exc}")


def test_op_library_loads_and_has_every_op(lib):
    for op in ("codebook", "sparse_codes", "sign_bits", "pruned"):
        for suffix in ("", "_grad"):
            assert callable(getattr(lib, f"matcompress_{op}_mat_mul{suffix}"))
    assert mctf.load_library() is lib  # loaded once
    from matcompress.tf import _build_info

    here = os.path.dirname(os.path.abspath(_build_info.__file__))
    assert os.path.exists(os.path.join(here, "_tf_ops.so"))
    assert _build_info.TF_VERSION.split(".")[:2] == tf.__version__.split(".")[:2]


# =============================================================================================
# The forms
# =============================================================================================

def _compressed(method, dtype, **kw):
    W = np.random.default_rng(1).standard_normal((72, 56)).astype(dtype)
    if method == "pruning_coded":
        return PruningCompressor(sparsity=0.7, n_codes=16, random_state=0).compress(W)
    return mc.compress(W, method, compression_ratio=4, random_state=0)


def _codebook(rng, dtype, m, n, *, b, n_codes, code_dtype=np.uint8, packed=False):
    nb = n // b
    codes = rng.integers(0, n_codes, (m, nb))
    cb = rng.standard_normal((n_codes, b)).astype(dtype)
    if packed:
        codes = mc.pack_4bit(codes.astype(np.uint8))
    return Codebook(codes.astype(code_dtype), cb, n, packed=packed)


def _sparse_codes(rng, dtype, m, n, *, s, k, index_dtype=np.int32, duplicates=False):
    idx = rng.integers(0, k, (m, s))
    vals = rng.standard_normal((m, s))
    if duplicates and s >= 2:
        idx[::2, 1] = idx[::2, 0]   # the same atom twice in a row
        vals[::4] = 0.0             # all-zero rows
    return SparseCodes(idx.astype(index_dtype), vals.astype(dtype),
                       rng.standard_normal((k, n)).astype(dtype))


def _sign_bits(rng, dtype, m, n, *, k, seed):
    bits = np.packbits(rng.random((k, n)) < 0.5, axis=1, bitorder="little")
    if n % 8:
        bits[:, -1] |= np.uint8((0xFF << (n % 8)) & 0xFF)  # padding bits set: must be ignored
    return SignBits(bits, rng.standard_normal(n).astype(dtype), seed, m)


def _pruned(rng, dtype, m, n, *, density, index_dtype=np.int64, n_codes=None, unsorted=False,
            last_column=False):
    keep = rng.random((m, n)) < density
    if last_column:  # the largest index the index type must hold
        keep[:, -1] = True
    counts = keep.sum(axis=1)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    cols = np.flatnonzero(keep.ravel()) % n
    if unsorted:  # the constructor sorts each row
        for i in range(m):
            rng.shuffle(cols[indptr[i]:indptr[i + 1]])
    nnz = cols.size
    if n_codes is None:
        return Pruned(indptr, cols.astype(index_dtype), n,
                      values=rng.standard_normal(nnz).astype(dtype))
    return Pruned(indptr, cols.astype(index_dtype), n,
                  codes=rng.integers(0, n_codes, nnz).astype(np.uint8),
                  codebook=rng.standard_normal(n_codes).astype(dtype))


FORMS = {
    # what the compressors return (72 x 56)
    "low_rank": lambda rng, dt: _compressed("low_rank", dt),
    "dictionary": lambda rng, dt: _compressed("dictionary", dt),
    "kmeans": lambda rng, dt: _compressed("kmeans", dt),
    "simhash": lambda rng, dt: _compressed("simhash", dt),
    "pruning": lambda rng, dt: _compressed("pruning", dt),
    "pruning_coded": lambda rng, dt: _compressed("pruning_coded", dt),
    # hand-built codebooks: every code type, blocks of 1, 2 and 4
    "codebook_4bit_odd": lambda rng, dt: _codebook(rng, dt, 33, 45, b=1, n_codes=16,
                                                   packed=True),
    "codebook_4bit_b2": lambda rng, dt: _codebook(rng, dt, 20, 38, b=2, n_codes=11, packed=True),
    "codebook_4bit_b4": lambda rng, dt: _codebook(rng, dt, 21, 24, b=4, n_codes=9, packed=True),
    "codebook_u8_b2": lambda rng, dt: _codebook(rng, dt, 30, 50, b=2, n_codes=200),
    "codebook_u16_b4": lambda rng, dt: _codebook(rng, dt, 30, 48, b=4, n_codes=300,
                                                 code_dtype=np.uint16),
    "codebook_i32": lambda rng, dt: _codebook(rng, dt, 30, 41, b=1, n_codes=70,
                                              code_dtype=np.int32),
    "codebook_i64_b2": lambda rng, dt: _codebook(rng, dt, 30, 40, b=2, n_codes=1000,
                                                 code_dtype=np.int64),
    "codebook_i64_70000_codes": lambda rng, dt: _codebook(rng, dt, 20, 30, b=1, n_codes=70000,
                                                          code_dtype=np.int64),
    # hand-built sparse codes, sign bits, pruned
    "sparse_codes_dup_u8": lambda rng, dt: _sparse_codes(rng, dt, 25, 31, s=4, k=40,
                                                         index_dtype=np.uint8, duplicates=True),
    "sparse_codes_s0": lambda rng, dt: _sparse_codes(rng, dt, 10, 12, s=0, k=5),
    "sign_bits_seed_2_64": lambda rng, dt: _sign_bits(rng, dt, 29, 43, k=37,
                                                      seed=2**64 - 12345),
    "pruned_u16_unsorted": lambda rng, dt: _pruned(rng, dt, 40, 300, density=0.2,
                                                   index_dtype=np.uint32, unsorted=True),
    "pruned_u16_65536_cols": lambda rng, dt: _pruned(rng, dt, 2, 65536, density=0.01,
                                                     last_column=True),
    "pruned_i32_70001_cols": lambda rng, dt: _pruned(rng, dt, 3, 70001, density=0.01,
                                                     last_column=True),
    "pruned_codes_u8": lambda rng, dt: _pruned(rng, dt, 25, 33, density=0.4, n_codes=7,
                                               index_dtype=np.uint8),
    "pruned_empty": lambda rng, dt: _pruned(rng, dt, 7, 9, density=0.0),
}
FORM_NAMES = list(FORMS)

#: One form per kind (and the packed codebook) for the slower tests.
MAIN_FORMS = ["low_rank", "dictionary", "kmeans", "codebook_4bit_b2", "codebook_u16_b4",
              "simhash", "pruning", "pruning_coded", "pruned_i32_70001_cols"]


@functools.lru_cache(maxsize=None)
def factorization(name, dtype):
    dtype = np.dtype(dtype)
    f = FORMS[name](np.random.default_rng([FORM_NAMES.index(name), dtype.num]), dtype)
    assert f.dtype == dtype
    return f


def test_forms_are_what_they_claim():
    # The index types the kernels see: the variants do reach the ops' code paths they name.
    t = {name: mctf.factor_tensors(factorization(name, np.float32)) for name in FORM_NAMES}
    assert isinstance(factorization("low_rank", np.float32), LowRank)
    assert isinstance(factorization("dictionary", np.float32), SparseCodes)
    assert t["kmeans"]["kind"] == "codebook" and isinstance(factorization("simhash", np.float32),
                                                             SignBits)
    assert t["pruning"]["kind"] == "pruned" and "values" in t["pruning"]
    assert "codes" in t["pruning_coded"] and t["pruning_coded"]["codebook"].shape == (16,)
    assert t["codebook_4bit_odd"]["packed"] and t["codebook_4bit_b4"]["codebook"].shape[1] == 4
    assert t["codebook_u8_b2"]["codes"].dtype == np.uint8
    assert t["codebook_u16_b4"]["codes"].dtype == np.uint16
    assert t["codebook_i32"]["codes"].dtype == np.int32
    assert t["codebook_i64_b2"]["codes"].dtype == np.uint16
    assert t["codebook_i64_70000_codes"]["codes"].dtype == np.int32
    assert t["pruned_u16_unsorted"]["indices"].dtype == np.uint16
    assert t["pruned_u16_65536_cols"]["indices"].dtype == np.uint16
    assert np.max(t["pruned_u16_65536_cols"]["indices"]) == 65535
    assert t["pruned_i32_70001_cols"]["indices"].dtype == np.int32
    assert np.size(t["pruned_empty"]["indices"]) == 0
    assert t["sign_bits_seed_2_64"]["seed"] >= 2**63


# =============================================================================================
# Running the TF face, and the tolerance
# =============================================================================================

def tf_forward_backward(f, x, dy, *, variables=True):
    """(y, dx, {field: gradient}) from factored_matmul and a GradientTape on
    L = sum(dy * y); the trainable parts are tf.Variables (``variables``) or watched constants."""
    parts = mctf.factor_tensors(f, x.dtype)
    make = tf.Variable if variables else tf.constant
    train = {name: make(parts[name]) for name in f.trainable_fields}
    parts.update(train)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        if not variables:
            tape.watch(list(train.values()))
        y = mctf.factored_matmul(xt, parts)
        loss = tf.reduce_sum(tf.constant(dy) * y)
    grads = tape.gradient(loss, [xt] + list(train.values()))
    grads = [tf.convert_to_tensor(g).numpy() for g in grads]  # IndexedSlices from tf.gather
    return y.numpy(), grads[0], dict(zip(train, grads[1:]))


def _inner_depth(f):
    if isinstance(f, LowRank):
        return f.rank
    if isinstance(f, SparseCodes):
        return f.dictionary.shape[0] + f.values.shape[1]
    if isinstance(f, SignBits):
        return f.n_bits
    if isinstance(f, Codebook):
        return int(np.bincount(f.unpacked_codes().ravel().astype(np.intp)).max())
    if f.codes is not None and f.codes.size:
        return int(np.bincount(f.codes.astype(np.intp)).max())
    return 0


def magnitudes(f, x, dy):
    """S of every output (the products on absolute values, float64) and the depth K."""
    m, n = f.shape
    ax, ady = np.abs(x.astype(F64)), np.abs(dy.astype(F64))
    batch = ax.size // m
    depth = m + n + batch + _inner_depth(f) + 2
    if isinstance(f, SignBits):  # W = (R S) diag(scale): |R| 1 |scale|, R regenerated
        R = np.abs(f.projection().astype(F64))
        sc = np.abs(f.scale.astype(F64))
        rows = (ax @ R).sum(axis=-1, keepdims=True)                     # (..., 1)
        y = rows * sc
        dx = (ady * sc).sum(axis=-1, keepdims=True) * R.sum(axis=1)
        return y, dx, {"scale": (ady * rows).reshape(-1, n).sum(axis=0)}, depth
    twin = dataclasses.replace(f, **{name: np.abs(getattr(f, name).astype(F64))
                                     for name in f.trainable_fields})
    dx, grads = twin.matmul_backward(ax, ady)
    return twin.matmul(ax), dx, grads, depth


def assert_close(got, ref, scale, depth, eps, what):
    """|got - ref| <= 16 eps sqrt(depth) scale, entry by entry (see the module docstring)."""
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    bound = 16.0 * eps * np.sqrt(depth) * np.asarray(scale, F64)
    err = np.abs(got.astype(F64) - ref.astype(F64))
    bad = ~(err <= bound)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, np.nan_to_num(err - bound, nan=np.inf),
                                                -np.inf)), bad.shape)
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} entries out of tolerance; "
                             f"worst at {i}: got {got[i]!r}, expected {ref[i]!r}, bound "
                             f"{bound[i]:.3g} (depth {depth}, eps {eps:.3g})")


def check_against_numpy_face(f, x, dy, y, dx, grads):
    dtype = x.dtype
    eps = np.finfo(dtype).eps
    y_ref = f.matmul(x)
    dx_ref, g_ref = f.matmul_backward(x, dy)
    sy, sdx, sg, depth = magnitudes(f, x, dy)
    assert y.dtype == dx.dtype == dtype
    assert_close(y, y_ref, sy, depth, eps, "y")
    assert_close(dx, dx_ref, sdx, depth, eps, "dx")
    assert set(grads) == set(f.trainable_fields) == set(g_ref)
    for name, g in grads.items():
        assert g.dtype == dtype and g.shape == getattr(f, name).shape, (name, g.dtype, g.shape)
        assert_close(g, g_ref[name], sg[name], depth, eps, f"d{name}")


# =============================================================================================
# 1. Every op equals the numpy face, float32 and float64
# =============================================================================================

LEADS = [(1,), (3,), (64,), (2, 3)]


@pytest.mark.parametrize("lead", LEADS, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("form", FORM_NAMES)
def test_forward_and_gradients_match_numpy_face(form, lead, dtype):
    f = factorization(form, dtype)
    m, n = f.shape
    rng = np.random.default_rng([FORM_NAMES.index(form), len(lead), lead[-1], dtype.num])
    x = rng.standard_normal(lead + (m,)).astype(dtype)
    dy = rng.standard_normal(lead + (n,)).astype(dtype)
    y, dx, grads = tf_forward_backward(f, x, dy)
    assert y.shape == lead + (n,) and dx.shape == lead + (m,)
    check_against_numpy_face(f, x, dy, y, dx, grads)
    # The Factorization itself (constants in the dtype of x) and watched constants: same bits.
    assert_array_equal(mctf.factored_matmul(x, f).numpy(), y)
    y2, dx2, grads2 = tf_forward_backward(f, x, dy, variables=False)
    assert_array_equal(y2, y)
    assert_array_equal(dx2, dx)
    for name in grads:
        assert_array_equal(grads2[name], grads[name])


@pytest.mark.parametrize("form", ["kmeans", "dictionary", "simhash", "pruning_coded"])
def test_float64_x_with_float32_factorization(form):
    # A float32 Factorization given to factored_matmul takes the dtype of x (float64 here): the
    # result is the float64 numpy face on the same factors.
    f = factorization(form, np.float32)
    m, n = f.shape
    x = np.random.default_rng(3).standard_normal((5, m))
    y = mctf.factored_matmul(x, f).numpy()
    assert y.dtype == np.float64
    sy = magnitudes(f, x, np.zeros((5, n)))[0]
    assert_close(y, f.matmul(x), sy, m + 2 + _inner_depth(f), np.finfo(F64).eps, "y")


@pytest.mark.parametrize("form", MAIN_FORMS)
def test_empty_batch(form):
    f = factorization(form, np.float32)
    m, n = f.shape
    x = np.zeros((0, m), np.float32)
    y, dx, grads = tf_forward_backward(f, x, np.zeros((0, n), np.float32))
    assert y.shape == (0, n) and dx.shape == (0, m)
    for name, g in grads.items():
        assert_array_equal(g, np.zeros_like(getattr(f, name)))


# =============================================================================================
# 2. tf.test.compute_gradient: theoretical against numerical jacobians (float64)
# =============================================================================================

def _tiny(kind):
    rng = np.random.default_rng(list(kind.encode()))
    if kind == "low_rank":
        return LowRank(rng.standard_normal((5, 2)), rng.standard_normal((2, 6)))
    if kind == "sparse_codes":
        return _sparse_codes(rng, F64, 5, 6, s=2, k=4)
    if kind == "codebook_4bit_b2":
        return _codebook(rng, F64, 5, 6, b=2, n_codes=5, packed=True)
    if kind == "codebook_u16":
        return _codebook(rng, F64, 5, 6, b=1, n_codes=20, code_dtype=np.uint16)
    if kind == "sign_bits":
        return _sign_bits(rng, F64, 5, 6, k=7, seed=2**63 + 5)
    if kind == "pruned":
        return _pruned(rng, F64, 5, 6, density=0.5)
    return _pruned(rng, F64, 5, 6, density=0.5, n_codes=4)  # pruned_codes


TINY = ["low_rank", "sparse_codes", "codebook_4bit_b2", "codebook_u16", "sign_bits", "pruned",
        "pruned_codes"]
TINY_PARTS = [(k, p) for k in TINY for p in ("x",) + tuple(_tiny(k).trainable_fields)]


@pytest.mark.parametrize("kind, part", TINY_PARTS, ids=[f"{k}-{p}" for k, p in TINY_PARTS])
def test_compute_gradient(kind, part):
    f = _tiny(kind)
    m, n = f.shape
    x0 = np.random.default_rng(4).standard_normal((2, m))
    parts = mctf.factor_tensors(f, F64)

    def fn(p):
        if part == "x":
            return mctf.factored_matmul(p, parts)
        return mctf.factored_matmul(x0, {**parts, part: p})

    p0 = x0 if part == "x" else parts[part]
    theoretical, numerical = tf.test.compute_gradient(fn, [tf.constant(p0)])
    assert theoretical[0].shape == (2 * n, np.size(p0))
    assert np.abs(theoretical[0]).max() > 0.1  # a jacobian that says something
    # Linear in each part: central differences are exact up to rounding.
    assert_allclose(theoretical[0], numerical[0], rtol=1e-7, atol=1e-9)


# =============================================================================================
# 3. Eager equals tf.function (same bits), static and unknown shapes; inferred static shapes
# =============================================================================================

def _step(parts, train):
    def step(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = mctf.factored_matmul(x, parts)
            loss = tf.reduce_sum(dy * y)
        grads = tape.gradient(loss, [x] + list(train.values()))
        return y, [tf.convert_to_tensor(g) for g in grads]
    return step


@pytest.mark.parametrize("form", FORM_NAMES)
def test_eager_equals_graph(form, dtype):
    f = factorization(form, dtype)
    m, n = f.shape
    parts = mctf.factor_tensors(f, dtype)
    train = {name: tf.Variable(parts[name]) for name in f.trainable_fields}
    parts.update(train)
    step = _step(parts, train)
    rng = np.random.default_rng(5)
    for lead in ((3,), (2, 3)):
        x = tf.constant(rng.standard_normal(lead + (m,)).astype(dtype))
        dy = tf.constant(rng.standard_normal(lead + (n,)).astype(dtype))
        y0, g0 = step(x, dy)
        spec = [tf.TensorSpec((None,) * len(lead) + (m,), dtype),
                tf.TensorSpec((None,) * len(lead) + (n,), dtype)]
        static = tf.function(step)
        dynamic = tf.function(step, input_signature=spec)
        unknown_rank = tf.function(step, input_signature=[tf.TensorSpec(None, dtype)] * 2)
        for name, fn in (("static", static), ("dynamic", dynamic), ("unknown rank", unknown_rank)):
            y, g = fn(x, dy)
            assert_array_equal(y.numpy(), y0.numpy(), err_msg=f"{name} {lead}: y")
            for a, b in zip(g, g0):
                assert_array_equal(a.numpy(), b.numpy(), err_msg=f"{name} {lead}: gradients")
        # What graph mode infers before running.
        y_spec, g_spec = dynamic.get_concrete_function().structured_outputs
        assert y_spec.shape.as_list() == [None] * len(lead) + [n]
        assert g_spec[0].shape.as_list() == [None] * len(lead) + [m]
        for (name, v), s in zip(train.items(), g_spec[1:]):
            assert s.shape.as_list() == list(v.shape), name
        y_static = static.get_concrete_function(x, dy).structured_outputs[0]
        assert y_static.shape.as_list() == list(lead) + [n]


def test_independent_ops_of_one_graph_give_the_eager_bits():
    # The inter-op pool may run these at the same time, each op's OpenMP threads beside the
    # others': every result is still the one of an op run alone.
    fs = [factorization(form, np.float32) for form in MAIN_FORMS]
    rng = np.random.default_rng(6)
    xs = [tf.constant(rng.standard_normal((64, f.shape[0])).astype(np.float32)) for f in fs]
    alone = [mctf.factored_matmul(x, f).numpy() for x, f in zip(xs, fs)]
    together = tf.function(lambda *xs: [mctf.factored_matmul(x, f) for x, f in zip(xs, fs)])
    for _ in range(3):
        for form, y, ref in zip(MAIN_FORMS, together(*xs), alone):
            assert_array_equal(y.numpy(), ref, err_msg=form)


def test_factor_parts_enter_graphs_as_captured_tensors_not_constants():
    # A numpy array used inside a tf.function is copied into the graph as a constant; the parts
    # (from factor_tensors, or kept with a Factorization) are eager tensors the graph captures.
    f = factorization("kmeans", np.float32)
    m, _ = f.shape
    parts = mctf.factor_tensors(f)
    codes_size = np.size(parts["codes"])
    def traced(factors):
        fn = tf.function(lambda x: mctf.factored_matmul(x, factors))
        return fn.get_concrete_function(tf.TensorSpec((1, m), tf.float32)).graph

    for factors in (f, parts):
        graph = traced(factors)
        consts = [op.outputs[0] for op in graph.get_operations() if op.type == "Const"]
        assert all(c.shape.num_elements() < codes_size for c in consts)
        captured = [c for c, _ in graph.captures]
        assert any(c.dtype == parts["codes"].dtype and np.size(c) == codes_size
                   for c in captured)
    # A Factorization's tensors are made once per dtype and kept with it.
    x = np.ones((1, m), np.float32)
    mctf.factored_matmul(x, f)
    kept = tf_ops._cached_factor_tensors(f, np.float32)
    mctf.factored_matmul(x, f)
    assert tf_ops._cached_factor_tensors(f, np.float32) is kept


def test_raw_op_static_shapes(lib):
    # The shape functions: the batch stays unknown, n comes from the attribute or the factors.
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    def raw(x):
        cb = lib.matcompress_codebook_mat_mul(x, np.zeros((4, 3), np.uint8),
                                              np.ones((5, 2), np.float32), n=6)
        sc = lib.matcompress_sparse_codes_mat_mul(x, np.zeros((4, 2), np.int32),
                                                  np.ones((4, 2), np.float32),
                                                  np.ones((3, 7), np.float32))
        sb = lib.matcompress_sign_bits_mat_mul(x, np.zeros((5, 2), np.uint8),
                                               np.ones(9, np.float32), seed=1)
        pr = lib.matcompress_pruned_mat_mul(x, np.array([0, 1, 1, 2, 2], np.int64),
                                            np.array([0, 3], np.int32), np.ones(2, np.float32),
                                            n=8)
        return cb, sc, sb, pr

    shapes = [t.shape.as_list() for t in raw.get_concrete_function().structured_outputs]
    assert shapes == [[None, 6], [None, 7], [None, 9], [None, 8]]


def test_graph_shape_function_rejects_wrong_width(lib):
    # In graph mode a statically wrong width is caught by the shape function when the graph is
    # built; TensorFlow reports shape-function errors as ValueError.
    @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32)])
    def raw(x):
        return lib.matcompress_codebook_mat_mul(x, np.zeros((4, 3), np.uint8),
                                                np.ones((5, 2), np.float32), n=6)

    with pytest.raises(ValueError, match="Dimensions must be equal, but are 5 and 4"):
        raw.get_concrete_function()


# =============================================================================================
# 4. Bad inputs: InvalidArgumentError naming the argument, never a crash
# =============================================================================================

X4 = np.ones((2, 4), np.float32)         # batch 2, m = 4
CODES = np.array([[0, 1, 2], [3, 4, 0], [1, 1, 1], [4, 3, 2]], np.uint8)  # n = 6, block 2
CB = np.ones((5, 2), np.float32)
PACKED = np.array([[0x10, 0x02], [0x43, 0x00], [0x11, 0x01], [0x34, 0x02]], np.uint8)
INDPTR = np.array([0, 1, 1, 3, 4], np.int64)
COLS = np.array([2, 0, 5, 1], np.int32)
VALS = np.ones(4, np.float32)


def _codebook_op(lib, grad, x=X4, dy=None, codes=CODES, codebook=CB, n=6, packed=False):
    if grad:
        dy = np.ones((x.shape[0], n), np.float32) if dy is None else dy
        return lib.matcompress_codebook_mat_mul_grad(x, dy, codes, codebook, n=n, packed=packed)
    return lib.matcompress_codebook_mat_mul(x, codes, codebook, n=n, packed=packed)


def _sparse_op(lib, grad, x=X4, dy=None, indices=None, values=None, dictionary=None):
    indices = np.array([[0, 1], [2, 0], [1, 1], [2, 2]], np.int32) if indices is None else indices
    values = np.ones(indices.shape, np.float32) if values is None else values
    dictionary = np.ones((3, 7), np.float32) if dictionary is None else dictionary
    if grad:
        dy = np.ones((x.shape[0], 7), np.float32) if dy is None else dy
        return lib.matcompress_sparse_codes_mat_mul_grad(x, dy, indices, values, dictionary)
    return lib.matcompress_sparse_codes_mat_mul(x, indices, values, dictionary)


def _sign_op(lib, grad, x=X4, dy=None, bits=None, scale=None):
    bits = np.zeros((5, 2), np.uint8) if bits is None else bits
    scale = np.ones(9, np.float32) if scale is None else scale
    if grad:
        dy = np.ones((x.shape[0], 9), np.float32) if dy is None else dy
        return lib.matcompress_sign_bits_mat_mul_grad(x, dy, bits, scale, seed=3)
    return lib.matcompress_sign_bits_mat_mul(x, bits, scale, seed=3)


def _pruned_op(lib, grad, x=X4, dy=None, indptr=INDPTR, indices=COLS, values=None, n=6):
    values = np.ones(indices.shape, np.float32) if values is None else values
    if grad:
        dy = np.ones((x.shape[0], n), np.float32) if dy is None else dy
        return lib.matcompress_pruned_mat_mul_grad(x, dy, indptr, indices, values, n=n)
    return lib.matcompress_pruned_mat_mul(x, indptr, indices, values, n=n)


BAD = {
    # codebook
    "codebook x width": (_codebook_op, dict(x=np.ones((2, 5), np.float32)),
                         r"x must have shape \(batch, 4\); got \[2,5\]"),
    "codebook codes out of range": (_codebook_op, dict(codes=np.where(CODES == 4, 5, CODES)
                                                       .astype(np.uint8)),
                                    r"codes must lie in \[0, 5\); got values in \[0, 5\]"),
    "codebook u16 codes out of range": (_codebook_op, dict(codes=CODES.astype(np.uint16) * 300),
                                        r"codes must lie in \[0, 5\)"),
    "codebook int32 codes negative": (_codebook_op, dict(codes=CODES.astype(np.int32) - 1),
                                      r"codes must lie in \[0, 5\); got values in \[-1, 3\]"),
    "codebook packed low nibble out of range": (
        _codebook_op, dict(codes=PACKED | np.uint8(0x07), packed=True),
        r"codes must lie in \[0, 5\); got values in \[0, 7\]"),
    "codebook packed high nibble out of range": (
        _codebook_op, dict(codes=PACKED | np.uint8(0xF0), packed=True),
        r"codes must lie in \[0, 5\); got values in \[0, 15\]"),
    "codebook packed too many codes": (_codebook_op,
                                       dict(codes=PACKED, codebook=np.ones((17, 2), np.float32),
                                            packed=True),
                                       r"packed codes are uint8 with at most 16 codebook entries"),
    "codebook packed uint16": (_codebook_op, dict(codes=PACKED.astype(np.uint16), packed=True),
                               r"packed codes are uint8"),
    "codebook codes shape": (_codebook_op, dict(codes=CODES[:, :2]),
                             r"codes must have shape \(m, 3\) for n = 6, block 2"),
    "codebook packed codes shape": (_codebook_op, dict(codes=CODES, packed=True),
                                    r"codes must have shape \(m, 2\) for n = 6, block 2, packed"),
    "codebook not 2-D": (_codebook_op, dict(codebook=np.ones(10, np.float32)),
                         r"codebook must be a non-empty matrix \(n_codes, block\); got \[10\]"),
    "codebook empty": (_codebook_op, dict(codebook=np.ones((0, 2), np.float32)),
                       r"codebook must be a non-empty matrix"),
    "codebook n not a multiple of the block": (_codebook_op, dict(n=7),
                                               r"n = 7 must be a multiple of the block size 2"),
    # sparse codes
    "sparse x width": (_sparse_op, dict(x=np.ones((2, 3), np.float32)),
                       r"x must have shape \(batch, 4\)"),
    "sparse indices out of range": (_sparse_op, dict(indices=np.full((4, 2), 3, np.int32)),
                                    r"indices must lie in \[0, 3\); got 3 at position 0"),
    "sparse indices negative": (_sparse_op, dict(indices=-np.eye(4, 2, dtype=np.int32)),
                                r"indices must lie in \[0, 3\); got -1 at position 0"),
    "sparse indices and values shapes": (_sparse_op, dict(values=np.ones((4, 3), np.float32)),
                                         r"indices and values must be matrices of the same "
                                         r"shape \(m, s\); got \[4,2\] and \[4,3\]"),
    "sparse dictionary not 2-D": (_sparse_op, dict(dictionary=np.ones(7, np.float32)),
                                  r"dictionary must be a non-empty matrix \(k, n\)"),
    # sign bits
    "sign bits width": (_sign_op, dict(bits=np.zeros((5, 1), np.uint8)),
                        r"bits must have shape \(k, 2\) for n = 9; got \[5,1\]"),
    "sign bits no rows": (_sign_op, dict(bits=np.zeros((0, 2), np.uint8)),
                          r"bits must have shape \(k, 2\)"),
    "sign scale not a vector": (_sign_op, dict(scale=np.ones((9, 1), np.float32)),
                                r"scale must be a non-empty vector \(n,\); got \[9,1\]"),
    "sign x not a matrix": (_sign_op, dict(x=np.ones(4, np.float32)),
                            r"x must be a matrix \(batch, m\)"),
    # pruned
    "pruned x width": (_pruned_op, dict(x=np.ones((2, 6), np.float32)),
                       r"x must have shape \(batch, 4\); got \[2,6\]"),
    "pruned indptr decreasing": (_pruned_op, dict(indptr=np.array([0, 2, 1, 3, 4], np.int64),
                                                  indices=np.array([0, 2, 5, 1], np.int32)),
                                 r"CSR: indptr decreases at row 1"),
    "pruned indptr[0] not 0": (_pruned_op, dict(indptr=np.array([1, 1, 1, 3, 4], np.int64)),
                               r"CSR: indptr\[0\] must be 0; got 1"),
    "pruned indptr[-1] != nnz": (_pruned_op, dict(indptr=np.array([0, 1, 1, 3, 3], np.int64)),
                                 r"CSR: indptr\[-1\] = 3 but there are 4 entries"),
    "pruned index >= n": (_pruned_op, dict(indices=np.array([2, 0, 6, 1], np.int32)),
                          r"CSR: column index 6 at entry 2 outside \[0, 6\)"),
    "pruned u16 index >= n": (_pruned_op, dict(indices=np.array([2, 0, 65535, 1], np.uint16)),
                              r"CSR: column index 65535 at entry 2 outside \[0, 6\)"),
    "pruned index negative": (_pruned_op, dict(indices=np.array([2, -1, 5, 1], np.int32)),
                              r"CSR: column index -1 at entry 1 outside \[0, 6\)"),
    "pruned indices decrease in a row": (_pruned_op, dict(indices=np.array([2, 5, 0, 1],
                                                                           np.int32)),
                                         r"CSR: column indices decrease within row 2 at entry 2"),
    "pruned indices and values lengths": (_pruned_op, dict(values=np.ones(3, np.float32)),
                                          r"indices and values must be vectors of the same "
                                          r"length; got \[4\] and \[3\]"),
    "pruned indptr too short": (_pruned_op, dict(indptr=np.array([0], np.int64),
                                                 indices=np.zeros(0, np.int32)),
                                r"indptr must be a vector of m \+ 1 >= 2 offsets"),
    "pruned u16 indices for n > 65536": (_pruned_op,
                                         dict(indices=COLS.astype(np.uint16), n=70000),
                                         r"n = 70000 is too large for uint16 indices"),
}


@pytest.mark.parametrize("grad", [False, True], ids=["op", "grad_op"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_raise_invalid_argument(lib, case, grad):
    op, kwargs, match = BAD[case]
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        op(lib, grad, **kwargs)


@pytest.mark.parametrize("op", [_codebook_op, _sparse_op, _sign_op, _pruned_op],
                         ids=["codebook", "sparse_codes", "sign_bits", "pruned"])
def test_good_inputs_of_the_bad_input_table_run(lib, op):
    # The table's base inputs are valid: each error above comes from the one change it makes.
    for grad in (False, True):
        out = op(lib, grad)
        assert all(np.isfinite(t.numpy()).all() for t in (out if grad else [out]))


@pytest.mark.parametrize("op, n", [(_codebook_op, 6), (_sparse_op, 7), (_sign_op, 9),
                                   (_pruned_op, 6)],
                         ids=["codebook", "sparse_codes", "sign_bits", "pruned"])
@pytest.mark.parametrize("dy_shape", [(2, 1), (3, "n"), (2, "n", 1), ("n",)], ids=str)
def test_grad_ops_reject_dy_of_the_wrong_shape(lib, op, n, dy_shape):
    shape = tuple(n if d == "n" else d for d in dy_shape)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"dy must have shape \(2, %d\)" % n):
        op(lib, True, dy=np.ones(shape, np.float32))


_CSR_PROBE = """
    import numpy as np
    import tensorflow as tf
    import matcompress.tf as mctf
    _same_matcompress()
    lib = mctf.load_library()
    x = np.ones((1, 4), np.float32)
    for first in (5, 6, 10**6):  # indptr[1] past nnz = 4; indptr decreases at row 1
        try:
            lib.matcompress_pruned_mat_mul(x, np.array([0, first, 1, 3, 4], np.int64),
                                           np.array([0, 1, 2, 3], np.int32),
                                           np.ones(4, np.float32), n=6)
            print("no error")
        except tf.errors.InvalidArgumentError as exc:
            print(exc.message.replace(chr(10), " "))
    """


def test_pruned_indptr_beyond_nnz_in_the_middle():
    # In a subprocess: the out-of-bounds read may crash.
    proc = run_python(_CSR_PROBE)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, f"crashed: exit {proc.returncode}: {err[-2000:]}"
    for line in out.splitlines():
        assert "indptr" in line and "entry" not in line, line


def test_wrong_index_dtypes_raise(lib):
    # Index dtypes outside the op's attribute lists: rejected when the op is built.
    with pytest.raises(tf.errors.InvalidArgumentError, match="Tcodes.*int64.*not in the list"):
        _codebook_op(lib, False, codes=CODES.astype(np.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Tidx.*not in the list"):
        _pruned_op(lib, False, indices=COLS.astype(np.uint8))
    # (A numpy array is converted to the fixed int32 of `indices`; an int64 tensor is not.)
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a int32 tensor"):
        _sparse_op(lib, False, indices=tf.zeros((4, 2), tf.int64))


@pytest.mark.parametrize("op, arg", [(_codebook_op, "codebook"), (_sparse_op, "dictionary"),
                                     (_sign_op, "scale"), (_pruned_op, "values")],
                         ids=["codebook", "sparse_codes", "sign_bits", "pruned"])
def test_raw_ops_reject_mixed_float_tensors(lib, op, arg):
    # x float32 with float64 factors (as tensors; numpy arrays would be converted to x's dtype,
    # as TensorFlow converts every non-tensor argument).
    defaults = {"codebook": CB, "dictionary": np.ones((3, 7), np.float32),
                "scale": np.ones(9, np.float32), "values": VALS}
    wide = tf.constant(defaults[arg].astype(F64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a float tensor but "
                                                             "is a double tensor"):
        op(lib, False, x=tf.constant(X4), **{arg: wide})


@pytest.mark.parametrize("form", MAIN_FORMS)
def test_factored_matmul_rejects_variables_of_another_dtype(form):
    # float64 Variables with float32 x: InvalidArgumentError eagerly, TypeError when a
    # tf.function is traced (TensorFlow's op construction).
    f = factorization(form, np.float32)
    parts = mctf.factor_tensors(f, F64)
    parts.update({name: tf.Variable(parts[name]) for name in f.trainable_fields})
    x = tf.constant(np.ones((2, f.shape[0]), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="is a double tensor"):
        mctf.factored_matmul(x, parts)
    with pytest.raises(TypeError, match="float64|double"):
        tf.function(lambda x: mctf.factored_matmul(x, parts))(x)


_WIDTH_FORMS = {name: name for name in MAIN_FORMS}


@pytest.mark.parametrize("form", list(_WIDTH_FORMS.values()))
def test_factored_matmul_rejects_x_of_the_wrong_width(form):
    f = factorization(form, np.float32)
    m = f.shape[0]
    with pytest.raises(ValueError):
        f.matmul(np.ones((2, m - 1), np.float32))  # what the numpy face does
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"\b{m}\b"):
        mctf.factored_matmul(np.ones((2, m - 1), np.float32), f)


def test_factored_matmul_argument_errors():
    with pytest.raises(TypeError, match="Factorization or a mapping"):
        mctf.factored_matmul(np.ones((1, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="unknown factorization kind 'dense'"):
        mctf.factored_matmul(np.ones((1, 2)), {"kind": "dense"})
    with pytest.raises(TypeError, match="must be a matcompress Factorization"):
        mctf.factor_tensors({"kind": "codebook"})


# =============================================================================================
# 5. The loader, and `import matcompress` without TensorFlow
# =============================================================================================

def _other_versions():
    major, minor = (int(v) for v in tf.__version__.split(".")[:2])
    other = [f"{major}.{minor + 1}.0", f"{major + 1}.{minor}.0"]
    if minor >= 10:  # a prefix of the installed version ("2.2" for "2.21") is another version
        other.append(f"{major}.{minor // 10}.{minor % 10}")
    return other


@pytest.mark.parametrize("built", _other_versions())
def test_loader_rejects_another_tensorflow(monkeypatch, built):
    from matcompress.tf import _build_info

    monkeypatch.setattr(_build_info, "TF_VERSION", built)
    monkeypatch.setattr(tf_ops, "_LIB", None)
    with pytest.raises(ImportError) as info:
        mctf.load_library()
    msg = str(info.value)
    assert built in msg and tf.__version__ in msg, msg
    # Every op call reports it too (low-rank needs no library).
    with pytest.raises(ImportError, match=built.replace(".", r"\.")):
        mctf.factored_matmul(np.ones((1, 72), np.float32), factorization("kmeans", np.float32))
    mctf.factored_matmul(np.ones((1, 72), np.float32), factorization("low_rank", np.float32))


def test_loader_accepts_another_patch_release(monkeypatch):
    from matcompress.tf import _build_info

    major, minor = tf.__version__.split(".")[:2]
    monkeypatch.setattr(_build_info, "TF_VERSION", f"{major}.{minor}.99")
    monkeypatch.setattr(tf_ops, "_LIB", None)
    lib = mctf.load_library()
    assert hasattr(lib, "matcompress_codebook_mat_mul")


def test_loader_reports_a_missing_library(monkeypatch, tmp_path):
    from matcompress.tf import _build_info

    monkeypatch.setattr(_build_info, "__file__", str(tmp_path / "_build_info.py"))
    monkeypatch.setattr(tf_ops, "_LIB", None)
    with pytest.raises(ImportError, match="no TensorFlow op library") as info:
        mctf.load_library()
    assert tf.__version__ in str(info.value)


def test_loader_state_restored():
    # After the monkeypatched tests: the library is the loaded one again.
    assert tf_ops._LIB is not None and mctf.load_library() is tf_ops._LIB


_DROP_EDITABLE = not any("editable" in type(f).__module__ for f in sys.meta_path)


def run_python(code, *args, timeout=180):
    """Run ``code`` in a fresh interpreter that imports the same matcompress as this one."""
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
    return subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code), *args],
                            env=dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=180):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err[-4000:]}"
    return out


def test_import_matcompress_does_not_import_tensorflow():
    out = finish(run_python("""
        import matcompress, matcompress.factors, matcompress.compressors
        _same_matcompress()
        print("tensorflow" in sys.modules, "matcompress.tf" in sys.modules)
        """))
    assert out.split() == ["False", "False"]


# =============================================================================================
# 6. SavedModel round trip, loaded in a fresh process after `import matcompress.tf`
# =============================================================================================

class _Served(tf.Module):
    def __init__(self, f, trainable):
        super().__init__()
        m = f.shape[0]
        parts = mctf.factor_tensors(f, np.float32)
        self.params = {name: tf.Variable(parts[name], name=name) for name in trainable}
        static = {k: v for k, v in parts.items() if k not in trainable}

        @tf.function(input_signature=[tf.TensorSpec([None, m], tf.float32)])
        def serve(x):
            return mctf.factored_matmul(x, {**static, **self.params})

        self.serve = serve


def test_saved_model_round_trip(tmp_path):
    # A codebook with its entries as Variables, and sign bits with a seed >= 2^63 (an int attr
    # read back as the same 64 bits).
    forms = {"kmeans": ("codebook",), "sign_bits_seed_2_64": (),
             "codebook_4bit_b2": ("codebook",)}
    xs, expected = {}, {}
    for i, (form, trainable) in enumerate(forms.items()):
        f = factorization(form, np.float32)
        module = _Served(f, trainable)
        x = np.random.default_rng(i).standard_normal((5, f.shape[0])).astype(np.float32)
        expected[form] = module.serve(tf.constant(x)).numpy()
        assert_close(expected[form], f.matmul(x), magnitudes(f, x, expected[form])[0],
                     f.shape[0] + 7 + _inner_depth(f), np.finfo(np.float32).eps, form)
        tf.saved_model.save(module, str(tmp_path / form))
        xs[form] = x
    np.savez(tmp_path / "x.npz", **xs)
    finish(run_python("""
        import numpy as np
        import matcompress.tf
        import tensorflow as tf
        _same_matcompress()
        d = sys.argv[1]
        xs = np.load(os.path.join(d, "x.npz"))
        out = {}
        for form in xs.files:
            loaded = tf.saved_model.load(os.path.join(d, form))
            out[form] = loaded.serve(tf.constant(xs[form])).numpy()
        np.savez(os.path.join(d, "y.npz"), **out)
        """, str(tmp_path)))
    got = np.load(tmp_path / "y.npz")
    for form in forms:
        assert_array_equal(got[form], expected[form], err_msg=form)


# =============================================================================================
# 7. jit_compile=True: the ops have no XLA kernel
# =============================================================================================

def test_jit_compile_raises_a_clear_error():
    """XLA cannot compile the matcompress ops (they have CPU kernels only). What happens, as
    observed with TensorFlow 2.21: calling a ``tf.function(jit_compile=True)`` that uses one
    raises ``tf.errors.InvalidArgumentError`` ("Detected unsupported operations when trying to
    compile graph ... on XLA_CPU_JIT: Matcompress>CodebookMatMul (No registered
    'Matcompress>CodebookMatMul' OpKernel for XLA_CPU_JIT devices ...)"), and the process goes
    on. A low-rank factorization (plain tf.matmul) does compile."""
    f = factorization("kmeans", np.float32)
    x = tf.constant(np.ones((2, 72), np.float32))
    jitted = tf.function(lambda x: mctf.factored_matmul(x, f), jit_compile=True)
    with pytest.raises((tf.errors.InvalidArgumentError, tf.errors.NotFoundError),
                       match=r"Matcompress>CodebookMatMul.*XLA") as info:
        jitted(x)
    assert isinstance(info.value, tf.errors.InvalidArgumentError)
    assert mctf.factored_matmul(x, f).shape == (2, 56)  # still usable
    low = factorization("low_rank", np.float32)
    y = tf.function(lambda x: mctf.factored_matmul(x, low), jit_compile=True)(x)
    assert_allclose(y.numpy(), low.matmul(x.numpy()), rtol=1e-4, atol=1e-4)


# =============================================================================================
# 8. The intra-op pool size does not change the bits
# =============================================================================================

def _thread_forms():
    """Shapes where the core does use 2 threads (>= 2e6-1e7 multiply-adds per thread)."""
    rng = np.random.default_rng(8)
    return {
        "codebook_4bit_b2": _codebook(rng, np.float32, 512, 512, b=2, n_codes=16, packed=True),
        "codebook_u16": _codebook(rng, np.float32, 512, 512, b=1, n_codes=300,
                                  code_dtype=np.uint16),
        "sparse_codes": _sparse_codes(rng, np.float32, 512, 512, s=8, k=64),
        "sign_bits": _sign_bits(rng, np.float32, 512, 512, k=256, seed=11),
        "pruned": _pruned(rng, np.float32, 512, 512, density=0.3),
        "pruned_codes": _pruned(rng, np.float32, 512, 512, density=0.3, n_codes=16),
    }


_THREAD_RUN = """
    import numpy as np
    import tensorflow as tf
    n_threads = int(sys.argv[2])
    tf.config.threading.set_intra_op_parallelism_threads(n_threads)  # before TF initializes
    sys.path.insert(0, sys.argv[3])
    import matcompress.factors
    import test_tf_ops as t
    _same_matcompress()
    d = sys.argv[1]
    data = np.load(os.path.join(d, "xdy.npz"))
    out = {}
    for name in data["names"]:
        f = matcompress.factors.load(os.path.join(d, name + ".npz"))
        y, dx, g = t.tf_forward_backward(f, data["x"], data["dy"])
        out.update({name + "/y": y, name + "/dx": dx}, **{name + "/" + k: v for k, v in g.items()})
    assert tf.config.threading.get_intra_op_parallelism_threads() == n_threads
    np.savez(os.path.join(d, "out%d.npz" % n_threads), **out)
    """


def test_same_bits_for_1_and_2_intra_op_threads(tmp_path):
    """Low-rank (TensorFlow's own MatMul, whose summation order TensorFlow does not promise
    across pool sizes) is left out: only the matcompress ops are compared."""
    forms = _thread_forms()
    rng = np.random.default_rng(9)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    dy = rng.standard_normal((64, 512)).astype(np.float32)
    for name, f in forms.items():
        f.save(tmp_path / f"{name}.npz")
    np.savez(tmp_path / "xdy.npz", x=x, dy=dy, names=np.array(list(forms)))
    here = os.path.dirname(os.path.abspath(__file__))
    procs = [run_python(_THREAD_RUN, str(tmp_path), str(n), here) for n in (1, 2)]
    # This process: the pool size left unset (one thread per core).
    mine = {}
    for name, f in forms.items():
        y, dx, g = tf_forward_backward(f, x, dy)
        mine.update({name + "/y": y, name + "/dx": dx}, **{f"{name}/{k}": v for k, v in g.items()})
        if name == "codebook_u16":  # and the result is the right one
            check_against_numpy_face(f, x, dy, y, dx, g)
    for p in procs:
        finish(p)
    for n in (1, 2):
        got = np.load(tmp_path / f"out{n}.npz")
        assert sorted(got.files) == sorted(mine)
        for key, v in mine.items():
            assert_array_equal(got[key], v, err_msg=f"{key}: {n} intra-op thread(s) vs unset")
