"""Gradual pruning in training (issue 13, item 5): ``PruningSchedule``, ``PruningKernel`` and
``PruningMatrix`` through ``apply_compression`` / ``strip_compression`` / ``compressed_nbytes``.

References are independent of the code under test:

- the ramp written out by hand (Zhu & Gupta's formula in Python floats) and the update steps
  listed from their definition;
- the masks: ``mc.prune_mask`` (the native radix select) for a first update from a dense
  layer, and a numpy greedy selection (lexsort by score, ties to the lower index; for N:M, the
  lowest-ranked entries taken one by one while their group may still lose one) otherwise;
- the Taylor and Fisher scores: numpy in float64 from the gradients the test records itself
  with a ``GradientTape`` in a custom loop (one fixed batch);
- stripped models: numpy products of the masked kernels, and the CSR bytes counted by hand.

Tolerances: scores 1e-5 (float32) / 1e-12 (float64) relative to each entry (a sum of a few
gradients in the variable's dtype against float64); mask selections, sparsity counts, the
kernel's zeros, the gradients' zeros, eager against ``tf.function`` and ``.keras`` round trips
are compared exactly. A pruned count at an intermediate update may differ from
``floor(s_t * n_units)`` in Python by one (the graph's float64 ``pow``), never at
``end_step``.

Runtime: about 20-30 s on 2 cores (16-12-8 MLPs, a few dozen steps each).
"""

import os
import re
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow's first import
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import matcompress as mc  # noqa: E402
import matcompress.tf as mctf  # noqa: E402
from matcompress.compressors import PruningCompressor  # noqa: E402
from matcompress.factors import Pruned  # noqa: E402
from matcompress.tf.pruning import select_mask  # noqa: E402

#: Keras' Variable.__array__ warns under numpy >= 2 when the tests convert variables.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword")

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
DTYPES = [F32, F64]
TOL = {F32: 1e-5, F64: 1e-12}


# =============================================================================================
# Helpers
# =============================================================================================

def mlp(dtype=F32, seed=0, n_in=16, hidden=12, n_out=8, names=("hidden", "out")):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((n_in,), dtype=dtype.name),
        keras.layers.Dense(hidden, activation="tanh", name=names[0], dtype=dtype.name),
        keras.layers.Dense(n_out, name=names[1], dtype=dtype.name)])


def data(dtype=F32, n=32, n_in=16, n_out=8, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, n_in)).astype(dtype),
            rng.standard_normal((n, n_out)).astype(dtype))


def pruned_layers(model):
    return [layer for layer in model.layers if isinstance(layer, mctf.PruningKernel)]


def mask_of(layer):
    return np.asarray(tf.convert_to_tensor(layer.pruning_mask))


def weight(layer, name):
    (var,) = [w for w in layer.weights if w.name == name]
    return np.asarray(tf.convert_to_tensor(var))


def formula(t, b, e, si, sf, p):
    """Zhu & Gupta's ramp, written out (the ends exact)."""
    if t < b:
        return 0.0
    if t == b:
        return si
    if t >= e:
        return sf
    return sf + (si - sf) * (1 - (t - b) / (e - b)) ** p


def make_step(model, opt, use_function):
    """One custom training step (mse on a fixed batch): returns the kernels' gradients."""
    kernels = [layer.kernel for layer in pruned_layers(model)]

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        by_var = {id(v): g for v, g in zip(model.trainable_variables, grads)}
        return [by_var[id(k)] for k in kernels]

    return tf.function(step) if use_function else step


