"""Factorizing a weight matrix inside a TensorFlow graph, for the compression schedule.

A :class:`Plan` fixes, from a compressor and the matrix's shape alone, what the factorization
will hold (its kind, the shape, dtype and trainability of every part, and the static fields) so
that the layers can create their variables before training; ``plan.factorize(A)`` then computes
the parts from the current A with TensorFlow ops (the matcompress ops, ``tf.linalg``), in eager
mode or inside a graph, the same on every replica.

The built-in compressors run in the graph:

- ``low_rank``: a truncated SVD (``tf.linalg.svd``, exact whatever ``method`` says), balanced
  factors ``U √S`` and ``√S Vᵀ`` as in :func:`matcompress.low_rank`.
- ``kmeans``: :func:`matcompress.tf.fit_codebook` (the numpy face's k-means with a k-means++
  start; the same codebook and codes for the same ``random_state``), codes 4-bit packed up to 16
  codes as the numpy compressor stores them.
- ``simhash``: the Simhash op (the numpy face's bits and scales for the same ``random_state``).
- ``pruning`` with magnitude scores (unstructured, blocks or N:M, optionally quantized with
  ``n_codes``): the kept entries found by ``tf.math.top_k`` (ties to the lower index, as the
  numpy face), in CSR form. Taylor scores need the loss gradient, which the layer does not
  have: they run through the numpy path below.
- ``dictionary``: ``max_iter`` rounds of MOD (Batch-OMP codes by the SparseEncode op, then the
  least-squares dictionary) from ``n_atoms`` rows of A picked by ``random_state``; the numpy
  compressor's K-SVD is not available as an op.

Any other compressor — a user-defined one, a built-in with an option the graph cannot run, or
a built-in with no in-graph route (``scaled_kmeans``, ``additive``, the composites, the
structural forms ``block``, ``mixed_block`` and ``input_output``) — is
planned by compressing the matrix's initial value once with its numpy ``compress`` (for the
shapes), and factorizes at the snapshot through ``tf.numpy_function``: it then runs on the host
in each replica, and the compressor must return parts of the same shapes every time. So does a
compressor that takes calibration inputs (``uses_inputs``) when the plan is made with
``calibrate=True``: ``factorize(A, X)`` then hands it the inputs X as ``compress(A, X=X)``.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from .. import compressors as _compressors
from .. import factors as _factors
from ..factors import index_dtype
from ..kmeans import _codes_dtype
from . import ops as _ops


class Plan:
    """What a factorization of an (m, n) matrix will hold, and how to compute it.

    Attributes
    ----------
    kind : str
        The factorization kind (``factored_matmul``'s ``"kind"``).
    parts : dict
        name -> (shape, numpy dtype, trainable) of every array part.
    static : dict
        The non-array fields (``n_cols``, ``packed``, ``seed``, ``n_rows``).
    in_graph : bool
        False when the factorization runs through ``tf.numpy_function``.
    uses_inputs : bool
        True when ``factorize`` hands calibration inputs to the compressor.
    """

    def __init__(self, compressor, kind, parts, static, fn, in_graph=True, uses_inputs=False,
                 gains=None):
        self.compressor = compressor
        self.kind = kind
        self.parts = parts
        self.static = static
        self._fn = fn
        self.in_graph = in_graph
        self.uses_inputs = uses_inputs
        #: part name -> factor: the part's variable holds value * factor (see _scale_gains).
        self.gains = dict(gains or {})

    def factorize(self, A, X=None):
        """The parts (name -> tensor, shapes and dtypes as in ``parts``) of the current A;
        ``X`` (rows, m), the calibration inputs, is used when :attr:`uses_inputs`."""
        if self.uses_inputs:
            out = self._fn(tf.convert_to_tensor(A), X)
        else:
            out = self._fn(tf.convert_to_tensor(A))
        for name, (shape, dtype, _) in self.parts.items():
            t = out[name]
            if t.dtype != tf.as_dtype(dtype):
                t = tf.cast(t, dtype)
            t.set_shape(shape)
            out[name] = t
        return out

    def nbytes(self, itemsize=None):
        """Bytes of the array parts (the floats counted at ``itemsize`` when given)."""
        total = 0
        for shape, dtype, _ in self.parts.values():
            size = int(np.prod(shape, dtype=np.int64))
            dt = np.dtype(dtype)
            total += size * (itemsize if itemsize and dt.kind == "f" else dt.itemsize)
        return total


def takes_inputs(compressor):
    """Whether ``compressor.compress`` takes calibration inputs (``X=``): its class says so
    with ``uses_inputs = True``."""
    return bool(getattr(compressor, "uses_inputs", False))


def plan(compressor, shape, dtype, initial=None, calibrate=False):
    """The :class:`Plan` of ``compressor`` for a matrix of ``shape`` and float ``dtype``.
    ``initial`` (the matrix's initial value, numpy) is needed only for a compressor that has no
    in-graph route, or with ``calibrate`` for one that takes calibration inputs (it then runs
    through its numpy ``compress`` with the inputs)."""
    if not isinstance(compressor, _compressors.MatrixCompressor):
        raise TypeError("compressor must be a matcompress MatrixCompressor (built-in or a "
                        f"subclass); got {type(compressor).__name__}")
    m, n = (int(d) for d in shape)
    dtype = np.dtype(dtype)
    if calibrate and takes_inputs(compressor):
        return _numpy_plan(compressor, m, n, dtype, initial, calibrate=True)
    route = _ROUTES.get(type(compressor))
    if route is not None:
        p = route(compressor, m, n, dtype)
        if p is not None:
            return p
    return _numpy_plan(compressor, m, n, dtype, initial)


# ---- the built-in compressors in the graph --------------------------------------------------

def _low_rank(c, m, n, dtype):
    r = c.solve((m, n), dtype.itemsize)

    def fn(A):
        s, u, v = tf.linalg.svd(A, full_matrices=False)
        root = tf.sqrt(s[:r])
        return {"left": u[:, :r] * root, "right": tf.transpose(v[:, :r] * root)}

    return Plan(c, "low_rank", {"left": ((m, r), dtype, True), "right": ((r, n), dtype, True)},
                {}, fn)


def _pack_4bit(codes):
    """tf version of matcompress.pack_4bit on the last axis (first code in the low nibble)."""
    codes = tf.cast(codes, tf.uint8)
    width = codes.shape[-1]
    if width % 2:
        codes = tf.pad(codes, [[0, 0]] * (codes.shape.rank - 1) + [[0, 1]])
    pairs = tf.reshape(codes, codes.shape[:-1].as_list() + [-1, 2])
    return tf.bitwise.bitwise_or(pairs[..., 0], tf.bitwise.left_shift(pairs[..., 1],
                                                                      tf.constant(4, tf.uint8)))


def _kmeans(c, m, n, dtype):
    if c.init != "k-means++":
        return None  # the op starts from k-means++ only
    n_codes, b = c.solve((m, n), dtype.itemsize)
    per_row = n // b
    packed = n_codes <= 16
    codes_dtype = np.dtype(np.uint8) if packed else np.dtype(_codes_dtype(n_codes))
    codes_shape = (m, (per_row + 1) // 2) if packed else (m, per_row)

    def fn(A):
        codebook, codes, _ = _ops.fit_codebook(A, n_codes, block_size=b, method=c.method,
                                               max_iter=c.max_iter, random_state=c.random_state)
        codes = _pack_4bit(codes) if packed else codes
        return {"codes": codes, "codebook": tf.reshape(codebook, [n_codes, b])}

    return Plan(c, "codebook", {"codes": (codes_shape, codes_dtype, False),
                                "codebook": ((n_codes, b), dtype, True)},
                {"n_cols": n, "packed": packed}, fn)


def _simhash(c, m, n, dtype):
    k = c.solve((m, n), dtype.itemsize)
    seed = _ops._seed(c.random_state)

    def fn(A):
        bits, scale = _ops.load_library().matcompress_simhash(A, n_bits=k,
                                                             seed=_ops._signed_seed(seed))
        return {"bits": bits, "scale": scale}

    return Plan(c, "sign_bits", {"bits": ((k, (n + 7) // 8), np.dtype(np.uint8), False),
                                 "scale": ((n,), dtype, True)},
                {"seed": seed, "n_rows": m}, fn)


def _pruning(c, m, n, dtype):
    if c.scores != "magnitude":
        return None  # Taylor scores need the loss gradient
    sparsity = c.solve((m, n), dtype.itemsize)
    bh, bw = _compressors._pair(c.block_shape, "block_shape")
    if c.n_m is not None:
        keep_n, group = _compressors._pair(c.n_m, "n_m")
        if n % group or keep_n > group:
            return None  # the numpy face's rules for ragged groups
        nnz = m * (n // group) * keep_n
    else:
        if m % bh or n % bw:
            return None  # partial edge blocks: the numpy face's rules
        n_blocks = (m // bh) * (n // bw)
        keep_blocks = n_blocks - math.floor(sparsity * n_blocks)
        nnz = keep_blocks * bh * bw
    idx_dtype = np.dtype(np.uint16) if n <= 65536 else np.dtype(np.int32)
    parts = {"indptr": ((m + 1,), np.dtype(np.int64), False),
             "indices": ((nnz,), idx_dtype, False)}
    if c.n_codes is None:
        parts["values"] = ((nnz,), dtype, True)
    else:
        n_codes = min(int(c.n_codes), max(nnz, 1))
        parts["codes"] = ((nnz,), np.dtype(index_dtype(n_codes)), False)
        parts["codebook"] = ((n_codes,), dtype, True)

    def fn(A):
        scores = tf.abs(A)
        if c.n_m is not None:
            groups = tf.reshape(scores, [m, n // group, group])
            _, top = tf.math.top_k(groups, k=keep_n)
            mask = tf.reduce_sum(tf.one_hot(top, group, dtype=tf.int32), axis=-2) > 0
            mask = tf.reshape(mask, [m, n])
        else:
            if (bh, bw) != (1, 1):
                blocks = tf.reshape(scores, [m // bh, bh, n // bw, bw])
                scores = tf.sqrt(tf.reduce_sum(tf.square(blocks), axis=[1, 3]))
            flat = tf.reshape(scores, [-1])
            _, top = tf.math.top_k(flat, k=keep_blocks)
            kept = tf.scatter_nd(top[:, None], tf.ones_like(top, tf.int32),
                                 [n_blocks])
            kept = tf.reshape(kept, [m // bh, n // bw]) > 0
            if (bh, bw) != (1, 1):
                kept = tf.repeat(tf.repeat(kept, bh, axis=0), bw, axis=1)
            mask = kept
        where = tf.where(mask)  # row-major: rows in order, columns sorted within a row
        where.set_shape([nnz, 2])  # top_k keeps exactly nnz entries
        rows, cols = where[:, 0], where[:, 1]
        counts = tf.math.bincount(tf.cast(rows, tf.int32), minlength=m, maxlength=m,
                                  dtype=tf.int64)
        out = {"indptr": tf.concat([tf.zeros([1], tf.int64), tf.cumsum(counts)], 0),
               "indices": tf.cast(cols, idx_dtype)}
        values = tf.gather_nd(A, where)
        if c.n_codes is None:
            out["values"] = values
        else:
            codebook, codes, _ = _ops.fit_codebook(values, parts["codebook"][0][0],
                                                   random_state=c.random_state)
            out["codes"], out["codebook"] = codes, codebook
        return out

    static = {"n_cols": n}
    return Plan(c, "pruned", parts, static, fn)


def _dictionary(c, m, n, dtype):
    k, s = c.solve((m, n), dtype.itemsize)
    n_iter = int(c.max_iter)
    seed = _ops._seed(c.random_state)
    pair = [seed % (2**31), (seed >> 31) % (2**31)]

    def normalize(D, fallback):
        norms = tf.norm(D, axis=1, keepdims=True)
        ok = norms > 1e-12 * tf.reduce_max(norms)
        D = tf.where(ok, D / tf.where(ok, norms, tf.ones_like(norms)), fallback)
        return D

    def fn(A):
        # Start: k rows of A chosen by the seed; a zero row is replaced by a unit vector.
        rows = tf.random.experimental.stateless_shuffle(tf.range(m), seed=pair)[:k]
        units = tf.one_hot(tf.range(k) % n, n, dtype=A.dtype)
        D = normalize(tf.gather(A, rows), units)
        for _ in range(n_iter):
            C = _ops.sparse_encode(A, D, n_nonzero_coefs=s)  # (m, k)
            gram = tf.matmul(C, C, transpose_a=True)
            ridge = 1e-7 * tf.linalg.trace(gram) / k + tf.constant(1e-30, A.dtype)
            rhs = tf.matmul(C, A, transpose_a=True)
            D_new = tf.linalg.solve(gram + ridge * tf.eye(k, dtype=A.dtype), rhs)
            used = tf.reduce_sum(tf.abs(C), axis=0)[:, None] > 0
            D = normalize(tf.where(used, D_new, D), D)
        idx, vals, _ = _ops.sparse_encode(A, D, n_nonzero_coefs=s, compact=True)
        # Each row's atoms in increasing order, as the numpy SparseCodes keeps them: the
        # product kernels then read the codes in place instead of sorting a copy every call.
        order = tf.argsort(idx, axis=1, stable=True)
        return {"indices": tf.gather(idx, order, batch_dims=1),
                "values": tf.gather(vals, order, batch_dims=1), "dictionary": D}

    return Plan(c, "sparse_codes", {"indices": ((m, s), np.dtype(np.int32), False),
                                    "values": ((m, s), dtype, True),
                                    "dictionary": ((k, n), dtype, True)}, {}, fn)


_ROUTES = {
    _compressors.LowRankCompressor: _low_rank,
    _compressors.KMeansCompressor: _kmeans,
    _compressors.SimhashCompressor: _simhash,
    _compressors.PruningCompressor: _pruning,
    _compressors.DictionaryCompressor: _dictionary,
}


# ---- any compressor: its numpy compress through tf.numpy_function ----------------------------

def _numpy_plan(c, m, n, dtype, initial, calibrate=False):
    if initial is None:
        raise ValueError(f"{type(c).__name__} has no in-graph route: its plan needs the "
                         "matrix's initial value")
    initial = np.asarray(initial, dtype)
    if initial.shape != (m, n):
        raise ValueError(f"initial must have shape {(m, n)}; got {initial.shape}")
    name = type(c).__name__
    # A compressor whose structure (rank, sparsity, method) depends on the matrix's values
    # decides it once, here, on the matrix the layer is built with: the variables' shapes are
    # fixed from then on. ``resolve(A)`` returns the compressor with those choices made.
    resolve = getattr(c, "resolve", None)
    if callable(resolve):
        c = resolve(initial)
        if not isinstance(c, _compressors.MatrixCompressor):
            raise TypeError(f"{name}.resolve must return a MatrixCompressor; got "
                            f"{type(c).__name__}")
    first = _checked(c, initial, m, n, name)
    arrays = _ops._factor_arrays(first, dtype)
    kind = arrays.pop("kind")
    trainable = set(first.trainable_fields)
    parts = {k: (v.shape, v.dtype, k in trainable) for k, v in arrays.items()
             if isinstance(v, np.ndarray)}
    static = {k: v for k, v in arrays.items() if not isinstance(v, np.ndarray)}
    names = list(parts)

    def run(a, x=None):
        f = _checked(c, a, m, n, name, x)
        got = _ops._factor_arrays(f, dtype)
        if got["kind"] != kind:
            raise ValueError(f"{name}.compress returned a {got['kind']} factorization at the "
                             f"snapshot, but a {kind} one when the layer was built")
        out = []
        for k in names:
            v = got.get(k)
            if v is None or v.shape != parts[k][0]:
                raise ValueError(
                    f"{name}.compress returned part {k!r} of shape "
                    f"{None if v is None else v.shape} at the snapshot, but "
                    f"{parts[k][0]} when the layer was built: the factorization's shapes "
                    "must not depend on the matrix's values")
            out.append(np.ascontiguousarray(v, parts[k][1]))
        return out

    def fn(A, X=None):
        args = [A] if X is None else [A, tf.cast(tf.reshape(X, [-1, m]), A.dtype)]
        outs = tf.numpy_function(run, args, [tf.as_dtype(parts[k][1]) for k in names],
                                 stateful=False)
        if not isinstance(outs, (list, tuple)):  # one part (dense diagonal blocks): a tensor
            outs = [outs]
        return dict(zip(names, outs))

    return Plan(c, kind, parts, static, fn, in_graph=False, uses_inputs=calibrate,
                gains=_scale_gains(first))


def _scale_gains(f, prefix=""):
    """Variable gains for the scaled and additive codebooks in ``f`` (a sum's parts and
    compressed diagonal blocks too):
    W = s * c is kept with the codebook at the weights' magnitude and the scales near 1 (c * G
    and s / G, G the power of two nearest the scales' RMS, so the round trip is exact). The
    scaled-codebook compressor stores scales near 2^12 for float16's range, which leaves the
    codebook near 1e-5: an optimizer's steps (Adam's ~ its learning rate, whatever the
    variable's size) then wreck the codebook. The additive compressor already stores scales
    near 1 (relative to their geometric mean) and codebooks at the weights' magnitude: G is 1
    there and no gain is applied (a hand-made AdditiveCodebook with large scales gets one).
    Fixed when the layer is planned (the gains must not change once the variables hold
    them)."""
    if f.kind in ("sum", "block_diagonal"):
        out = {}
        for i, part in enumerate(getattr(f, "parts", None) or ()):
            out.update(_scale_gains(part, f"{prefix}parts.{i}."))
        return out
    books = {"scaled_codebook": "codebook", "additive": "codebooks"}.get(f.kind)
    if books is None:
        return {}
    rms = float(np.sqrt(np.mean(np.square(f.scales.astype(np.float64)))))
    if not rms > 0 or not math.isfinite(rms):
        return {}
    G = 2.0 ** round(math.log2(rms))
    if G == 1.0:
        return {}
    return {prefix + "scales": 1.0 / G, prefix + books: G}


def _checked(c, a, m, n, name, x=None):
    f = c.compress(np.asarray(a)) if x is None else c.compress(np.asarray(a), X=np.asarray(x))
    if not isinstance(f, _factors.Factorization):
        raise TypeError(f"{name}.compress must return a matcompress Factorization; got "
                        f"{type(f).__name__}")
    if tuple(f.shape) != (m, n):
        raise ValueError(f"{name}.compress returned a factorization of shape {tuple(f.shape)} "
                         f"for a matrix of shape {(m, n)}")
    return f
