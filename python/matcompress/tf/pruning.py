"""Gradual pruning during training: :class:`PruningSchedule` (the polynomial sparsity ramp of
Zhu & Gupta 2017) and the layers that follow it, :class:`PruningKernel` (any Keras layer with a
2-D kernel, Dense and Embedding included) and :class:`PruningMatrix` (a bare ``tf.Variable``).

A pruned layer holds its kernel W, a non-trainable mask of W's shape and a step counter; it
computes with ``W * mask``. In the training calls that fall on an update step the mask is
recomputed inside the graph (a ``tf.cond`` on the counter), so ``model.fit``, a ``tf.function``
and an eager custom loop all prune the same way and no callback is needed. Gradient-based
scores (first-order Taylor, diagonal Fisher) take the loss gradient of ``W * mask`` through a
custom gradient that adds it to non-trainable accumulators in the backward pass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf

from .._validation import check_float, check_int
from .layers import _PACKAGE, _assign_local, _KernelWrapper
from .schedule import _Configured

__all__ = ["PruningSchedule", "PruningKernel", "PruningMatrix"]

#: Scores of :class:`PruningSchedule`.
SCORES = ("magnitude", "taylor", "fisher")
#: Patterns of :class:`PruningSchedule` (None: unstructured).
PATTERNS = (None, "block", "n:m")


def _sparsity(value, name):
    value = check_float(value, name)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1); got {value}")
    return value


def _int_pair(value, name, what):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"{name} must be a pair of integers ({what}); got {value!r}")
    return tuple(check_int(v, name, min_value=1) for v in value)


class PruningSchedule(_Configured):
    """Gradual pruning on the polynomial ramp of Zhu & Gupta (2017), for
    :func:`matcompress.tf.apply_compression` (in place of a :class:`CompressionSchedule`).

    Steps are counted per layer, as for :class:`CompressionSchedule`: step t is the layer's t-th
    call with ``training=True``, from 0. The target sparsity at step t is

    ``s_t = s_f + (s_i - s_f) * (1 - (t - begin_step) / (end_step - begin_step)) ** exponent``

    for ``begin_step <= t <= end_step`` (``s_i`` = ``initial_sparsity``, ``s_f`` = the layer's
    final sparsity; exactly ``s_i`` at ``begin_step`` and ``s_f`` at ``end_step``), 0 before
    ``begin_step`` and ``s_f`` after ``end_step``. The mask is
    recomputed in the update steps ``begin_step + k * update_every`` up to ``end_step``, and at
    ``end_step`` itself, and held in between and after ``end_step``. An update at step t prunes
    ``floor(s_t * n_units)`` of the layer's ``n_units`` units (entries, or blocks), before the
    step's product: from step ``end_step`` on each layer has exactly its final sparsity.

    Pruning is monotone: a pruned weight stays pruned (the units pruned before an update are
    pruned first at it, and the new mask is intersected with the old). Pruned weights are held
    at exactly zero: the update zeroes them in the kernel, their gradients are masked, and the
    kernel's constraint multiplies it by the mask after every Keras optimizer step (so momentum
    or weight decay cannot move them).

    Parameters
    ----------
    begin_step : int >= 0
        The first update (it prunes ``initial_sparsity``).
    end_step : int > begin_step
        The last update (it prunes the final sparsity).
    update_every : int >= 1
        Steps between updates.
    initial_sparsity : float in [0, 1)
        ``s_i``. A layer whose final sparsity is lower ramps from its final sparsity (flat).
    final_sparsity : float in [initial_sparsity, 1)
        ``s_f`` of every layer that ``sparsity_map`` does not name.
    exponent : float > 0, default=3
        The ramp's power (3 in Zhu & Gupta; 1 is linear): pruning is fast early, when many
        weights are redundant, and slow near the end.
    score : {"magnitude", "taylor", "fisher"}, default="magnitude"
        What ranks the weights at an update (blocks: the sum over the block).

        - ``"magnitude"``: ``|w|``.
        - ``"taylor"``: ``|w| * mean(|g|)``, first-order Taylor (Molchanov et al. 2017): the
          loss change ``|w g|`` of removing the weight, averaged over each backward pass
          through the layer since the last update (``g`` the gradient of ``W * mask``; ``w`` at
          its current value). The absolute value is taken per pass: the mean gradient of a
          converged weight is near zero and noisy (``|w * mean(g)|`` kept 74.7 % accuracy at 97 %
          sparsity where this keeps 89.0 %, docs/decisions.md).
        - ``"fisher"``: ``w**2 * mean(g**2)``, the diagonal empirical Fisher estimate of the
          loss increase (second-order, OBD with the Fisher for the Hessian), the mean over the
          same gradients.

        An update with no gradient recorded since the previous one (the first update at step 0,
        or training calls without a gradient) ranks by magnitude.
    pattern : {None, "block", "n:m"}, default=None
        None: single weights. ``"block"``: ``block_shape`` blocks of W, kept or pruned whole.
        ``"n:m"``: every group of M consecutive weights along W's input axis (axis 0: the rows
        of ``x @ W`` that one output sums over, the layout of sparse tensor cores) keeps at
        least N, and exactly N from ``end_step`` on.
    block_shape : (int, int), optional
        ``(rows, columns)`` of a block; required with ``pattern="block"``, refused otherwise. It
        must divide each pruned kernel's shape.
    n_m : (int, int), optional
        ``(N, M)``, ``1 <= N < M``; required with ``pattern="n:m"``, refused otherwise. M must
        divide each pruned kernel's number of rows, and ``final_sparsity`` must be ``1 - N / M``
        (to within 1e-9). During the ramp the units pruned are the lowest-scoring ones among
        those whose group still keeps more than N (a capped global selection), so the sparsity
        follows the ramp exactly and the N:M pattern holds at ``end_step``.
    sparsity_map : dict {str: float}, optional
        Per-layer final sparsity (group pruning): each key is a regular expression searched
        (``re.search``) in the layer names; a layer takes the value of the first key that
        matches it (in the dict's order), else ``final_sparsity``. A key that matches no pruned
        layer gives a warning in :func:`apply_compression`. Not with ``pattern="n:m"`` (whose
        sparsity is fixed by N and M).

    Notes
    -----
    M. Zhu and S. Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
    compression", arXiv:1710.01878, 2017. P. Molchanov, S. Tyree, T. Karras, T. Aila and
    J. Kautz, "Pruning Convolutional Neural Networks for Resource Efficient Inference", ICLR
    2017. Y. LeCun, J. Denker and S. Solla, "Optimal Brain Damage", NIPS 1990.

    Examples
    --------
    >>> import matcompress.tf as mctf
    >>> s = mctf.PruningSchedule(0, 100, 10, 0.0, 0.9)
    >>> [round(s.sparsity_at(t), 4) for t in (0, 10, 50, 100, 150)]
    [0.0, 0.2439, 0.7875, 0.9, 0.9]
    """

    def __init__(self, begin_step, end_step, update_every, initial_sparsity, final_sparsity, *,
                 exponent=3, score="magnitude", pattern=None, block_shape=None, n_m=None,
                 sparsity_map=None):
        self.begin_step = check_int(begin_step, "begin_step", min_value=0)
        self.end_step = check_int(end_step, "end_step", min_value=0)
        if self.end_step <= self.begin_step:
            raise ValueError(f"end_step={self.end_step} must come after begin_step="
                             f"{self.begin_step}")
        self.update_every = check_int(update_every, "update_every", min_value=1)
        self.initial_sparsity = _sparsity(initial_sparsity, "initial_sparsity")
        self.final_sparsity = _sparsity(final_sparsity, "final_sparsity")
        if self.final_sparsity < self.initial_sparsity:
            raise ValueError(f"final_sparsity={self.final_sparsity} must be >= "
                             f"initial_sparsity={self.initial_sparsity}: pruning only grows")
        self.exponent = check_float(exponent, "exponent")
        if not self.exponent > 0:
            raise ValueError(f"exponent must be > 0; got {exponent}")
        if not isinstance(score, str):
            raise TypeError(f"score must be one of {SCORES}; got {score!r}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}; got {score!r}")
        self.score = score
        if pattern is not None and not isinstance(pattern, str):
            raise TypeError(f"pattern must be one of {PATTERNS}; got {pattern!r}")
        if pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {PATTERNS}; got {pattern!r}")
        self.pattern = pattern
        self.block_shape = self.n_m = None
        if pattern == "block":
            if block_shape is None:
                raise ValueError("pattern='block' needs block_shape=(rows, columns)")
            self.block_shape = _int_pair(block_shape, "block_shape", "rows, columns of a block")
        elif block_shape is not None:
            raise ValueError(f"block_shape={block_shape!r} is given but pattern={pattern!r}: "
                             "pass pattern='block'")
        if pattern == "n:m":
            if n_m is None:
                raise ValueError("pattern='n:m' needs n_m=(N, M)")
            n, m = _int_pair(n_m, "n_m", "N kept of every M")
            if n >= m:
                raise ValueError(f"n_m=({n}, {m}): N must be < M")
            self.n_m = (n, m)
            if not math.isclose(self.final_sparsity, 1 - n / m, rel_tol=0.0, abs_tol=1e-9):
                raise ValueError(f"final_sparsity={self.final_sparsity} contradicts n_m=({n}, "
                                 f"{m}), which prunes 1 - N/M = {1 - n / m:.6g} of the weights")
            if sparsity_map:
                raise ValueError("sparsity_map cannot be combined with pattern='n:m' (N and M "
                                 "fix the sparsity); choose the layers with filter_fn")
        elif n_m is not None:
            raise ValueError(f"n_m={n_m!r} is given but pattern={pattern!r}: pass "
                             "pattern='n:m'")
        self.sparsity_map = self._check_map(sparsity_map)

    @staticmethod
    def _check_map(sparsity_map):
        if sparsity_map is None:
            return {}
        if not isinstance(sparsity_map, Mapping):
            raise TypeError("sparsity_map must be a dict {layer-name regex: final sparsity}; "
                            f"got {type(sparsity_map).__name__}")
        out = {}
        for key, value in sparsity_map.items():
            if not isinstance(key, str):
                raise TypeError(f"sparsity_map keys must be regular expressions (str); got "
                                f"{key!r}")
            try:
                re.compile(key)
            except re.error as exc:
                raise ValueError(f"sparsity_map key {key!r} is not a valid regular expression: "
                                 f"{exc}") from None
            out[key] = _sparsity(value, f"sparsity_map[{key!r}]")
        return out

    # ---- the ramp --------------------------------------------------------------------------

    def target_for(self, name):
        """The final sparsity of the layer called ``name``: the value of the first
        ``sparsity_map`` key found in it, else ``final_sparsity``."""
        for key, value in self.sparsity_map.items():
            if re.search(key, name):
                return value
        return self.final_sparsity

    def unmatched(self, names):
        """The ``sparsity_map`` keys found in none of ``names``."""
        names = list(names)
        return [key for key in self.sparsity_map if not any(re.search(key, n) for n in names)]

    def _ends(self, target):
        final = self.final_sparsity if target is None else _sparsity(target, "target")
        return min(self.initial_sparsity, final), final

    def sparsity_at(self, t, target=None):
        """The ramp's sparsity at step ``t`` (a Python int), for a layer whose final sparsity is
        ``target`` (default: ``final_sparsity``)."""
        t = check_int(t, "t", min_value=0)
        initial, final = self._ends(target)
        if t < self.begin_step:
            return 0.0
        if t == self.begin_step:
            return initial  # exactly (the formula may round below it)
        if t >= self.end_step:
            return final
        frac = (t - self.begin_step) / (self.end_step - self.begin_step)
        return final + (initial - final) * (1.0 - frac) ** self.exponent

    def sparsity(self, t, target=None):
        """:meth:`sparsity_at` for an int64 tensor ``t`` (a float64 tensor)."""
        initial, final = self._ends(target)
        t = tf.cast(tf.convert_to_tensor(t, tf.int64), tf.float64)
        b, e = float(self.begin_step), float(self.end_step)
        frac = tf.clip_by_value((t - b) / (e - b), 0.0, 1.0)
        value = final + (initial - final) * tf.pow(1.0 - frac, tf.constant(self.exponent,
                                                                           tf.float64))
        value = tf.where(tf.equal(t, b), tf.constant(initial, tf.float64), value)
        value = tf.where(t >= e, tf.constant(final, tf.float64), value)
        return tf.where(t < b, tf.constant(0.0, tf.float64), value)

    def is_update_step(self, t):
        """Whether the mask is recomputed at step ``t`` (a Python int)."""
        t = check_int(t, "t", min_value=0)
        return (self.begin_step <= t <= self.end_step
                and ((t - self.begin_step) % self.update_every == 0 or t == self.end_step))

    def update(self, t):
        """:meth:`is_update_step` for an int64 tensor ``t`` (a bool tensor)."""
        t = tf.convert_to_tensor(t, tf.int64)
        turn = tf.equal(tf.math.floormod(t - self.begin_step, self.update_every), 0)
        return (t >= self.begin_step) & (t <= self.end_step) & (turn | tf.equal(t, self.end_step))

    # ---- configuration ---------------------------------------------------------------------

    def get_config(self):
        return {"begin_step": self.begin_step, "end_step": self.end_step,
                "update_every": self.update_every, "initial_sparsity": self.initial_sparsity,
                "final_sparsity": self.final_sparsity, "exponent": self.exponent,
                "score": self.score, "pattern": self.pattern,
                "block_shape": None if self.block_shape is None else list(self.block_shape),
                "n_m": None if self.n_m is None else list(self.n_m),
                "sparsity_map": dict(self.sparsity_map) or None}


def is_pruning_schedule(schedule):
    """A PruningSchedule, or a dict of its configuration."""
    return isinstance(schedule, PruningSchedule) or (
        isinstance(schedule, dict) and "final_sparsity" in schedule)


def check_pruning_schedule(schedule):
    if isinstance(schedule, dict):
        return PruningSchedule.from_config(schedule)
    if not isinstance(schedule, PruningSchedule):
        raise TypeError(f"schedule must be a PruningSchedule; got {type(schedule).__name__}")
    return schedule


def check_pattern_fits(schedule, shape, what):
    """Raise ValueError naming ``what`` when the schedule's pattern does not tile ``shape``."""
    m, n = shape
    if schedule.pattern == "block":
        br, bc = schedule.block_shape
        if m % br or n % bc:
            raise ValueError(f"{what}: block_shape={schedule.block_shape} does not divide its "
                             f"kernel's shape {(m, n)}")
    elif schedule.pattern == "n:m":
        group = schedule.n_m[1]
        if m % group:
            raise ValueError(f"{what}: M={group} of n_m={schedule.n_m} does not divide its "
                             f"kernel's {m} rows (N:M groups run along the input axis)")


# ---- the masks -------------------------------------------------------------------------------

def _keep_order(flat):
    """(order, rank) of a 1-D tensor in keep order: highest first, ties to the lower index (as
    :func:`matcompress.prune`); ``rank[i]`` is entry i's place in ``order``."""
    order = tf.argsort(flat, direction="DESCENDING", stable=True)
    return order, tf.math.invert_permutation(order)


def _group_ranks(groups):
    """Each entry's place in the keep order of its row of ``groups`` (G, M)."""
    width = int(groups.shape[1])
    if width > 16:
        order = tf.argsort(groups, axis=1, direction="DESCENDING", stable=True)
        return tf.argsort(order, axis=1, stable=True)
    # M <= 16: count the entries ahead of each one (higher, or equal at a lower index)
    a, b = groups[:, :, None], groups[:, None, :]
    idx = tf.range(width)
    ahead = (b > a) | ((b == a) & (idx[None, None, :] < idx[None, :, None]))
    return tf.reduce_sum(tf.cast(ahead, tf.int32), axis=2)


def select_mask(scores, alive, n_prune, schedule):
    """The new keep mask (bool, W's shape) from ``scores`` (non-negative, W's shape), the
    current keep mask ``alive`` and the number of units to prune (an int32 tensor):
    unstructured, blocks (scored by their sum) or N:M along axis 0 (``n_prune`` capped at the
    pattern's maximum). The units ``alive`` prunes already are pruned first. One sort of the
    scores; static shapes throughout (XLA compiles it)."""
    m, n = (int(d) for d in scores.shape)
    neg = tf.constant(-1, scores.dtype)
    if schedule.pattern == "n:m":
        keep_n, group = schedule.n_m
        # (columns, groups, M) in column-major order of W: a group's rows are consecutive, so
        # the flat index order within a group is its row order (one tie rule for both ranks).
        s = tf.reshape(tf.where(tf.transpose(alive), tf.transpose(scores), neg), [-1])
        eligible = tf.reshape(_group_ranks(tf.reshape(s, [-1, group])) >= keep_n, [-1])
        order, rank = _keep_order(s)
        cap = n * (m // group) * (group - keep_n)
        n_prune = tf.minimum(n_prune, cap)
        # Among the entries outside the N best of their group, prune the n_prune that come
        # last in the keep order: counted from the end of that order.
        eligible_sorted = tf.gather(eligible, order)
        from_end = tf.cumsum(tf.cast(eligible_sorted, tf.int32), reverse=True)
        pruned = tf.gather(eligible_sorted & (from_end <= n_prune), rank)
        keep = tf.logical_not(tf.reshape(pruned, [n, m]))
        return tf.transpose(keep) & alive
    if schedule.pattern == "block":
        br, bc = schedule.block_shape
        s = tf.reduce_sum(tf.reshape(scores, [m // br, br, n // bc, bc]), axis=[1, 3])
        a = tf.reduce_all(tf.reshape(alive, [m // br, br, n // bc, bc]), axis=[1, 3])
    else:
        s, a = scores, alive
    flat = tf.reshape(tf.where(a, s, neg), [-1])
    n_units = int(flat.shape[0])
    _, rank = _keep_order(flat)
    keep = tf.reshape(rank < n_units - n_prune, a.shape)
    if schedule.pattern == "block":
        keep = tf.repeat(tf.repeat(keep, br, axis=0), bc, axis=1)
    return keep & alive


def n_units(schedule, shape):
    """The number of units (entries or blocks) a kernel of ``shape`` is pruned in."""
    m, n = shape
    if schedule.pattern == "block":
        br, bc = schedule.block_shape
        return (m // br) * (n // bc)
    return m * n


class _Core:
    """The schedule's arithmetic over a kernel variable, its mask, a step counter and the
    gradient accumulators (held by the layer or the PruningMatrix that owns them)."""

    def __init__(self, schedule, target, kernel, mask, step, grad_sum=None, grad_sq_sum=None,
                 grad_count=None):
        self.schedule, self.target = schedule, target
        self.kernel, self.mask, self.step = kernel, mask, step
        self.grad_sum, self.grad_sq_sum, self.grad_count = grad_sum, grad_sq_sum, grad_count
        self.shape = tuple(int(d) for d in kernel.shape)
        self.n_units = n_units(schedule, self.shape)

    @property
    def records_gradients(self):
        return self.schedule.score != "magnitude"

    def mask_value(self, dtype=None):
        mask = tf.convert_to_tensor(self.mask)
        return mask if dtype is None else tf.cast(mask, dtype)

    def scores(self):
        """The scores of the weights now (W * mask and the gradients recorded since the last
        update; magnitude when none was)."""
        w = tf.convert_to_tensor(self.kernel)
        w = w * self.mask_value(w.dtype)
        magnitude = tf.abs(w)
        if not self.records_gradients:
            return magnitude
        count = tf.convert_to_tensor(self.grad_count)
        denom = tf.cast(tf.maximum(count, 1), w.dtype)
        if self.schedule.score == "taylor":
            score = tf.abs(w) * (tf.convert_to_tensor(self.grad_sum) / denom)
        else:
            score = tf.square(w) * (tf.convert_to_tensor(self.grad_sq_sum) / denom)
        return tf.where(count > 0, score, magnitude)

    def n_prune(self, t):
        """floor(s_t * n_units) as an int32 tensor; with N:M, from end_step the pattern's own
        count (``1 - N / M`` times n_units may round below it)."""
        s = self.schedule.sparsity(t, self.target)
        count = tf.cast(tf.floor(s * float(self.n_units)), tf.int32)
        if self.schedule.pattern == "n:m":
            keep_n, group = self.schedule.n_m
            cap = self.n_units // group * (group - keep_n)
            count = tf.where(tf.convert_to_tensor(t, tf.int64) >= self.schedule.end_step,
                             tf.constant(cap, tf.int32), count)
        return count

    def _update(self, t):
        alive = self.mask_value() > 0
        keep = select_mask(tf.stop_gradient(self.scores()), alive, self.n_prune(t),
                           self.schedule)
        dtype = self.mask.dtype
        _assign_local(self.mask, tf.cast(keep, dtype))
        w = tf.convert_to_tensor(self.kernel)
        _assign_local(self.kernel, w * tf.cast(keep, w.dtype))
        if self.records_gradients:
            for var in (self.grad_sum, self.grad_sq_sum):
                if var is not None:
                    _assign_local(var, tf.zeros_like(var))
            _assign_local(self.grad_count, tf.zeros_like(self.grad_count))
        return tf.constant(True)

    def advance(self):
        """One training step: the mask recomputed when the step is an update step, then the
        counter moved on."""
        t = tf.convert_to_tensor(self.step)
        tf.cond(self.schedule.update(t), lambda: self._update(t), lambda: tf.constant(False))
        self.step.assign_add(1)

    def masked(self, training):
        """``W * mask``, a training step when ``training`` (recording the gradient of the
        product for the gradient-based scores)."""
        if training:
            self.advance()
        w = tf.convert_to_tensor(self.kernel)
        mask = self.mask_value(w.dtype)
        if training and self.records_gradients:
            return self._recording_product(w, mask)
        return w * mask

    def _record(self, g):
        if self.grad_sum is not None:  # Taylor: the sum of |g|
            self.grad_sum.assign_add(tf.cast(tf.abs(g), self.grad_sum.dtype))
        if self.grad_sq_sum is not None:
            self.grad_sq_sum.assign_add(tf.cast(tf.square(g), self.grad_sq_sum.dtype))
        self.grad_count.assign_add(1)

    def _recording_product(self, w, mask):
        core = self

        @tf.custom_gradient
        def product(w, mask):
            def grad(dy):
                dy = tf.convert_to_tensor(dy)  # an embedding's gather sends IndexedSlices
                core._record(dy)
                return dy * mask, None

            return w * mask, grad

        return product(w, mask)


def _check_target(target, schedule):
    if target is None:
        return schedule.final_sparsity
    target = _sparsity(target, "target_sparsity")
    if schedule.pattern == "n:m" and not math.isclose(target, schedule.final_sparsity,
                                                      rel_tol=0.0, abs_tol=1e-9):
        raise ValueError(f"target_sparsity={target} contradicts n_m={schedule.n_m}")
    return target


class _MaskConstraint:
    """The kernel's constraint while it is pruned: the layer's own constraint (if any), then the
    mask, applied by Keras optimizers after every update."""

    def __init__(self, mask, inner=None):
        self.mask, self.inner = mask, inner

    def __call__(self, w):
        if self.inner is not None:
            w = self.inner(w)
        return w * tf.cast(tf.convert_to_tensor(self.mask), w.dtype)


def _csr(dense, keep):
    """A :class:`matcompress.factors.Pruned` holding the entries of ``dense`` where ``keep``."""
    from ..factors import Pruned, index_dtype

    m, n = dense.shape
    rows, cols = np.nonzero(keep)
    indptr = np.zeros(m + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=m), out=indptr[1:])
    if indptr[-1] < 2**31:
        indptr = indptr.astype(np.int32)
    return Pruned(indptr, cols.astype(index_dtype(n)), n, values=dense[rows, cols])


def _add_state(make, shape, dtype, schedule):
    """(mask, step, grad_sum, grad_sq_sum, grad_count), each made by ``make(name, shape, dtype,
    initializer)`` (None where the score needs none)."""
    mask = make("pruning_mask", shape, dtype, "ones")
    step = make("pruning_step", (), "int64", "zeros")
    grad_sum = grad_sq_sum = grad_count = None
    if schedule.score == "taylor":
        grad_sum = make("pruning_grad_sum", shape, dtype, "zeros")
    if schedule.score == "fisher":
        grad_sq_sum = make("pruning_grad_sq_sum", shape, dtype, "zeros")
    if schedule.score != "magnitude":
        grad_count = make("pruning_grad_count", (), "int64", "zeros")
    return mask, step, grad_sum, grad_sq_sum, grad_count


class _PruningFace:
    """The read-outs common to PruningKernel and PruningMatrix (after build)."""

    def pruned_kernel(self):
        """``W * mask`` as a numpy array."""
        return (tf.convert_to_tensor(self._core.kernel)
                * self._core.mask_value(self._core.kernel.dtype)).numpy()

    def factorization(self):
        """The kept weights in CSR form, a :class:`matcompress.factors.Pruned` (its ``nbytes``
        counts the row offsets, column indices and values)."""
        return _csr(self.pruned_kernel(), self._core.mask_value().numpy() != 0)

    @property
    def sparsity(self):
        """The fraction of W's entries the mask prunes now."""
        mask = self._core.mask_value().numpy()
        return float(np.mean(mask == 0))

    def pruning_scores(self):
        """The scores an update would rank the weights by now (numpy, W's shape)."""
        return self._core.scores().numpy()


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PruningKernel(_PruningFace, _KernelWrapper):
    """Any layer holding a 2-D kernel (``kernel_attr``: "kernel", "embeddings", or a dotted path
    such as "cell.kernel"), pruned on a :class:`PruningSchedule`: the layer's own ``call`` runs
    with its kernel replaced by ``W * mask``. :func:`matcompress.tf.apply_compression` with a
    PruningSchedule wraps the selected layers (Dense and Embedding too) in it.

    The wrapper holds the mask ``pruning_mask`` (non-trainable, W's shape and dtype, ones at
    first), the step counter ``step`` (each call with ``training=True`` is a step) and, for the
    gradient-based scores, the sums of the gradients recorded since the last update
    (``pruning_grad_sum`` for Taylor, ``pruning_grad_sq_sum`` of their squares for Fisher) and
    their count ``pruning_grad_count``. All are saved with the model. Building it sets the
    kernel variable's ``constraint`` to the layer's own constraint followed by the mask (a
    layer handed to it directly is changed so; :func:`apply_compression` wraps a copy).

    The gradient recorded is that of the loss with respect to ``W * mask`` (before masking),
    taken in the backward pass of each training call by a custom gradient of the product; a
    layer called several times in one step records each call's share. Not tested under a
    ``tf.distribute`` strategy.

    Parameters
    ----------
    layer : keras.layers.Layer
        The layer to prune (its kernel variable is shared, not copied).
    schedule : PruningSchedule (or its get_config() dict)
    kernel_attr : str, default="kernel"
    target_sparsity : float in [0, 1), optional
        This layer's final sparsity; default: the schedule's ``final_sparsity``
        (:func:`apply_compression` passes the value ``sparsity_map`` gives the layer).
    """

    def __init__(self, layer, schedule, kernel_attr="kernel", target_sparsity=None, **kwargs):
        super().__init__(layer, **kwargs)
        self.schedule = check_pruning_schedule(schedule)
        self.kernel_attr = str(kernel_attr)
        self.target_sparsity = _check_target(target_sparsity, self.schedule)

    def build(self, input_shape=None):
        keras.layers.Wrapper.build(self, input_shape)
        var = self._locate()
        shape = tuple(int(d) for d in var.shape)
        check_pattern_fits(self.schedule, shape, f"layer {self.layer.name!r}")
        dtype = np.dtype(var.dtype)
        if dtype.kind != "f":
            raise TypeError(f"layer {self.layer.name!r}: its {self.kernel_attr} must be a float "
                            f"variable; got {var.dtype}")

        def make(name, shape_, dtype_, initializer):
            return self.add_weight(name=name, shape=shape_, dtype=dtype_,
                                   initializer=initializer, trainable=False, autocast=False,
                                   aggregation="only_first_replica")

        state = _add_state(make, shape, dtype.name, self.schedule)
        self.pruning_mask, self.step = state[0], state[1]
        self._core = _Core(self.schedule, self.target_sparsity, var, *state)
        constraint = var.constraint
        if isinstance(constraint, _MaskConstraint):
            constraint = constraint.inner
        var.constraint = _MaskConstraint(self.pruning_mask, constraint)

    @property
    def kernel(self):
        """The wrapped layer's kernel variable W (after build; pruned entries zero)."""
        owner, slot = self._slot
        return getattr(owner, slot)

    def call(self, inputs, training=None, mask=None):
        w = self._core.masked(bool(training))
        return self._call_with(w, inputs, training, mask)

    def get_config(self):
        config = super().get_config()
        config.update(schedule=self.schedule.get_config(), kernel_attr=self.kernel_attr,
                      target_sparsity=self.target_sparsity)
        return config


class PruningMatrix(_PruningFace, tf.Module):
    """The :class:`PruningSchedule` on a 2-D ``tf.Variable`` W, for custom training loops:
    ``matmul(x, training=True)`` (one step) and ``value()`` compute with ``W * mask``. A
    ``tf.Variable`` takes no constraint: pruned entries of W are zeroed at each update and their
    gradients are masked, but an optimizer with momentum or weight decay may move them between
    updates (they never reach the product); :meth:`apply_mask` zeroes them (call it after the
    optimizer step, or before exporting W)."""

    def __init__(self, variable, schedule, target_sparsity=None, name=None):
        super().__init__(name=name)
        if isinstance(variable, keras.Variable):
            variable = variable.value
        if not isinstance(variable, tf.Variable) or variable.shape.rank != 2:
            raise TypeError("variable must be a 2-D tf.Variable")
        if variable.dtype not in (tf.float32, tf.float64):
            raise TypeError(f"variable must be float32 or float64; got {variable.dtype.name}")
        self.schedule = check_pruning_schedule(schedule)
        self.target_sparsity = _check_target(target_sparsity, self.schedule)
        shape = tuple(int(d) for d in variable.shape)
        check_pattern_fits(self.schedule, shape, "the variable")
        self.kernel = variable
        agg = tf.VariableAggregation.ONLY_FIRST_REPLICA

        def make(name, shape_, dtype_, initializer):
            init = tf.ones if initializer == "ones" else tf.zeros
            return tf.Variable(init(shape_, dtype_), trainable=False, name=name,
                               aggregation=agg)

        state = _add_state(make, shape, variable.dtype, self.schedule)
        self.pruning_mask, self.step = state[0], state[1]
        self._core = _Core(self.schedule, self.target_sparsity, variable, *state)

    def matmul(self, x, training=True):
        """``x @ (W * mask)`` (a training step when ``training``)."""
        x = tf.convert_to_tensor(x, self.kernel.dtype)
        w = self._core.masked(training)
        return tf.matmul(x, w) if x.shape.rank == 2 else tf.tensordot(x, w, axes=1)

    def value(self):
        """``W * mask`` (a tensor)."""
        return self._core.masked(False)

    def apply_mask(self):
        """Zeroes the pruned entries of W."""
        self.kernel.assign(self.kernel * self._core.mask_value(self.kernel.dtype))

    @property
    def trainable_variables(self):
        return (self.kernel,)