def units_pruned(mask, schedule):
    """Pruned units (entries or blocks) of a mask, checking the block pattern."""
    if schedule.pattern == "block":
        br, bc = schedule.block_shape
        m, n = mask.shape
        blocks = mask.reshape(m // br, br, n // bc, bc)
        assert np.all(blocks.min(axis=(1, 3)) == blocks.max(axis=(1, 3))), "a block is split"
        return int(np.sum(blocks[:, 0, :, 0] == 0))
    return int(np.sum(mask == 0))


def greedy_keep(scores, alive, n_prune, pattern=None, block_shape=None, n_m=None):
    """Reference selection: the alive units ranked by score (ties: the lower flat index kept
    first; units already pruned come last), the last ones pruned: n_prune units in all (for N:M
    along axis 0, one at a time while its group keeps more than N)."""
    scores, alive = np.asarray(scores, F64), np.asarray(alive, bool)
    m, n = scores.shape
    if pattern == "n:m":
        keep_n, group = n_m
        s, a = scores.T.reshape(-1), alive.T.reshape(-1)  # column-major: groups contiguous
        g = np.arange(s.size) // group
        idx = np.arange(s.size)
        # prune order: dead units first, then ascending score, ties: higher index first
        order = np.lexsort((-idx, s, a))
        kept_in = np.full(g.max() + 1, group)
        keep = np.ones(s.size, bool)
        todo = n_prune
        for i in order:
            if todo == 0:
                break
            if kept_in[g[i]] > keep_n:
                keep[i] = False
                kept_in[g[i]] -= 1
                todo -= 1
        return keep.reshape(n, m).T
    if pattern == "block":
        br, bc = block_shape
        s = scores.reshape(m // br, br, n // bc, bc).sum(axis=(1, 3))
        a = alive.reshape(m // br, br, n // bc, bc).all(axis=(1, 3))
    else:
        s, a = scores, alive
    flat_s, flat_a = s.reshape(-1), a.reshape(-1)
    idx = np.arange(flat_s.size)
    order = np.lexsort((idx, -flat_s, ~flat_a))  # keep order
    keep = np.zeros(flat_s.size, bool)
    keep[order[:flat_s.size - n_prune]] = True
    keep = keep.reshape(s.shape)
    if pattern == "block":
        keep = np.repeat(np.repeat(keep, br, axis=0), bc, axis=1)
    return keep


# =============================================================================================
# 1. The schedule
# =============================================================================================

RAMPS = [  # (begin, end, every, initial, final, exponent)
    (0, 100, 10, 0.0, 0.9, 3),
    (5, 25, 4, 0.1, 0.5, 3),
    (2, 3, 1, 0.0, 0.75, 1),
    (10, 40, 7, 0.3, 0.3, 2.5),
]


@pytest.mark.parametrize("b, e, u, si, sf, p", RAMPS)
def test_ramp_values_equal_the_formula(b, e, u, si, sf, p):
    s = mctf.PruningSchedule(b, e, u, si, sf, exponent=p)
    steps = sorted({0, b, b + 1, (b + e) // 2, e - 1, e, e + 1, 3 * e})
    for t in steps:
        ref = formula(t, b, e, si, sf, p)
        assert s.sparsity_at(t) == pytest.approx(ref, rel=1e-15, abs=0), t
        got = float(s.sparsity(tf.constant(t, tf.int64)).numpy())
        assert got == pytest.approx(ref, rel=1e-13, abs=1e-15), t
    assert s.sparsity_at(b) == si and s.sparsity_at(e) == sf and s.sparsity_at(10 * e) == sf
    if b > 0:
        assert s.sparsity_at(b - 1) == 0.0
    # updates: begin + k * every up to end, and end itself
    want = set(range(b, e + 1, u)) | {e}
    got = {t for t in range(3 * e + 2) if s.is_update_step(t)}
    assert got == want
    tensor = {t for t in range(3 * e + 2)
              if bool(s.update(tf.constant(t, tf.int64)).numpy())}
    assert tensor == want
    # a per-layer target: the ramp ends there; a target below initial_sparsity is flat
    assert s.sparsity_at(e, target=0.6) == 0.6
    assert s.sparsity_at((b + e) // 2, target=0.6) == pytest.approx(
        formula((b + e) // 2, b, e, min(si, 0.6), 0.6, p), rel=1e-15)
    low = si / 2
    assert all(s.sparsity_at(t, target=low) == (0.0 if t < b else low) for t in steps)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(0, 50), span=st.integers(1, 200), u=st.integers(1, 30),
       si=st.floats(0, 0.95), extra=st.floats(0, 1), p=st.floats(0.25, 6), t=st.integers(0, 400))
def test_ramp_property(b, span, u, si, extra, p, t):
    sf = si + (0.999 - si) * extra
    e = b + span
    s = mctf.PruningSchedule(b, e, u, si, sf, exponent=p)
    ref = formula(t, b, e, si, sf, p)
    assert s.sparsity_at(t) == pytest.approx(ref, rel=1e-14, abs=1e-15)
    assert float(s.sparsity(tf.constant(t, tf.int64))) == pytest.approx(ref, rel=1e-12,
                                                                        abs=1e-14)
    # non-decreasing in t, within [0, final]
    assert 0.0 <= s.sparsity_at(t) <= s.sparsity_at(t + 1) <= sf
    assert s.is_update_step(t) == (b <= t <= e and ((t - b) % u == 0 or t == e))


def test_schedule_config_round_trip_and_repr():
    s = mctf.PruningSchedule(3, 30, 5, 0.1, 0.5, exponent=2, score="fisher", pattern="block",
                             block_shape=(2, 4), sparsity_map={"enc.*": 0.7, "head": 0.2})
    cfg = s.get_config()
    assert mctf.PruningSchedule.from_config(cfg) == s
    assert "PruningSchedule(" in repr(s) and "fisher" in repr(s)
    assert s.target_for("encoder_1") == 0.7 and s.target_for("head") == 0.2
    assert s.target_for("other") == 0.5
    assert s.unmatched(["encoder_1", "x"]) == ["head"]
    nm = mctf.PruningSchedule(0, 10, 1, 0.0, 0.5, pattern="n:m", n_m=(2, 4))
    assert nm.get_config()["n_m"] == [2, 4] and mctf.PruningSchedule.from_config(
        nm.get_config()) == nm


@pytest.mark.parametrize("args, kwargs, exc, match", [
    ((0, 10, 1, 0.5, 0.3), {}, ValueError, "final_sparsity"),
    ((0, 10, 1, -0.1, 0.3), {}, ValueError, "initial_sparsity"),
    ((0, 10, 1, 0.0, 1.0), {}, ValueError, "final_sparsity"),
    ((0, 10, 1, 0.0, 1.5), {}, ValueError, "final_sparsity"),
    ((0, 10, 1, 0.0, float("nan")), {}, ValueError, "final_sparsity"),
    ((5, 5, 1, 0.0, 0.5), {}, ValueError, "end_step"),
    ((5, 3, 1, 0.0, 0.5), {}, ValueError, "end_step"),
    ((-1, 3, 1, 0.0, 0.5), {}, ValueError, "begin_step"),
    ((0, 10, 0, 0.0, 0.5), {}, ValueError, "update_every"),
    ((0.5, 10, 1, 0.0, 0.5), {}, TypeError, "begin_step"),
    ((0, 10, 1, "0", 0.5), {}, TypeError, "initial_sparsity"),
    ((0, 10, 1, 0.0, 0.5), {"exponent": 0}, ValueError, "exponent"),
    ((0, 10, 1, 0.0, 0.5), {"score": "hessian"}, ValueError, "score"),
    ((0, 10, 1, 0.0, 0.5), {"score": None}, TypeError, "score"),
    ((0, 10, 1, 0.0, 0.5), {"pattern": "channel"}, ValueError, "pattern"),
    ((0, 10, 1, 0.0, 0.5), {"pattern": 2}, TypeError, "pattern"),
    ((0, 10, 1, 0.0, 0.5), {"pattern": "block"}, ValueError, "block_shape"),
    ((0, 10, 1, 0.0, 0.5), {"block_shape": (2, 2)}, ValueError, "block_shape"),
    ((0, 10, 1, 0.0, 0.5), {"pattern": "block", "block_shape": (0, 2)}, ValueError,
     "block_shape"),
    ((0, 10, 1, 0.0, 0.5), {"pattern": "block", "block_shape": 2}, TypeError, "block_shape"),
    ((0, 10, 1, 0.0, 0.5), {"pattern": "n:m"}, ValueError, "n_m"),
    ((0, 10, 1, 0.0, 0.5), {"n_m": (2, 4)}, ValueError, "n_m"),
    ((0, 10, 1, 0.0, 0.6), {"pattern": "n:m", "n_m": (2, 4)}, ValueError, "contradicts"),
    ((0, 10, 1, 0.0, 0.0), {"pattern": "n:m", "n_m": (4, 4)}, ValueError, "N must be < M"),
    ((0, 10, 1, 0.0, 0.5), {"pattern": "n:m", "n_m": (2, 4), "sparsity_map": {"a": 0.5}},
     ValueError, "sparsity_map"),
    ((0, 10, 1, 0.0, 0.5), {"sparsity_map": {"(": 0.5}}, ValueError, "regular expression"),
    ((0, 10, 1, 0.0, 0.5), {"sparsity_map": {"a": 1.0}}, ValueError, "sparsity_map"),
    ((0, 10, 1, 0.0, 0.5), {"sparsity_map": {3: 0.5}}, TypeError, "sparsity_map"),
    ((0, 10, 1, 0.0, 0.5), {"sparsity_map": [("a", 0.5)]}, TypeError, "sparsity_map"),
])
def test_schedule_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        mctf.PruningSchedule(*args, **kwargs)


def test_apply_bad_input():
    model = mlp()
    sch = mctf.PruningSchedule(0, 4, 1, 0.0, 0.5)
    with pytest.raises(TypeError, match="compressor=None"):
        mctf.apply_compression(model, PruningCompressor(0.5), schedule=sch)
    with pytest.raises(ValueError, match="block_shape=.*does not divide"):
        mctf.apply_compression(model, None, schedule=mctf.PruningSchedule(
            0, 4, 1, 0.0, 0.5, pattern="block", block_shape=(5, 1)))
    with pytest.raises(ValueError, match="M=8 .*does not divide"):
        mctf.apply_compression(model, None, schedule=mctf.PruningSchedule(
            0, 4, 1, 0.0, 0.75, pattern="n:m", n_m=(2, 8)))
    pruned = mctf.apply_compression(model, None, schedule=sch)
    with pytest.raises(ValueError, match="cannot be applied twice"):
        mctf.apply_compression(pruned, None, schedule=sch)
    with pytest.raises(TypeError, match="sparse"):
        mctf.strip_compression(pruned, sparse="yes")
    with pytest.raises(ValueError, match="target_sparsity"):
        mctf.PruningKernel(keras.layers.Dense(3), sch, target_sparsity=1.0)


# =============================================================================================
# 2. Masks: selection rules (numpy reference), schedule tracking in training
# =============================================================================================

def _units(shape, pattern, block):
    """(units, the most an update may prune) of a kernel of ``shape``."""
    m, n = shape
    if pattern == "block":
        total = (m // block[0]) * (n // block[1])
        return total, total - 1
    return m * n, (m * n * 3 // 4 if pattern == "n:m" else m * n - 1)


def _pruned_units(mask, pattern, block):
    if pattern == "block":
        return int(np.sum(~mask[::block[0], ::block[1]]))
    return int(np.sum(~mask))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=st.sampled_from([None, "block", "n:m"]), mb=st.integers(1, 4),
       nb=st.integers(1, 4), seed=st.integers(0, 2**31), frac_dead=st.floats(0, 0.6),
       frac=st.floats(0, 1), ties=st.booleans(), wide=st.booleans())
def test_select_mask_against_the_greedy_reference(pattern, mb, nb, seed, frac_dead, frac,
                                                  ties, wide):
    rng = np.random.default_rng(seed)
    # N:M groups of 4 (ranked by pairwise counts) or of 20 (M > 16: ranked by a sort)
    block, n_m = (2, 3), ((5, 20) if wide else (1, 4))
    shape = {"block": (2 * mb, 3 * nb),
             "n:m": (n_m[1] * (1 + mb // 3), nb + 1)}.get(pattern, (mb + 1, nb + 2))
    kw = {"block": {"block_shape": block}, "n:m": {"n_m": n_m}}.get(pattern, {})
    sch = mctf.PruningSchedule(0, 2, 1, 0.0, 0.75 if pattern == "n:m" else 0.5,
                               pattern=pattern, **kw)
    scores = rng.random(shape)
    if ties:  # few distinct values: the tie rule decides (integers, so that block sums are
        # exact whatever the order of summation: thirds summed in another order can differ in
        # the last bit and turn a tie into an order)
        scores = np.round(scores * 3)
    # a valid earlier mask (at most M - N pruned per N:M group) whose pruned units get the
    # HIGHEST scores: only the monotone rule keeps them pruned
    total, most = _units(shape, pattern, block)
    alive = greedy_keep(rng.random(shape), np.ones(shape, bool), int(frac_dead * most),
                        pattern, block, n_m)
    scores = np.where(alive, scores, scores.max() + 1.0)
    dead = _pruned_units(alive, pattern, block)
    n_prune = dead + int(frac * (most - dead))
    got = select_mask(tf.constant(scores), tf.constant(alive), tf.constant(n_prune, tf.int32),
                      sch).numpy()
    ref = greedy_keep(scores, alive, n_prune, pattern, block, n_m)
    assert_array_equal(got, ref)
    assert not np.any(got & ~alive), "a pruned unit revived"
    assert _pruned_units(got, pattern, block) == n_prune


@pytest.mark.parametrize("pattern", [None, "block", "n:m"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_training_follows_the_schedule(pattern, dtype):
    """Custom loop (tf.function for float32, eager for float64) with Adam at a large rate:
    masks change only at update steps, never revive, prune floor(s_t n_units) units (exactly
    the final count at end_step, and the N:M pattern there), pruned weights are exactly zero
    after every optimizer step and their gradients are zero."""
    kw = {"block": {"block_shape": (2, 2)}, "n:m": {"n_m": (1, 4)}}.get(pattern, {})
    final = 0.75 if pattern == "n:m" else 0.7
    sch = mctf.PruningSchedule(2, 11, 3, 0.1, final, pattern=pattern, **kw)
    model = mctf.apply_compression(mlp(dtype), None, schedule=sch)
    layers = pruned_layers(model)
    x, y = data(dtype)
    opt = keras.optimizers.Adam(0.05)
    step = make_step(model, opt, use_function=dtype == F32)
    before = [mask_of(layer) for layer in layers]
    assert all(np.all(m == 1) for m in before)
    for t in range(15):
        grads = step(x, y)
        for i, layer in enumerate(layers):
            mask = mask_of(layer)
            kernel = np.asarray(tf.convert_to_tensor(layer.kernel))
            g = np.asarray(tf.convert_to_tensor(grads[i]))
            if sch.is_update_step(t):
                n_units = mask.size // (4 if pattern == "block" else 1)
                count = units_pruned(mask, sch)
                want = np.floor(sch.sparsity_at(t) * n_units)
                if t >= sch.end_step:
                    assert count == want, (t, layer.name)
                else:
                    assert abs(count - want) <= 1, (t, layer.name, count, want)
            else:
                assert_array_equal(mask, before[i], err_msg=f"mask changed at step {t}")
            assert np.all(mask <= before[i]), f"a pruned weight revived at step {t}"
            assert np.all(kernel[mask == 0] == 0), f"a pruned weight moved at step {t}"
            assert np.all(g[mask == 0] == 0), f"a pruned weight has a gradient at step {t}"
            before[i] = mask
        assert all(int(tf.convert_to_tensor(layer.step)) == t + 1 for layer in layers)
    # Adam's first moments of pruned weights are not zero: without the mask constraint the
    # optimizer would have moved them (so the zero checks above can fail)
    for layer, mask in zip(layers, before):
        m1 = np.asarray(opt._momentums[opt._get_variable_index(layer.kernel)])
        assert np.count_nonzero(m1[mask == 0]) > 0
    for mask in before:
        assert units_pruned(mask, sch) == np.floor(
            final * mask.size // (4 if pattern == "block" else 1))
        if pattern == "n:m":
            kept = (mask != 0).T.reshape(-1, 4).sum(axis=1)
            assert np.all(kept == 1), "an N:M group does not keep exactly N"


def test_model_fit_and_a_custom_loop_prune_alike():
    """model.fit (batches of the fixed batch) and a tf.function loop: the same masks."""
    sch = mctf.PruningSchedule(1, 7, 2, 0.0, 0.6)
    x, y = data()
    a = mctf.apply_compression(mlp(seed=3), None, schedule=sch)
    a.compile(keras.optimizers.SGD(0.1), "mse")
    a.fit(np.tile(x, (8, 1)), np.tile(y, (8, 1)), batch_size=32, epochs=1, shuffle=False,
          verbose=0)
    b = mctf.apply_compression(mlp(seed=3), None, schedule=sch)
    step = make_step(b, keras.optimizers.SGD(0.1), use_function=True)
    for _ in range(8):
        step(x, y)
    for la, lb in zip(pruned_layers(a), pruned_layers(b)):
        assert_array_equal(mask_of(la), mask_of(lb))
        assert la.sparsity == lb.sparsity == np.floor(0.6 * la.kernel.shape[0]
                                                      * la.kernel.shape[1]) / np.prod(
            la.kernel.shape)
        assert_allclose(np.asarray(la.kernel), np.asarray(lb.kernel), rtol=1e-5, atol=1e-6)


# =============================================================================================
# 3. Scores
# =============================================================================================

@pytest.mark.parametrize("score", ["taylor", "fisher"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_gradient_scores_equal_numpy_from_recorded_gradients(score, dtype):
    sch = mctf.PruningSchedule(3, 9, 3, 0.3, 0.6, score=score)
    model = mctf.apply_compression(mlp(dtype, seed=4), None, schedule=sch)
    layers = pruned_layers(model)
    x, y = data(dtype, seed=5)
    step = make_step(model, keras.optimizers.SGD(0.05), use_function=dtype == F32)
    recorded, seen = [], {}
    for t in range(9):
        if sch.is_update_step(t):
            for i, layer in enumerate(layers):
                W = np.asarray(tf.convert_to_tensor(layer.kernel), F64) * mask_of(layer)
                G = np.asarray([g[i] for g in recorded], F64)
                ref = (np.abs(W) * np.abs(G).mean(axis=0) if score == "taylor"
                       else W ** 2 * (G ** 2).mean(axis=0))
                got = layer.pruning_scores()
                assert got.dtype == dtype
                assert_allclose(got, ref, rtol=TOL[dtype], atol=TOL[dtype] * 1e-3 * ref.max())
                assert weight(layer, "pruning_grad_count") == len(recorded)
                seen[layer.name] = got, mask_of(layer) > 0, W
            recorded = []
        grads = step(x, y)
        recorded.append([np.asarray(tf.convert_to_tensor(g)) for g in grads])
        if sch.is_update_step(t):
            for layer in layers:
                mask = mask_of(layer) > 0
                n_prune = int(np.sum(~mask))
                scores, alive, W = seen[layer.name]
                assert_array_equal(mask, greedy_keep(scores, alive, n_prune))
                if t == sch.begin_step:  # the native selection agrees, and differs from |W|
                    ref2 = mc.prune_mask(scores, (n_prune + 0.5) / mask.size)
                    assert_array_equal(mask, ref2)
                    assert n_prune > 0 and not np.array_equal(
                        mask, greedy_keep(np.abs(W), alive, n_prune))


def test_first_update_without_gradients_ranks_by_magnitude():
    sch = mctf.PruningSchedule(0, 4, 2, 0.5, 0.8, score="taylor")
    model = mctf.apply_compression(mlp(seed=6), None, schedule=sch)
    W0 = [np.asarray(tf.convert_to_tensor(layer.kernel)) for layer in pruned_layers(model)]
    x, y = data()
    model(x, training=True)  # step 0: an update with no gradient recorded
    for layer, W in zip(pruned_layers(model), W0):
        assert_array_equal(mask_of(layer) > 0, mc.prune_mask(W, 0.5))


def test_fisher_scores_on_an_embedding_in_model_fit():
    """An embedding's gradient is IndexedSlices: recorded densified (rows not looked up score
    zero), the table pruned to its target, and stripped to a plain Embedding."""
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((5,), dtype="int32"),
                              keras.layers.Embedding(40, 8, name="emb"),
                              keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(1, name="head")])
    sch = mctf.PruningSchedule(2, 6, 2, 0.0, 0.8, score="fisher", sparsity_map={"head": 0.5})
    pm = mctf.apply_compression(model, None, schedule=sch)
    ids = np.random.default_rng(8).integers(0, 30, (64, 5))  # rows 30-39 never looked up
    yy = np.random.default_rng(9).standard_normal((64, 1)).astype(np.float32)
    pm.compile(keras.optimizers.Adam(1e-2), "mse")
    pm.fit(ids, yy, batch_size=16, epochs=1, verbose=0, shuffle=False)  # steps 0-3
    emb = pm.layers[0]
    assert isinstance(emb, mctf.PruningKernel) and emb.kernel_attr == "embeddings"
    assert weight(emb, "pruning_grad_count") == 2  # steps 2 and 3: since the update at 2
    scores = emb.pruning_scores()
    assert np.all(scores[30:] == 0) and np.all(np.isfinite(scores)) and scores.max() > 0
    pm.fit(ids, yy, batch_size=16, epochs=1, verbose=0, shuffle=False)  # steps 4-7
    assert emb.sparsity == np.floor(0.8 * 320) / 320
    assert pm.layers[2].sparsity == 0.5
    assert np.all(mask_of(emb)[30:] == 0), "rows never looked up score zero: pruned first"
    stripped = mctf.strip_compression(pm)
    assert [type(layer) for layer in stripped.layers] == [
        keras.layers.Embedding, keras.layers.GlobalAveragePooling1D, keras.layers.Dense]
    assert_array_equal(stripped.predict(ids, verbose=0), pm.predict(ids, verbose=0))


# =============================================================================================
# 4. The sparsity map
# =============================================================================================

def test_sparsity_map_gives_per_layer_targets_and_warns_for_unmatched_keys():
    model = keras.Sequential([keras.Input((16,)),
                              keras.layers.Dense(12, name="enc1"),
                              keras.layers.Dense(12, name="enc2"),
                              keras.layers.Dense(8, name="head")])
    sch = mctf.PruningSchedule(0, 3, 1, 0.0, 0.5,
                               sparsity_map={r"enc1$": 0.9, "enc": 0.25, "decoder": 0.3})
    with pytest.warns(UserWarning, match=re.escape("sparsity_map key 'decoder' matches no")):
        pm = mctf.apply_compression(model, None, schedule=sch)
    assert [layer.target_sparsity for layer in pm.layers] == [0.9, 0.25, 0.5]
    x, _ = data(n=4)
    for _ in range(4):
        pm(x, training=True)
    for layer, target in zip(pm.layers, [0.9, 0.25, 0.5]):
        size = np.prod(layer.kernel.shape)
        assert layer.sparsity == np.floor(target * size) / size
    # a map that matches every layer: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mctf.apply_compression(model, None, schedule=mctf.PruningSchedule(
            0, 3, 1, 0.0, 0.5, sparsity_map={"enc": 0.2}))
    # filter_fn narrows the layers the keys are matched against
    with pytest.warns(UserWarning, match="'enc'"):
        mctf.apply_compression(model, None, schedule=mctf.PruningSchedule(
            0, 3, 1, 0.0, 0.5, sparsity_map={"enc": 0.2}),
            filter_fn=lambda layer: layer.name == "head")


# =============================================================================================
# 5. Saving, stripping, other layers, a bare variable
# =============================================================================================

def test_keras_round_trip_mid_training(tmp_path):
    sch = mctf.PruningSchedule(1, 9, 2, 0.0, 0.7, score="taylor")
    x, y = data(n=64)
    pm = mctf.apply_compression(mlp(seed=10), None, schedule=sch)
    pm.compile(keras.optimizers.Adam(1e-2), "mse")
    pm.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)  # steps 0-3
    path = tmp_path / "mid.keras"
    pm.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(pruned_layers(pm), pruned_layers(loaded)):
        assert b.schedule == sch and b.target_sparsity == a.target_sparsity
        assert [w.name for w in a.weights] == [w.name for w in b.weights]
        for wa, wb in zip(a.weights, b.weights):
            assert_array_equal(np.asarray(tf.convert_to_tensor(wa)),
                               np.asarray(tf.convert_to_tensor(wb)), err_msg=wa.name)
        assert int(tf.convert_to_tensor(b.step)) == 4 and 0 < b.sparsity < 0.7
    assert_array_equal(loaded.predict(x, verbose=0), pm.predict(x, verbose=0))
    for model in (pm, loaded):  # the optimizer's state came along: the same continuation
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(pruned_layers(pm), pruned_layers(loaded)):
        assert_array_equal(mask_of(a), mask_of(b))
        assert_allclose(np.asarray(a.kernel), np.asarray(b.kernel), rtol=1e-6, atol=1e-7)
        size = np.prod(a.kernel.shape)
        assert b.sparsity == np.floor(0.7 * size) / size


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_strip_gives_plain_layers_with_the_same_outputs(dtype):
    sch = mctf.PruningSchedule(0, 2, 1, 0.2, 0.6, pattern="block", block_shape=(2, 2))
    pm = mctf.apply_compression(mlp(dtype, seed=11), None, schedule=sch)
    x, _ = data(dtype)
    for _ in range(3):
        pm(x, training=True)
    stripped = mctf.strip_compression(pm)
    assert [type(layer) for layer in stripped.layers] == [keras.layers.Dense] * 2
    h = x.astype(F64)
    for layer, orig in zip(stripped.layers, pruned_layers(pm)):
        K = np.asarray(tf.convert_to_tensor(layer.kernel))
        assert_array_equal(K, orig.pruned_kernel())
        assert np.sum(K == 0) == np.floor(0.6 * K.size / 4) * 4
        assert layer.kernel.constraint is None  # a plain layer again
        h = h @ K.astype(F64) + np.asarray(layer.bias, F64)
        if layer.name == "hidden":
            h = np.tanh(h)
    out = stripped(x).numpy()  # (predict casts float64 inputs to float32)
    assert_array_equal(out, pm(x).numpy())
    assert_allclose(out, h, rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10 * np.abs(h).max())
    # CSR: the kept entries, bytes counted by hand
    sparse = mctf.strip_compression(pm, sparse=True)
    assert [type(layer) for layer in sparse.layers] == [mctf.FactoredDense] * 2
    assert_allclose(sparse(x).numpy(), out, rtol=TOL[dtype] * 10,
                    atol=TOL[dtype] * 10 * np.abs(out).max())
    want = 0
    for orig in pruned_layers(pm):
        f = orig.factorization()
        assert isinstance(f, Pruned)
        assert_array_equal(f.to_dense(), orig.pruned_kernel())
        m, n = orig.kernel.shape
        want += (m + 1) * 4 + f.nnz * (1 + dtype.itemsize)  # int32 offsets, uint8 columns
    dense = sum(np.prod(layer.kernel.shape) * dtype.itemsize for layer in pruned_layers(pm))
    assert mctf.compressed_nbytes(sparse) == mctf.compressed_nbytes(pm) == (want, dense)


def test_other_layers_are_wrapped_and_stripped():
    """An EinsumDense (what CompressedKernel wraps) and a Dense subclass, chosen by filter_fn."""

    class MyDense(keras.layers.Dense):
        pass

    keras.utils.set_random_seed(12)
    inp = keras.Input((16,))
    h = keras.layers.EinsumDense("ab,bc->ac", output_shape=12, bias_axes="c", name="ein")(inp)
    out = MyDense(8, name="mine")(h)
    model = keras.Model(inp, out)
    sch = mctf.PruningSchedule(0, 2, 1, 0.0, 0.5, score="fisher")
    pm = mctf.apply_compression(model, None, schedule=sch,
                                filter_fn=lambda layer: layer.name in ("ein", "mine"))
    layers = pruned_layers(pm)
    assert [type(layer.layer) for layer in layers] == [keras.layers.EinsumDense, MyDense]
    x, y = data()
    step = make_step(pm, keras.optimizers.SGD(0.1), use_function=True)
    for _ in range(3):
        step(x, y)
    assert [layer.sparsity for layer in layers] == [0.5, 0.5]
    stripped = mctf.strip_compression(pm, sparse=False)
    assert [type(layer) for layer in stripped.layers[1:]] == [keras.layers.EinsumDense, MyDense]
    assert_array_equal(stripped.predict(x, verbose=0), pm.predict(x, verbose=0))


def test_pruning_matrix_in_a_custom_loop():
    rng = np.random.default_rng(13)
    var = tf.Variable(rng.standard_normal((12, 8)))
    sch = mctf.PruningSchedule(1, 5, 2, 0.0, 0.75, pattern="n:m", n_m=(1, 4))
    pmat = mctf.apply_compression(var, None, schedule=sch)
    assert isinstance(pmat, mctf.PruningMatrix)
    x = tf.constant(rng.standard_normal((6, 12)))
    opt = keras.optimizers.SGD(0.1, momentum=0.9)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(pmat.matmul(x)))
        (g,) = tape.gradient(loss, pmat.trainable_variables)
        opt.apply_gradients([(g, var)])
        return g

    for t in range(7):
        g = step().numpy()
        mask = mask_of(pmat)
        assert np.all(g[mask == 0] == 0)
    kept = (mask != 0).T.reshape(-1, 4).sum(axis=1)
    assert np.all(kept == 1)
    assert not np.all(var.numpy()[mask == 0] == 0)  # momentum moved them: no constraint here
    assert_array_equal(pmat.value().numpy(), var.numpy() * mask)
    pmat.apply_mask()
    assert np.all(var.numpy()[mask == 0] == 0)
    f = mctf.strip_compression(pmat)
    assert isinstance(f, Pruned) and f.nnz == 24
    assert_array_equal(f.to_dense(), var.numpy())


def test_xla_compiled_fit_prunes_as_the_graph_does():
    """Every op of the update has an XLA kernel and static shapes: jit_compile=True (Keras'
    "auto" on an accelerator) gives the same masks."""
    sch = mctf.PruningSchedule(0, 4, 2, 0.2, 0.5, score="fisher", pattern="n:m", n_m=(2, 4))
    x, y = data(n=96)
    masks = []
    for jit in (False, True):
        pm = mctf.apply_compression(mlp(seed=14), None, schedule=sch)
        pm.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=jit)
        pm.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        assert pm.jit_compile is jit
        masks.append([mask_of(layer) for layer in pruned_layers(pm)])
    for a, b in zip(*masks):
        assert_array_equal(a, b)
        assert np.mean(a == 0) == 0.5


def test_no_warning_from_the_library():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sch = mctf.PruningSchedule(0, 2, 1, 0.0, 0.5, score="taylor")
        pm = mctf.apply_compression(mlp(), None, schedule=sch)
        x, _ = data()
        for _ in range(3):
            pm(x, training=True)
        mctf.strip_compression(pm)
        mctf.strip_compression(pm, sparse=True)
        mctf.compressed_nbytes(pm)
        pm.layers[0].pruning_scores()


def test_a_convolution_is_refused_clearly():
    """A PruningSchedule masks 2-D kernels: a selected convolution gets a TypeError naming it."""
    conv = keras.layers.Conv2D(4, 3, name="conv_p")
    conv.build((None, 8, 8, 2))
    sch = mctf.PruningSchedule(0, 4, 1, 0.0, 0.5)
    with pytest.raises(TypeError, match="conv_p.*not pruned by a PruningSchedule"):
        mctf.apply_compression(conv, None, schedule=sch)
