"""TensorFlow ops over the native kernels: the factored products and their gradients.

The op library (``_tf_ops.so``, built with the package when TensorFlow was importable at build
time) is loaded on first use, or by :func:`load_library`. Every op runs on the CPU device; its
gradient is registered with ``tf.RegisterGradient`` (first order: the gradient ops have no
gradient of their own).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from .. import factors as _factors
from .._validation import check_float, check_int, check_random_state
from ..kmeans import _auto_method, _codes_dtype

__all__ = ["load_library", "factored_matmul", "factored_rows", "factor_tensors", "sparse_encode",
           "fit_codebook", "simhash"]

_LIB = None
_HERE = os.path.dirname(os.path.abspath(__file__))


def _major_minor(version):
    return tuple(version.split(".")[:2])


def load_library():
    """Load the op library (once) and return it.

    Raises
    ------
    ImportError
        When the library is missing (matcompress was built without TensorFlow in sight) or was
        built for another TensorFlow than the one installed; the message names both versions and
        what to do.
    """
    global _LIB
    if _LIB is not None:
        return _LIB
    installed = tf.__version__
    try:  # written by the build next to the library (which may not be beside this file in an
        # editable install)
        from . import _build_info

        built = _build_info.TF_VERSION
        path = os.path.join(os.path.dirname(os.path.abspath(_build_info.__file__)), "_tf_ops.so")
    except ImportError:
        built, path = None, os.path.join(_HERE, "_tf_ops.so")
    if built is None or not os.path.exists(path):
        raise ImportError(
            f"matcompress has no TensorFlow op library (TensorFlow {installed} is installed, but "
            "the build of matcompress did not see TensorFlow 2.21). Rebuild it where the build "
            "does: on Linux x86-64 with Python 3.10-3.13, pip install --force-reinstall "
            "--no-deps <matcompress source> (TensorFlow is a build requirement there); elsewhere "
            "install TensorFlow first and add --no-build-isolation.")
    if _major_minor(built) != _major_minor(installed):
        raise ImportError(
            f"matcompress's TensorFlow op library was built for TensorFlow {built}, but TensorFlow "
            f"{installed} is installed. Install TensorFlow {'.'.join(_major_minor(built))}.* "
            f"(pip install 'tensorflow-cpu=={'.'.join(_major_minor(built))}.*'), or rebuild "
            "matcompress against the installed TensorFlow.")
    try:
        _LIB = tf.load_op_library(path)
    except (tf.errors.NotFoundError, OSError) as exc:
        raise ImportError(f"matcompress's TensorFlow op library ({path}, built for TensorFlow "
                          f"{built}) does not load into TensorFlow {installed}: {exc}") from exc
    return _LIB


# ---- gradients ---------------------------------------------------------------------------------

@tf.RegisterGradient("Matcompress>CodebookMatMul")
def _codebook_grad(op, dy):
    x, codes, codebook = op.inputs
    dx, dcb = load_library().matcompress_codebook_mat_mul_grad(
        x, dy, codes, codebook, n=op.get_attr("n"), packed=op.get_attr("packed"))
    return [dx, None, dcb]


@tf.RegisterGradient("Matcompress>SparseCodesMatMul")
def _sparse_codes_grad(op, dy):
    x, indices, values, dictionary = op.inputs
    dx, dv, dd = load_library().matcompress_sparse_codes_mat_mul_grad(x, dy, indices, values,
                                                                      dictionary)
    return [dx, None, dv, dd]


@tf.RegisterGradient("Matcompress>SignBitsMatMul")
def _sign_bits_grad(op, dy):
    x, bits, scale = op.inputs
    dx, ds = load_library().matcompress_sign_bits_mat_mul_grad(x, dy, bits, scale,
                                                               seed=op.get_attr("seed"))
    return [dx, None, ds]


@tf.RegisterGradient("Matcompress>PrunedMatMul")
def _pruned_grad(op, dy):
    x, indptr, indices, values = op.inputs
    dx, dv = load_library().matcompress_pruned_mat_mul_grad(x, dy, indptr, indices, values,
                                                n=op.get_attr("n"))
    return [dx, None, None, dv]


tf.no_gradient("Matcompress>SparseEncode")
tf.no_gradient("Matcompress>SparseEncodeDense")
tf.no_gradient("Matcompress>FitCodebook")
tf.no_gradient("Matcompress>Simhash")


# ---- fitting inside a graph ----------------------------------------------------------------------

def _float_tensor(x, name):
    x = tf.convert_to_tensor(x, name=name)
    if x.dtype not in (tf.float32, tf.float64):
        raise TypeError(f"{name} must be float32 or float64; got {x.dtype.name}")
    return x


def _static(dim, what):
    if dim is None:
        raise ValueError(f"{what} must be known when the graph is built (a static shape)")
    return int(dim)


def _seed(random_state):
    """The seed the numpy face draws from the same random_state."""
    return int(check_random_state(random_state).integers(0, 2**63 - 1))


def sparse_encode(X, dictionary, *, n_nonzero_coefs=None, tol=None, compact=False, name=None):
    """Batch-OMP codes of the rows of ``X`` over the rows of ``dictionary``, as a TensorFlow op:
    the same codes as :func:`matcompress.sparse_encode` on the same inputs.

    Returns the dense codes ``(n_samples, n_components)``, or with ``compact=True`` the tuple
    ``(indices, values, nnz)``: per row, ``nnz`` atoms in selection order (int32 indices and
    values of shape ``(n_samples, max_atoms)``, zeros past ``nnz``). No gradient.
    """
    with tf.name_scope(name or "sparse_encode"):
        X = _float_tensor(X, "X")
        dictionary = tf.cast(_float_tensor(dictionary, "dictionary"), X.dtype)
        n_features = _static(X.shape[-1], "X.shape[1]")
        n_components = _static(dictionary.shape[0], "dictionary.shape[0]")
        if tol is not None:
            tol = check_float(tol, "tol", min_value=0.0)
            max_atoms = min(n_components, n_features)
        else:
            if n_nonzero_coefs is None:
                n_nonzero_coefs = int(min(max(n_features / 10, 1), n_components))
            max_atoms = check_int(n_nonzero_coefs, "n_nonzero_coefs", min_value=1,
                                  max_value=min(n_components, n_features),
                                  max_reason=f"n_components={n_components}, "
                                             f"n_features={n_features}")
        tol = -1.0 if tol is None else tol
        if compact:
            return load_library().matcompress_sparse_encode(X, dictionary, max_atoms=max_atoms,
                                                            tol=tol)
        return load_library().matcompress_sparse_encode_dense(X, dictionary,
                                                              max_atoms=max_atoms, tol=tol)


def fit_codebook(values, n_codes, *, block_size=1, method="auto", n_init=1, max_iter=100,
                 tol=1e-6, random_state=None, name=None):
    """k-means codebook of ``values`` (blocks of ``block_size`` along the last axis) as a
    TensorFlow op: the same ``(codebook, codes, inertia)`` as :func:`matcompress.fit_codebook`
    with the same arguments (k-means++ start, no sample weights). The codebook is
    ``(n_codes,)`` for scalars, ``(n_codes, block_size)`` for blocks; the codes have the shape of
    ``values`` with the last axis divided by ``block_size`` and the numpy face's dtype. No
    gradient.
    """
    with tf.name_scope(name or "fit_codebook"):
        values = _float_tensor(values, "values")
        block_size = check_int(block_size, "block_size", min_value=1)
        last = _static(values.shape[-1], "the last axis of values")
        if last % block_size:
            raise ValueError(f"block_size={block_size} must divide the length of the last axis "
                             f"of values, {last}")
        n = _static(values.shape.num_elements(), "the shape of values") // block_size
        n_codes = check_int(n_codes, "n_codes", min_value=1, max_value=n,
                            max_reason=f"the number of {'values' if block_size == 1 else 'blocks'}"
                                       f", {n}")
        if method not in ("auto", "lloyd", "optimal"):
            raise ValueError(f"method must be 'auto', 'lloyd' or 'optimal'; got {method!r}")
        if method == "auto":
            method = _auto_method(n_codes, n) if block_size == 1 else "lloyd"
        points = tf.reshape(values, [-1, block_size])
        codebook, codes, inertia = load_library().matcompress_fit_codebook(
            points, n_codes=n_codes, method=method,
            max_iter=check_int(max_iter, "max_iter", min_value=1),
            tol=check_float(tol, "tol", min_value=0.0), seed=_seed(random_state),
            n_init=check_int(n_init, "n_init", min_value=1))
        if block_size == 1:
            codebook = tf.reshape(codebook, [n_codes])
        shape = values.shape[:-1].as_list() + [last // block_size]
        codes = tf.cast(tf.reshape(codes, shape), tf.as_dtype(_codes_dtype(n_codes)))
        return codebook, codes, inertia


def simhash(A, n_bits, *, random_state=None, name=None):
    """Sign bits and column scales of ``A`` (m, n) as a TensorFlow op: the same bits, scales
    and seed as :func:`matcompress.simhash` with the same arguments, returned as the mapping
    :func:`factored_matmul` takes (``kind``, ``bits``, ``scale``, ``seed``, ``n_rows``). No
    gradient."""
    with tf.name_scope(name or "simhash"):
        A = _float_tensor(A, "A")
        n_bits = check_int(n_bits, "n_bits", min_value=1)
        seed = _seed(random_state)
        bits, scale = load_library().matcompress_simhash(A, n_bits=n_bits,
                                                         seed=_signed_seed(seed))
        return {"kind": "sign_bits", "bits": bits, "scale": scale, "seed": seed,
                "n_rows": _static(A.shape[0], "A.shape[0]")}


# ---- factorizations as tensors ------------------------------------------------------------------

_FIELDS = {
    "low_rank": ("left", "right"),
    "sparse_codes": ("indices", "values", "dictionary"),
    "codebook": ("codes", "codebook", "n_cols", "packed"),
    "sign_bits": ("bits", "scale", "seed", "n_rows"),
    "pruned": ("indptr", "indices", "n_cols", "values", "codes", "codebook"),
    "scaled_codebook": ("codes", "codebook", "scales", "n_cols", "group_size", "channel_axis"),
    "additive": ("codes", "codebooks", "scales", "n_cols", "channel_axis"),
    # A sum's parts are flattened: part i's fields as "parts.<i>.<field>", its kind as
    # "parts.<i>.kind" (nested sums nest the prefix).
    "sum": (),
    # Dense blocks: the flat values; compressed blocks: the parts flattened as a sum's.
    "block_diagonal": ("values", "n_rows", "n_cols", "n_blocks"),
    "mixed_block": ("bases", "coeffs"),
    "input_output": ("P", "C", "Q"),
}

#: Kinds whose factorizations may hold parts (flattened as "parts.<i>.<field>").
_PARTED = ("sum", "block_diagonal")


def has_parts(factors):
    """Whether a mapping of factors holds parts (a sum, or compressed diagonal blocks)."""
    return any(isinstance(k, str) and k.startswith("parts.") for k in factors)


def _float_dtype(factors):
    """The float dtype of a factors mapping (its first float tensor, parts included)."""
    for v in factors.values():
        dt = getattr(v, "dtype", None)
        if dt is not None and tf.as_dtype(dt).is_floating:
            return tf.as_dtype(dt)
    return tf.float32


def split_sum(factors):
    """The parts of a ``"sum"`` mapping (fields ``"parts.<i>.<field>"``), each as a mapping of
    its own kind, in order."""
    parts = {}
    for key, value in factors.items():
        if key.startswith("parts."):
            _, i, rest = key.split(".", 2)
            parts.setdefault(int(i), {})[rest] = value
    return [parts[i] for i in sorted(parts)]


def _unpack_codes(packed, bits, n):
    """(rows, ceil(n * bits / 8)) uint8 codes packed as :func:`matcompress.pack_bits` packs
    them (least significant bit first) -> (rows, n) int32."""
    p = tf.cast(packed, tf.int32)
    rows = tf.shape(p)[0]
    if 8 % bits == 0:
        per, mask = 8 // bits, (1 << bits) - 1
        out = tf.stack([tf.bitwise.bitwise_and(tf.bitwise.right_shift(p, k * bits), mask)
                        for k in range(per)], axis=-1)
        return tf.reshape(out, [rows, -1])[:, :n]
    if bits == 16:
        pairs = tf.reshape(p, [rows, -1, 2])
        return tf.bitwise.bitwise_or(pairs[..., 0], tf.bitwise.left_shift(pairs[..., 1], 8))[:, :n]
    # 3, 5, 6 or 7 bits: codes straddle bytes; through the bit string.
    bit = tf.bitwise.bitwise_and(
        tf.bitwise.right_shift(tf.cast(packed, tf.uint8)[..., None],
                               tf.constant(list(range(8)), tf.uint8)), tf.constant(1, tf.uint8))
    bit = tf.reshape(bit, [rows, -1])[:, :n * bits]
    weights = tf.constant([1 << t for t in range(bits)], tf.int32)
    return tf.reduce_sum(tf.cast(tf.reshape(bit, [rows, n, bits]), tf.int32) * weights, -1)


def _scaled_codebook_rows(get, ids, dtype):
    """Rows ``ids`` (int64 vector; None: all) of a scaled codebook's W, decoded in ``dtype``
    (gradients reach the codebook and the scales through the gathers)."""
    codebook = tf.cast(get("codebook"), dtype)
    scales = tf.cast(get("scales"), dtype)
    codes = get("codes")
    n, gs, axis = int(get("n_cols")), int(get("group_size")), int(get("channel_axis"))
    n_books, n_codes = int(codebook.shape[0]), int(codebook.shape[1])
    m = int(codes.shape[0]) if codes.shape[0] is not None else None
    if ids is not None:
        codes = tf.gather(codes, ids)
    bits = 16 if n_codes > 256 else max(1, (n_codes - 1).bit_length())
    idx = _unpack_codes(codes, bits, n)
    rows = tf.range(m, dtype=tf.int64) if ids is None else ids
    if n_books > 1:
        if axis == 1:
            run = -(-n // n_books)
            idx = idx + (tf.range(n, dtype=tf.int32) // run * n_codes)[None, :]
        else:
            run = -(-m // n_books)
            idx = idx + tf.cast(rows // run * n_codes, tf.int32)[:, None]
    w = tf.gather(tf.reshape(codebook, [-1]), idx)
    if axis == 1:
        s = tf.gather(scales, rows // gs)
    else:
        s = tf.repeat(tf.gather(scales, rows), gs, axis=1)[:, :n]
    return w * s


def _additive_rows(get, ids, dtype):
    """Rows ``ids`` (int64 vector; None: all) of an additive codebook's W, decoded in ``dtype``:
    each block the sum of its M codewords (one gather per codebook), times its channel's scale
    (gradients reach the codebooks and the scales through the gathers)."""
    codebooks = tf.cast(get("codebooks"), dtype)
    scales = tf.cast(get("scales"), dtype)
    codes = get("codes")
    n, axis = int(get("n_cols")), int(get("channel_axis"))
    n_books, n_codes, b = (int(d) for d in codebooks.shape)
    if ids is not None:
        codes = tf.gather(codes, ids)
    bits = 16 if n_codes > 256 else max(1, (n_codes - 1).bit_length())
    idx = tf.reshape(_unpack_codes(codes, bits, n // b * n_books), [-1, n // b, n_books])
    w = tf.gather(codebooks[0], idx[..., 0])
    for t in range(1, n_books):
        w = w + tf.gather(codebooks[t], idx[..., t])
    w = tf.reshape(w, [-1, n])
    if axis == 1:
        return w * scales[None, :]
    return w * (scales if ids is None else tf.gather(scales, ids))[:, None]


def _block_splits(get):
    from ..structural import block_splits

    m, n, k = int(get("n_rows")), int(get("n_cols")), int(get("n_blocks"))
    return [int(v) for v in block_splits(m, k)], [int(v) for v in block_splits(n, k)]


def _block_diagonal_matmul(x2, factors):
    """x2 (batch, m) @ W for diagonal blocks: per run of equal blocks one batched GEMM
    (``tf.einsum`` over the (count, rows, cols) stack); compressed blocks block by block."""
    from ..structural import _groups

    get = factors.get
    if has_parts(factors):
        rs, cs = _block_splits(get)
        outs = [factored_matmul(x2[:, rs[i]:rs[i + 1]], part)
                for i, part in enumerate(split_sum(factors))]
    else:
        values = get("values")
        outs = []
        for _, cnt, r, c, row0, _, v0 in _groups(int(get("n_rows")), int(get("n_cols")),
                                                int(get("n_blocks"))):
            xs = tf.reshape(x2[:, row0:row0 + cnt * r], [-1, cnt, r])
            stack = tf.reshape(values[v0:v0 + cnt * r * c], [cnt, r, c])
            outs.append(tf.reshape(tf.einsum("bkr,krc->bkc", xs, stack), [-1, cnt * c]))
    return outs[0] if len(outs) == 1 else tf.concat(outs, axis=1)


def _block_diagonal_rows(factors, ids, dtype):
    """Rows ``ids`` (int64 vector) of a block-diagonal W: each id's row of its block (a gather),
    placed in its block's columns (a one-hot over the blocks of its run), zeros elsewhere."""
    from ..structural import _groups

    get = factors.get
    outs = []
    if has_parts(factors):
        rs, cs = _block_splits(get)
        for i, part in enumerate(split_sum(factors)):
            local = ids - rs[i]
            inside = (local >= 0) & (local < rs[i + 1] - rs[i])
            rows = factored_rows(tf.clip_by_value(local, 0, rs[i + 1] - rs[i] - 1), part)
            outs.append(rows * tf.cast(inside, rows.dtype)[:, None])
    else:
        values = tf.cast(get("values"), dtype)
        for _, cnt, r, c, row0, _, v0 in _groups(int(get("n_rows")), int(get("n_cols")),
                                                int(get("n_blocks"))):
            local = ids - row0
            inside = (local >= 0) & (local < cnt * r)
            local = tf.clip_by_value(local, 0, cnt * r - 1)
            rows = tf.gather(tf.reshape(values[v0:v0 + cnt * r * c], [cnt * r, c]), local)
            which = tf.one_hot(local // r, cnt, dtype=dtype) * tf.cast(inside, dtype)[:, None]
            outs.append(tf.reshape(which[:, :, None] * rows[:, None, :], [-1, cnt * c]))
    return outs[0] if len(outs) == 1 else tf.concat(outs, axis=1)


def _mixed_block_dense(get, dtype=None):
    """The mixed-block W (m, n): the coefficients times the flattened bases, one GEMM."""
    bases, coeffs = get("bases"), get("coeffs")
    if dtype is not None:
        bases, coeffs = tf.cast(bases, dtype), tf.cast(coeffs, dtype)
    S, b = int(bases.shape[0]), int(bases.shape[1])
    gm, gn = int(coeffs.shape[0]), int(coeffs.shape[1])
    blocks = tf.matmul(tf.reshape(coeffs, [gm * gn, S]), tf.reshape(bases, [S, b * b]))
    return tf.reshape(tf.transpose(tf.reshape(blocks, [gm, gn, b, b]), [0, 2, 1, 3]),
                      [gm * b, gn * b])


def _mixed_block_matmul(x2, get):
    """x2 @ W through the shared bases (Z = x's blocks by the bases, one GEMM, then the
    contraction with the coefficients over (row-block, basis), one GEMM), or, when that costs
    more (many bases, a large batch: the rule of ``MixedBlock._decodes``), through W decoded by
    one GEMM (as the codebook forms decode theirs) and one GEMM with it."""
    bases, coeffs = get("bases"), get("coeffs")
    S, b = int(bases.shape[0]), int(bases.shape[1])
    gm, gn = int(coeffs.shape[0]), int(coeffs.shape[1])
    m, n = gm * b, gn * b

    def basis():
        z = tf.einsum("Bia,sac->Bisc", tf.reshape(x2, [-1, gm, b]), bases)
        return tf.reshape(tf.einsum("Bisc,ijs->Bjc", z, coeffs), [-1, n])

    def decode():
        return tf.matmul(x2, _mixed_block_dense(get))

    per_row = 3.0 * S * (m * b + m * n / b)  # as MixedBlock._decodes
    if per_row <= m * n:
        return basis()
    rows = x2.shape[0]
    if rows is not None:
        return decode() if S * m * n + rows * m * n < rows * per_row else basis()
    return tf.cond(tf.cast(tf.shape(x2)[0], tf.float64) * (per_row - m * n) > S * m * n,
                   decode, basis)


def _mixed_block_rows(get, ids, dtype):
    """Rows ``ids`` of a mixed-block W: row a of row-block i is
    ``sum_s coeffs[i, j, s] bases[s, a, :]`` for each column-block j."""
    bases, coeffs = tf.cast(get("bases"), dtype), tf.cast(get("coeffs"), dtype)
    b = int(bases.shape[1])
    gn = int(coeffs.shape[1])
    c = tf.gather(coeffs, ids // b)  # (B, gn, S)
    sel = tf.gather(tf.transpose(bases, [1, 0, 2]), ids % b)  # (B, S, b)
    return tf.reshape(tf.einsum("Bjs,Bsc->Bjc", c, sel), [-1, gn * b])


def _expand_outputs(v, Q):
    """v (rows, n') @ blockdiag(Q, ..., Q)."""
    if Q is None:
        return v
    qo, bo = int(Q.shape[0]), int(Q.shape[1])
    n = int(v.shape[-1]) // qo * bo
    return tf.reshape(tf.matmul(tf.reshape(v, [-1, qo]), Q), [-1, n])


def _input_output_matmul(x2, get):
    """x2 @ blockdiag(P) @ C @ blockdiag(Q): three GEMMs."""
    P, C, Q = get("P"), get("C"), get("Q")
    u = x2
    if P is not None:
        u = tf.reshape(tf.matmul(tf.reshape(x2, [-1, int(P.shape[0])]), P),
                       [-1, int(C.shape[0])])
    return _expand_outputs(tf.matmul(u, C), Q)


def _input_output_rows(get, ids, dtype):
    """Rows ``ids`` of blockdiag(P) @ C @ blockdiag(Q): for few ids, each row of P times its
    block's rows of C (gathers); for many (more than m / pi, as a kernel's every row), the
    product blockdiag(P) @ C for all rows, then the gather."""
    P, C, Q = get("P"), tf.cast(get("C"), dtype), get("Q")
    Q = None if Q is None else tf.cast(Q, dtype)
    if P is None:
        return _expand_outputs(tf.gather(C, ids), Q)
    P = tf.cast(P, dtype)
    bi, pi = int(P.shape[0]), int(P.shape[1])
    gi, n1 = int(C.shape[0]) // pi, int(C.shape[1])
    Cr = tf.reshape(C, [gi, pi, n1])

    def few():
        return tf.einsum("Bp,Bpn->Bn", tf.gather(P, ids % bi), tf.gather(Cr, ids // bi))

    def many():
        full = tf.reshape(tf.einsum("ap,gpn->gan", P, Cr), [gi * bi, n1])
        return tf.gather(full, ids)

    count = ids.shape[0]
    if count is not None:
        v = few() if count * pi <= gi * bi else many()
    else:
        v = tf.cond(tf.size(ids) * pi <= gi * bi, few, many)
    return _expand_outputs(v, Q)


def factor_tensors(factorization, dtype=None):
    """The parts of a :class:`matcompress.factors.Factorization` as the ops take them: a dict
    with ``"kind"``, the arrays converted to the ops' index types (int32 atom indices, uint8 /
    uint16 / int32 codes, int64 row offsets, uint16 or int32 column indices) and the float parts
    in ``dtype`` (default: the factorization's), as eager tensors, plus the static fields
    (``n_cols``, ``packed``, ``seed``). Float parts can be replaced by ``tf.Variable`` objects to
    train them.

    The tensors are made eagerly even inside a ``tf.function``, so a function captures them as
    inputs: numpy arrays there would be copied into the graph as constants (an 8 MB constant
    made a 4-bit GEMV 2x slower per call)."""
    arrays = _factor_arrays(factorization, dtype)
    with tf.init_scope():
        return {k: (tf.constant(v) if isinstance(v, np.ndarray) else v) for k, v in arrays.items()}


def _cached_factor_tensors(f, dtype):
    """factor_tensors(f, dtype), kept with the (immutable) factorization."""
    return f._cached(("tf", np.dtype(dtype).str), lambda: factor_tensors(f, dtype))


def _factor_arrays(factorization, dtype):
    f = factorization
    if not isinstance(f, _factors.Factorization):
        raise TypeError("factorization must be a matcompress Factorization; got "
                        f"{type(f).__name__}")
    dt = np.dtype(dtype or f.dtype)
    out = {"kind": f.kind}
    if isinstance(f, _factors.LowRank):
        out.update(left=f.left.astype(dt), right=f.right.astype(dt))
    elif isinstance(f, _factors.SparseCodes):
        out.update(indices=f.indices.astype(np.int32), values=f.values.astype(dt),
                   dictionary=f.dictionary.astype(dt))
    elif isinstance(f, _factors.Codebook):
        codes = f.codes
        if not f.packed and codes.dtype not in (np.uint8, np.uint16, np.int32):
            if f.n_codes > 2**31 - 1:
                raise ValueError("codebook: more than 2^31 - 1 codes cannot be indexed by int32")
            codes = codes.astype(np.uint16 if f.n_codes <= 65536 else np.int32)
        out.update(codes=codes, codebook=f.codebook.astype(dt), n_cols=f.n_cols,
                   packed=f.packed)
    elif isinstance(f, _factors.SignBits):
        out.update(bits=f.bits, scale=f.scale.astype(dt), seed=f.seed, n_rows=f.n_rows)
    elif isinstance(f, _factors.Pruned):
        indices = f.indices.astype(np.uint16 if f.n_cols <= 65536 else np.int32)
        # The stored row offsets' dtype rides along (static) so that the layers give back the
        # compressor's bytes: PruningCompressor stores int32, a composite's sparse part may
        # store narrower ones.
        out.update(indptr=f.indptr.astype(np.int64), indices=indices, n_cols=f.n_cols,
                   indptr_dtype=np.dtype(f.indptr.dtype).name)
        if f.values is not None:
            out.update(values=f.values.astype(dt))
        else:
            out.update(codes=f.codes.astype(np.int32), codebook=f.codebook.astype(dt))
    elif f.kind == "scaled_codebook":
        # The scales in the compute dtype (trained so); stored as float16 again on the way out.
        out.update(codes=f.codes, codebook=f.codebook.astype(dt), scales=f.scales.astype(dt),
                   n_cols=f.n_cols, group_size=f.group_size, channel_axis=f.channel_axis)
    elif f.kind == "additive":
        # As for the scaled codebook: the scales in the compute dtype, float16 on the way out.
        out.update(codes=f.codes, codebooks=f.codebooks.astype(dt), scales=f.scales.astype(dt),
                   n_cols=f.n_cols, channel_axis=f.channel_axis)
    elif f.kind == "sum":
        for i, part in enumerate(f.parts):
            out.update({f"parts.{i}.{k}": v for k, v in _factor_arrays(part, dt).items()})
    elif f.kind == "block_diagonal":
        out.update(n_rows=f.n_rows, n_cols=f.n_cols, n_blocks=f.n_blocks)
        if f.parts is None:
            out.update(values=f.values.astype(dt))
        else:
            for i, part in enumerate(f.parts):
                out.update({f"parts.{i}.{k}": v for k, v in _factor_arrays(part, dt).items()})
    elif f.kind == "mixed_block":
        out.update(bases=f.bases.astype(dt), coeffs=f.coeffs.astype(dt))
    elif f.kind == "input_output":
        out.update(C=f.C.astype(dt))
        if f.P is not None:
            out.update(P=f.P.astype(dt))
        if f.Q is not None:
            out.update(Q=f.Q.astype(dt))
    else:  # a user-defined Factorization: no native product
        raise TypeError(f"no TensorFlow op for factorizations of kind {f.kind!r}")
    return out


def _signed_seed(seed):
    seed = int(seed)
    return seed - 2**64 if seed >= 2**63 else seed


def factored_rows(ids, factors, name=None):
    """Rows ``W[ids]`` of the factorized matrix (an embedding lookup), shape ``ids.shape + (n,)``,
    from the parts without building W: gathers of the low-rank left rows, of the codes and values
    (sparse codes, codebook codes — unpacked from 4 bits — and pruned CSR rows); scaled and
    additive codebooks decode only the rows looked up; sign bits go through the product with
    one-hot rows (the projection is regenerated, never stored); a sum adds its parts' rows;
    diagonal blocks gather each id's row of its block (or its part's rows) and place it in the
    block's columns; mixed blocks combine the gathered coefficients with the bases' rows;
    input/output forms gather rows of P and of C's blocks (or, for more ids than m / pi, gather
    from blockdiag(P) @ C) and expand them by Q.
    Gradients reach every float part as in :func:`factored_matmul`. ``factors`` as there."""
    with tf.name_scope(name or "factored_rows"):
        ids = tf.convert_to_tensor(ids)
        if not ids.dtype.is_integer:
            raise TypeError(f"ids must be integers; got {ids.dtype.name}")
        if isinstance(factors, _factors.Factorization):
            factors = _cached_factor_tensors(factors, factors.dtype)
        if not isinstance(factors, Mapping) or "kind" not in factors:
            raise TypeError("factors must be a Factorization or a mapping with a 'kind' key")
        kind, get = factors["kind"], factors.get
        flat = tf.reshape(tf.cast(ids, tf.int64), [-1])
        if kind == "low_rank":
            rows = tf.matmul(tf.gather(get("left"), flat), get("right"))
        elif kind == "sparse_codes":
            idx = tf.gather(get("indices"), flat)
            val = tf.gather(get("values"), flat)
            rows = tf.einsum("bs,bsn->bn", val, tf.gather(get("dictionary"), idx))
        elif kind == "codebook":
            codebook = get("codebook")
            n_cols = int(get("n_cols"))
            block = 1 if codebook.shape.rank == 1 else int(codebook.shape[-1])
            codes = tf.gather(get("codes"), flat)
            if bool(get("packed", False)):
                low = tf.bitwise.bitwise_and(codes, tf.constant(15, codes.dtype))
                high = tf.bitwise.right_shift(codes, tf.constant(4, codes.dtype))
                codes = tf.reshape(tf.stack([low, high], axis=-1), [tf.shape(codes)[0], -1])
                codes = codes[:, :n_cols // block]
            rows = tf.reshape(tf.gather(codebook, tf.cast(codes, tf.int32)), [-1, n_cols])
        elif kind == "sign_bits" and get("projected_signs") is not None:
            rows = tf.gather(get("projected_signs"), flat) * get("scale")
        elif kind == "sign_bits":
            scale = get("scale")
            onehot = tf.one_hot(flat, int(get("n_rows")), dtype=scale.dtype)
            rows = factored_matmul(onehot, factors)
        elif kind == "pruned":
            indptr = get("indptr")
            starts, ends = tf.gather(indptr, flat), tf.gather(indptr, flat + 1)
            pos = tf.ragged.range(starts, ends)
            which = pos.value_rowids()
            cols = tf.cast(tf.gather(get("indices"), pos.flat_values), tf.int64)
            values = get("values")
            if values is None:
                codes = tf.gather(get("codes"), pos.flat_values)
                vals = tf.gather(get("codebook"), tf.cast(codes, tf.int32))
            else:
                vals = tf.gather(values, pos.flat_values)
            rows = tf.scatter_nd(tf.stack([which, cols], axis=1), vals,
                                 tf.stack([tf.size(flat, tf.int64),
                                           tf.constant(int(get("n_cols")), tf.int64)]))
        elif kind == "scaled_codebook":
            rows = _scaled_codebook_rows(get, flat, get("codebook").dtype)
        elif kind == "additive":
            rows = _additive_rows(get, flat, get("codebooks").dtype)
        elif kind == "sum":
            parts = split_sum(factors)
            rows = factored_rows(flat, parts[0])
            for part in parts[1:]:
                rows = rows + factored_rows(flat, part)
        elif kind == "block_diagonal":
            rows = _block_diagonal_rows(factors, flat, _float_dtype(factors))
        elif kind == "mixed_block":
            rows = _mixed_block_rows(get, flat, get("bases").dtype)
        elif kind == "input_output":
            rows = _input_output_rows(get, flat, get("C").dtype)
        else:
            raise ValueError(f"unknown factorization kind {kind!r}; known: {sorted(_FIELDS)}")
        n = rows.shape[-1] if rows.shape[-1] is not None else tf.shape(rows)[-1]
        return tf.reshape(rows, tf.concat([tf.shape(ids), [n]], axis=0))


def factored_matmul(x, factors, name=None):
    """``x @ W`` for x of shape (..., m), from the factors, as TensorFlow ops with gradients for
    ``x`` and every float part (low-rank sides; sparse-code values and dictionary; codebook
    entries, as a segment sum; sign-bit scales; pruned values or their codebook; the entries
    and scales of scaled codebooks and the codebooks and scales of additive ones, which are
    decoded into W by TensorFlow ops for one GEMM; a sum's parts; the structural forms' parts:
    diagonal blocks, by one batched matmul per run of equal blocks, or each block's own
    factors; shared basis blocks and their coefficients, through two contractions (or W
    decoded when that costs less: many bases and a large batch); the input/output projections
    P, Q and the matrix C, three GEMMs).

    Kinds: ``low_rank``, ``sparse_codes``, ``codebook``, ``sign_bits``, ``pruned``,
    ``scaled_codebook``, ``additive``, ``sum``, ``block_diagonal``, ``mixed_block`` and
    ``input_output``.

    ``factors`` is a :class:`matcompress.factors.Factorization` (its arrays become constant
    tensors in the dtype of x, made once and kept with it) or a mapping as
    :func:`factor_tensors` returns, whose float parts may be ``tf.Variable`` objects of the
    dtype of x. Sign bits may also carry ``"projected_signs"``, the (m, n) product R @ S of the
    projection and the signs: the product is then a GEMM times the scales (the compressed
    layers keep it while they train, rather than regenerating R in every pass).
    """
    with tf.name_scope(name or "factored_matmul"):
        x = tf.convert_to_tensor(x)
        if x.dtype not in (tf.float32, tf.float64):
            x = tf.cast(x, tf.float32 if x.dtype in (tf.float16, tf.bfloat16) else tf.float64)
        if isinstance(factors, _factors.Factorization):
            factors = _cached_factor_tensors(factors, x.dtype.as_numpy_dtype)
        if not isinstance(factors, Mapping) or "kind" not in factors:
            raise TypeError("factors must be a Factorization or a mapping with a 'kind' key")
        kind = factors["kind"]
        if kind not in _FIELDS:
            raise ValueError(f"unknown factorization kind {kind!r}; known: {sorted(_FIELDS)}")
        get = factors.get
        flat = x.shape.rank == 2  # (batch, m) already: no reshapes (each is an op to run)
        known = x.shape.rank is not None and x.shape[-1] is not None
        m = x.shape[-1] if known else tf.shape(x)[-1]
        x2 = x if flat else tf.reshape(x, [-1, m])
        lib = (load_library() if kind not in ("low_rank", "scaled_codebook", "additive", "sum",
                                              "block_diagonal", "mixed_block", "input_output")
               else None)
        if kind == "low_rank":
            y = tf.matmul(tf.matmul(x2, get("left")), get("right"))
        elif kind == "scaled_codebook":
            # W decoded (codes unpacked, codebook gathered, scaled), then one GEMM.
            y = tf.matmul(x2, _scaled_codebook_rows(get, None, x2.dtype))
        elif kind == "additive":
            # W decoded (codes unpacked, one gather per codebook, summed, scaled), one GEMM.
            y = tf.matmul(x2, _additive_rows(get, None, x2.dtype))
        elif kind == "sum":
            parts = split_sum(factors)
            y = factored_matmul(x2, parts[0])
            for part in parts[1:]:
                y = y + factored_matmul(x2, part)
        elif kind == "block_diagonal":
            y = _block_diagonal_matmul(x2, factors)
        elif kind == "mixed_block":
            y = _mixed_block_matmul(x2, get)
        elif kind == "input_output":
            y = _input_output_matmul(x2, get)
        elif kind == "sparse_codes":
            y = lib.matcompress_sparse_codes_mat_mul(x2, get("indices"), get("values"),
                                                     get("dictionary"))
        elif kind == "codebook":
            y = lib.matcompress_codebook_mat_mul(x2, get("codes"), get("codebook"),
                                                 n=int(get("n_cols")),
                                                 packed=bool(get("packed", False)))
        elif kind == "sign_bits" and get("projected_signs") is not None:
            y = tf.matmul(x2, get("projected_signs")) * get("scale")
        elif kind == "sign_bits":
            # The projection takes its height from x: check it against the factorization's.
            n_rows = get("n_rows")
            if n_rows is not None:
                tf.debugging.assert_equal(
                    tf.shape(x2)[1], int(n_rows),
                    message=f"x must have shape (..., {int(n_rows)}) to multiply a matrix of "
                            f"{int(n_rows)} rows")
            y = lib.matcompress_sign_bits_mat_mul(x2, get("bits"), get("scale"),
                                                  seed=_signed_seed(get("seed")))
        else:  # pruned
            values = get("values")
            if values is None:  # codes into a codebook: the gradient reaches it through gather
                codes = get("codes")
                if codes.dtype not in (tf.int32, tf.int64):
                    codes = tf.cast(codes, tf.int32)
                values = tf.gather(get("codebook"), codes)
            y = lib.matcompress_pruned_mat_mul(x2, get("indptr"), get("indices"), values,
                                               n=int(get("n_cols")))
        if flat:
            return y
        n = y.shape[-1] if y.shape[-1] is not None else tf.shape(y)[-1]
        return tf.reshape(y, tf.concat([tf.shape(x)[:-1], [n]], axis=0))
