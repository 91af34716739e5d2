"""Vector codebooks below 4 bits per weight: additive quantization of blocks of weights.

Each row of W is cut into blocks of ``b`` consecutive weights; a block is coded as the sum of one
codeword from each of ``M`` codebooks of ``K`` codewords (``M * log2(K)`` bits a block, so
``M * log2(K) / b`` bits a weight), then scaled per channel:

    W[i, j*b:(j+1)*b] ~ scale * sum_t codebooks[t, code[i, j, t]]

With M = 1 this is a block (product-quantization style) codebook; M > 1 is additive
quantization (A. Babenko and V. Lempitsky, "Additive quantization for extreme vector
compression", CVPR 2014; the form AQLM uses for large language models: V. Egiazarian et al.,
"Extreme compression of large language models via additive quantization", ICML 2024).

- :class:`AdditiveCodebook`: the factorization (kind ``"additive"``).
- :class:`AdditiveCompressor`: the compressor (name ``"additive"``): residual training (each
  codebook a block k-means of the beam's residuals with the codebooks before it), then
  alternating codebook refits (weighted least squares with the codes fixed) and beam-search
  encoding (native, parallel over blocks); least-squares float16 scales; with calibration
  inputs ``X``, weights from ``diag(X^T X)``, GPTQ codes and a codebook refit against the full
  ``X^T X`` (conjugate gradients).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np

from . import _core
from . import factors as _factors
from ._validation import (check_array, check_float, check_inputs, check_int, check_n_threads,
                          check_random_state)
from .compressors import MatrixCompressor, _check_ratio, _unreachable, input_moments
from .factors import Factorization, _float_array, _freeze
from .quant import _F16_MAX, _DecodedTiles, _packed_width, _row_blocks, pack_bits, unpack_bits

__all__ = ["AdditiveCodebook", "AdditiveCompressor", "additive_encode"]

_DENSE_REFIT = 1024     # M * K up to which the codebook refit solves the normal equations
_F16_TINY = 2.0 ** -24
_POINTS_PER_CODE = 256  # residual training fits each codebook to at most 256 K points


def _bits(n_codes):
    """Bits per code: ceil(log2 K) for K <= 256 (at least 1), 16 beyond."""
    return max(1, (n_codes - 1).bit_length()) if n_codes <= 256 else 16


def additive_encode(X, codebooks, *, init=None, beam_size=8, ordered=False, return_beam=False,
                    n_threads=None):
    """Codes of the rows of ``X`` (n, b) as sums of one codeword from each codebook.

    Parameters
    ----------
    X : ndarray of shape (n, b), float32 or float64
    codebooks : ndarray of shape (M, K, b), same dtype as X
    init : ndarray of shape (n, M), optional
        Starting codes: a row keeps them unless the search finds a strictly lower error.
    beam_size : int, default=8
        Partial code sets kept per row after each step of the search (1: greedy residual
        coding in the best codebook order).
    ordered : bool, default=False
        Step t of the search picks from codebook t only (residual quantization's order);
        by default from any codebook the partial set has not used yet (additive
        quantization's search).
    return_beam : bool, default=False
        Also return the residuals of every row's final beam.
    n_threads : int, optional

    Returns
    -------
    codes : ndarray of shape (n, M), int32
    errors : ndarray of shape (n,)
        Each row's squared error ``||x - sum_t codebooks[t, codes[t]]||^2``.
    beam_residuals : ndarray of shape (n, beam_size, b)
        With ``return_beam``: ``x`` minus each final hypothesis's sum, the best first (slots
        beyond the hypotheses found repeat the best). Residual training fits the next codebook
        to them (as faiss's ``ResidualQuantizer`` trains on its beam).
    """
    X = check_array(X, "X", allow_empty=True)
    codebooks = check_array(codebooks, "codebooks", dtype=X.dtype, ndim=3)
    if codebooks.shape[2] != X.shape[1]:
        raise ValueError(f"codebooks must have shape (M, K, {X.shape[1]}) for X of shape "
                         f"{X.shape}; got {codebooks.shape}")
    beam = check_int(beam_size, "beam_size", min_value=1, max_value=64)
    n_threads = check_n_threads(n_threads)
    n_threads = 0 if n_threads in (None, -1) else n_threads
    if init is not None:
        init = np.asarray(init)
        if init.shape != (X.shape[0], codebooks.shape[0]) or init.dtype.kind not in "iu":
            raise ValueError(f"init must be integer codes of shape "
                             f"{(X.shape[0], codebooks.shape[0])}; got {init.dtype} "
                             f"{init.shape}")
        if init.size and (int(init.min()) < 0 or int(init.max()) >= codebooks.shape[1]):
            raise ValueError(f"init codes must lie in [0, {codebooks.shape[1]})")
        init = np.ascontiguousarray(init, np.int32)
    # The native scores ||r||^2 - 2 <r, c> + ||c||^2 are formed in the dtype of X: squares
    # overflow beyond ~1e19 in float32 (no finite score: codes of -1) and underflow below
    # ~1e-19 (every score equal). A power-of-two rescaling is exact and keeps every comparison.
    top = max(float(np.abs(X).max(initial=0.0)), float(np.abs(codebooks).max(initial=0.0)))
    shift = 0
    if top > 0 and not 2.0 ** -16 <= top <= 2.0 ** 16:
        shift = -math.frexp(top)[1]
        X, codebooks = np.ldexp(X, shift), np.ldexp(codebooks, shift)
    fn = _core.additive_encode_f64 if X.dtype == np.float64 else _core.additive_encode_f32
    out = fn(X, codebooks, init, beam, n_threads, bool(ordered), bool(return_beam))
    codes, err = out[0], out[1]
    if shift:
        with np.errstate(over="ignore"):  # an error beyond the dtype's range is inf
            err = np.ldexp(err, -2 * shift)
    if not return_beam:
        return codes, err
    res = out[3] if not shift else np.ldexp(out[3], -shift)
    return codes, err, res


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class AdditiveCodebook(_DecodedTiles, Factorization):
    """W[i, j*b:(j+1)*b] ~ scale * sum_t codebooks[t, code[i, j, t]].

    ``codebooks`` (M, K, b) in the dtype of W. ``codes`` (m, ceil(n / b * M * bits / 8)) uint8:
    row i's codes in block order, the M codes of a block together (code ``j * M + t`` of the
    row), packed at ``bits = ceil(log2 K)`` bits (16 beyond 256) by :func:`matcompress.pack_bits`.
    ``scales`` float16: ``channel_axis=1`` one per column (shape (n,): the block's weights take
    their own column's scale), ``channel_axis=0`` one per row (shape (m,)).

    Stored bytes (``nbytes``): codes + codebooks + scales; the integers (n_cols, channel_axis)
    are not counted.
    """

    codes: np.ndarray
    codebooks: np.ndarray
    scales: np.ndarray
    n_cols: int
    channel_axis: int = 1
    kind: ClassVar[str] = "additive"

    def __post_init__(self):
        cb = _float_array(self.codebooks, "codebooks", 3)
        M, K, b = cb.shape
        if M < 1 or K < 1 or b < 1:
            raise ValueError(f"codebooks must have shape (M, K, b) with every side >= 1; got "
                             f"{cb.shape}")
        if K > 1 << 16:
            raise ValueError(f"codebooks may hold at most 65536 codes each (16 bits); got {K}")
        if not np.isfinite(cb).all():
            raise ValueError("codebooks contain NaN or infinity")
        n = check_int(self.n_cols, "n_cols", min_value=1)
        if n % b:
            raise ValueError(f"n_cols={n} must be a multiple of the block size {b}")
        axis = check_int(self.channel_axis, "channel_axis")
        if axis not in (0, 1):
            raise ValueError(f"channel_axis must be 0 (rows) or 1 (columns); got {axis}")
        codes = np.asarray(self.codes)
        if codes.dtype != np.uint8 or codes.ndim != 2:
            raise TypeError(f"codes must be a 2-D uint8 array (packed codes); got dtype "
                            f"{codes.dtype}, shape {codes.shape}")
        if codes.shape[0] < 1:
            raise ValueError("codes must hold at least one row")
        per_row, bits = n // b * M, _bits(K)
        if codes.shape[1] != _packed_width(per_row, bits):
            raise ValueError(f"codes must have ceil(n / b * M * bits / 8) = "
                             f"{_packed_width(per_row, bits)} bytes per row; got "
                             f"{codes.shape[1]}")
        used = (per_row * bits) % 8
        if used and int(codes[:, -1].max()) >> used:
            raise ValueError("codes: the unused high bits of each row's last byte must be 0")
        if K < 1 << bits:
            for a, z in _row_blocks(codes.shape[0], n):
                top = int(unpack_bits(codes[a:z], bits, per_row).max())
                if top >= K:
                    raise ValueError(f"codes must lie in [0, {K}); got {top}")
        m = codes.shape[0]
        scales = np.asarray(self.scales)
        if scales.dtype != np.float16:
            raise TypeError(f"scales must be float16; got dtype {scales.dtype}")
        want = (n,) if axis == 1 else (m,)
        if scales.shape != want:
            raise ValueError(f"scales must have shape {want} (channel_axis={axis}); got "
                             f"{scales.shape}")
        if not np.isfinite(scales).all():
            raise ValueError("scales contain NaN or infinity")
        object.__setattr__(self, "n_cols", n)
        object.__setattr__(self, "channel_axis", axis)
        _freeze(self, codes=codes, codebooks=cb, scales=scales)

    dtype = property(lambda self: self.codebooks.dtype)
    n_codebooks = property(lambda self: self.codebooks.shape[0])
    n_codes = property(lambda self: self.codebooks.shape[1])
    block_size = property(lambda self: self.codebooks.shape[2])
    bits = property(lambda self: _bits(self.n_codes))

    @property
    def nbytes(self):
        return int(self.codes.nbytes + self.codebooks.nbytes + self.scales.nbytes)

    def unpacked_codes(self, start=0, stop=None):
        """Codes of rows [start, stop) as an (rows, n / b, M) integer array."""
        stop = self.shape[0] if stop is None else stop
        nb, M = self.n_cols // self.block_size, self.n_codebooks
        c = unpack_bits(self.codes[start:stop], self.bits, nb * M)
        return c.reshape(c.shape[0], nb, M)

    def _scale_tile(self, scales, start, stop):
        return scales[None, :] if self.channel_axis == 1 else scales[start:stop, None]

    def _tile(self, start, stop, dtype):
        """(codes (rows, nb, M), unscaled decoded rows (rows, n), scale tile, W tile)."""
        codes = self.unpacked_codes(start, stop)
        cb = self._as("codebooks", dtype)
        d = cb[0][codes[..., 0]]
        for t in range(1, self.n_codebooks):
            d += cb[t][codes[..., t]]
        d = d.reshape(codes.shape[0], self.n_cols)
        s = self._scale_tile(self._as("scales", dtype), start, stop)
        return codes, d, s, d * s

    trainable_fields: ClassVar[tuple[str, ...]] = ("codebooks", "scales")

    def _backward(self, x, dy, need_dx, need_grads):
        m, n = self.shape
        M, K, b = self.codebooks.shape
        ct = x.dtype
        dx = np.empty((x.shape[0], m), ct) if need_dx else None
        dcb = np.zeros((M, K, b)) if need_grads else None
        dsc = np.zeros(self.scales.shape) if need_grads else None
        for a, z in self._blocks():
            codes, d, s, w = self._tile(a, z, ct)
            if need_dx:
                dx[:, a:z] = dy @ w.T
            if not need_grads:
                continue
            g = x[:, a:z].T @ dy  # dL/dW for these rows: (rows, n)
            gs = (g * s).reshape(z - a, n // b, b)
            for t in range(M):
                idx = np.ravel(codes[..., t])
                for e in range(b):
                    dcb[t, :, e] += np.bincount(idx, weights=np.ravel(gs[..., e]), minlength=K)
            p = g * d
            if self.channel_axis == 1:
                dsc += p.sum(axis=0)
            else:
                dsc[a:z] += p.sum(axis=1)
        if not need_grads:
            return dx, {}
        return dx, {"codebooks": dcb.astype(ct), "scales": dsc.astype(ct)}


_factors._KINDS[AdditiveCodebook.kind] = AdditiveCodebook


# --- the compressor ------------------------------------------------------------------------------

#: Block sizes, code widths and codebook counts ``compression_ratio`` chooses among.
BLOCK_SIZES = (8, 4, 2)
CODE_BITS = (8, 7, 6, 5, 4)
MAX_CODEBOOKS = 3


class AdditiveCompressor(MatrixCompressor):
    """A ~ scales * (sum of M codewords per block of ``block_size`` weights of a row)
    (:class:`AdditiveCodebook`): block codebooks (``n_codebooks=1``) and additive quantization.

    Stored bytes: ``m * ceil(n / b * M * bits / 8)`` (codes, ``bits = ceil(log2 n_codes)``, 16
    beyond 256) + ``M * n_codes * b * itemsize`` (codebooks) + 2 per scale (float16; n of them
    for ``channel_axis=1``, m for 0).

    Parameters
    ----------
    n_codebooks : int, optional
        M, the codebooks summed per block (1 to 16). Default 2 when ``n_codes`` is given.
    n_codes : int, optional
        K, codewords per codebook (2 to 65,536, at most half the number of blocks).
    block_size : int, optional
        b, consecutive weights of a row per block (must divide n). Default 8 when ``n_codes`` is
        given.
    compression_ratio : float, optional
        Instead of ``n_codes`` (and M, b when they are not given): among b in (8, 4, 2), code
        widths 4 to 8 bits and 1 to 3 codebooks that fit dense bytes / ratio (and K at most
        half the blocks), the most code bits per weight; ties go to the longer block, then to
        fewer, larger codebooks.
    beam_size : int, default=8
        Partial code sets the encoder keeps per block (:func:`additive_encode`).
    n_iter : int, default=2
        Alternations of codebook refit and beam-search encoding after the residual training
        (stops early when the error falls by less than 0.01 %).
    channel_axis : {1, 0}, default=1
        1: one float16 scale per column (Keras kernels, ``x @ W``); 0: one per row (embedding
        tables).
    max_iter : int, default=25
        Lloyd iterations of each codebook's block k-means in the residual training.
    data_aware : {"gptq", "hessian", "diagonal"}, default="gptq"
        With calibration inputs ``X``: the fit is weighted by ``diag(X^T X)`` in every case.
        ``"hessian"`` then refits the codebooks (codes and scales fixed) to minimize the output
        error ``trace(E^T H E)``, ``H = X^T X / n_samples`` (conjugate gradients); ``"gptq"``
        also codes the rows again in order with GPTQ's error feedback
        (:func:`matcompress.gptq.gptq_quantize`; each row's blocks beam-searched against the
        fitted codebooks, from the row as updated by the errors of the rows before it) and
        refits the codebooks against H after that. The refinements ("hessian" and, for "gptq",
        "gptq") of the diagonal fit are computed from three quarters of the rows of X and judged
        with the diagonal fit itself by the output error on the quarter held out (with fewer
        than 8 rows: on all of them); the winner is then computed from every row.
    damp : float, default=0.01
        ``H + damp * mean(diag H) * I`` for the refits, GPTQ and the diagonal weights.
    max_fit_points : int, default=2**18
        Blocks the codebooks are fitted on; beyond, a seeded sample of whole rows (every block
        is still encoded).
    random_state : int, Generator or None
    n_threads : int, optional

    Notes
    -----
    Scales first: the RMS of each channel (weighted by ``diag(H)`` with X), relative to their
    geometric mean so they sit near 1 and the codebooks hold the weights' magnitude. The
    normalized blocks go through residual training: codebook t is a block k-means (at most 256 K
    points, sampled) of the residuals of all ``beam_size`` hypotheses the beam search keeps with
    codebooks 0 to t-1, as faiss's ``ResidualQuantizer`` trains (fitting the runners-up too
    lets later codebooks correct earlier choices: at M=4, K=16, b=4 on a Gaussian matrix the
    error is 0.097 against 0.128 for codebooks fitted to the best residual only); every block
    is then beam-searched against all M. Then ``n_iter`` times: the codebooks refitted by weighted least squares
    with the codes fixed (the normal equations when ``M * K <= 1024``, else three block
    Gauss-Seidel sweeps, each exact in one codebook), and every block re-encoded by beam search
    from its current codes (never worse). Finally each scale is refitted by least squares and
    rounded to float16. The error is non-increasing through every step.
    """

    name = "additive"
    uses_inputs = True

    def __init__(self, n_codebooks=None, n_codes=None, block_size=None, *,
                 compression_ratio=None, beam_size=8, n_iter=2, channel_axis=1, max_iter=25,
                 data_aware="gptq", damp=0.01, max_fit_points=2**18, random_state=None,
                 n_threads=None):
        self.n_codebooks = n_codebooks
        self.n_codes = n_codes
        self.block_size = block_size
        self.compression_ratio = compression_ratio
        self.beam_size = beam_size
        self.n_iter = n_iter
        self.channel_axis = channel_axis
        self.max_iter = max_iter
        self.data_aware = data_aware
        self.damp = damp
        self.max_fit_points = max_fit_points
        self.random_state = random_state
        self.n_threads = n_threads

    @staticmethod
    def stored_bytes(m, n, itemsize, n_codebooks, n_codes, block_size, channel_axis=1):
        """Stored bytes of an :class:`AdditiveCodebook` of this configuration."""
        per_row = n // block_size * n_codebooks
        return (m * _packed_width(per_row, _bits(n_codes))
                + n_codebooks * n_codes * block_size * itemsize
                + 2 * (n if channel_axis == 1 else m))

    def _axis(self):
        axis = check_int(self.channel_axis, "channel_axis")
        if axis not in (0, 1):
            raise ValueError(f"channel_axis must be 0 (rows) or 1 (columns); got {axis}")
        return axis

    def solve(self, shape, itemsize):
        """(n_codebooks, n_codes, block_size) used for a matrix of ``shape``."""
        m, n = shape
        axis = self._axis()
        ratio = _check_ratio(self.compression_ratio)
        if (self.n_codes is None) == (ratio is None):
            raise ValueError(f"{self.name}: give exactly one of n_codes and compression_ratio")
        sizes = BLOCK_SIZES
        if self.block_size is not None:
            b = check_int(self.block_size, "block_size", min_value=1)
            if n % b:
                raise ValueError(f"block_size={b} must divide n={n}")
            sizes = (b,)
        books = range(1, MAX_CODEBOOKS + 1)
        if self.n_codebooks is not None:
            books = (check_int(self.n_codebooks, "n_codebooks", min_value=1, max_value=16),)
        if ratio is None:
            b = sizes[0] if self.block_size is not None else 8
            if n % b:
                raise ValueError(f"block_size={b} (the default) must divide n={n}; give "
                                 "block_size")
            M = books[0] if self.n_codebooks is not None else 2
            n_blocks = m * n // b
            K = check_int(self.n_codes, "n_codes", min_value=2, max_value=min(1 << 16,
                          max(2, n_blocks // 2)),
                          max_reason=f"16 bits, and half the {n_blocks} blocks")
            return M, K, b
        budget = m * n * itemsize / ratio
        best, smallest = None, None
        for b in sizes:
            if n % b:
                continue
            n_blocks = m * n // b
            for bits in CODE_BITS:
                K = 1 << bits
                if K > n_blocks // 2:
                    continue
                for M in books:
                    size = self.stored_bytes(m, n, itemsize, M, K, b, axis)
                    if smallest is None or size < smallest:
                        smallest = size
                    if size > budget:
                        continue
                    key = (M * bits / b, b, -M)
                    if best is None or key > best[0]:
                        best = (key, (M, K, b))
        if best is None:
            if smallest is None:
                raise ValueError(f"{self.name}: no block size of {sizes} divides n={n} with "
                                 "enough blocks for 16 codes")
            raise _unreachable(self.name, ratio, m * n * itemsize / smallest,
                               "4-bit codes of the longest block are the smallest form")
        return best[1]

    def compress(self, A, *, grad=None, X=None):
        """Compress A (m x n). ``X`` (n_samples, m): calibration inputs of the layer; ``grad``
        is ignored."""
        A = check_array(A, "A")
        m, n = A.shape
        M, K, b = self.solve(A.shape, A.dtype.itemsize)
        axis = self._axis()
        beam = check_int(self.beam_size, "beam_size", min_value=1, max_value=64)
        n_iter = check_int(self.n_iter, "n_iter", min_value=0)
        max_iter = check_int(self.max_iter, "max_iter", min_value=1)
        limit = check_int(self.max_fit_points, "max_fit_points", min_value=1)
        if self.data_aware not in ("gptq", "hessian", "diagonal"):
            raise ValueError(f"data_aware must be 'gptq', 'hessian' or 'diagonal'; got "
                             f"{self.data_aware!r}")
        damp = check_float(self.damp, "damp", min_value=0.0)
        check_n_threads(self.n_threads)
        n_threads = self.n_threads
        rng = check_random_state(self.random_state)
        seed = int(rng.integers(2**31))

        def fit(h):
            run = _Fit(A, h, M, K, b, axis, beam, max_iter, np.random.default_rng(seed),
                       n_threads)
            return run.run(n_iter, limit)

        if X is None:
            return fit(None)
        X = check_inputs(X, m)
        diagonal_only = self.data_aware == "diagonal"
        H, h = _moments(X, damp, diagonal_only)
        base = fit(h)  # weighted by diag(H): the diagonal route
        if H is None:
            return base

        def refine(name, H):
            if name == "diagonal":
                return base
            f = _gptq_codes(A, H, base, beam, n_threads) if name == "gptq" else base
            return _hessian_refit(A, H, f)

        names = ("diagonal", "hessian") + (("gptq",) if self.data_aware == "gptq" else ())
        n_samples = X.shape[0]
        if n_samples < 8:  # too few rows to hold any out: judged on the calibration rows
            return min((refine(name, H) for name in names), key=lambda f: _output_error(A, H, f))
        # The refinements are judged on a quarter of the rows held out of the H they are
        # fitted to (GPTQ's codes can fit the noise of H: with 2 samples per input it halved
        # the calibration error of a synthetic layer and raised the held-out one by 10 %); the
        # winner is then computed from every row.
        held = np.arange(3, n_samples, 4)
        kept = np.setdiff1d(np.arange(n_samples), held)
        H_kept, _ = _moments(X[kept], damp, False)
        H_held, _ = _moments(X[held], 0.0, False)
        if H_kept is None or H_held is None:
            return base
        errs = [_output_error(A, H_held, refine(name, H_kept)) for name in names]
        return refine(names[int(np.argmin(errs))], H)


def _moments(X, damp, diagonal_only):
    """(H + damp * mean(diag H) * I or None, row weights h or None) of calibration inputs."""
    H, diag = input_moments(X, diagonal_only=diagonal_only)
    if not diag.max() > 0:
        return None, None
    h = diag + damp * diag.mean()
    h = h / h.max()
    if H is not None:
        H = H + damp * diag.mean() * np.eye(X.shape[1])
    return H, h


class _Fit:
    """One run of AdditiveCompressor.compress."""

    def __init__(self, A, h, M, K, b, axis, beam, max_iter, rng, n_threads):
        self.A, self.h, self.M, self.K, self.b, self.axis = A, h, M, K, b, axis
        self.beam, self.max_iter, self.rng, self.n_threads = beam, max_iter, rng, n_threads
        self.dtype = A.dtype

    # -- scales ---------------------------------------------------------------------------

    def _first_scales(self):
        """float16 scales near 1 (RMS of each channel over their geometric mean) and the
        factor ``ref`` the codebooks absorb."""
        A, h = self.A.astype(np.float64), self.h
        if self.axis == 1:
            w = np.ones(A.shape[0]) if h is None else h
            rms = np.sqrt((w[:, None] * A * A).sum(0) / w.sum())
        else:
            rms = np.sqrt((A * A).mean(1))
        live = rms > 0
        if not live.any():
            return np.zeros(rms.shape, np.float16)
        ref = math.exp(float(np.log(rms[live]).mean()))
        s = np.where(live, rms / ref, 0.0)
        s = np.clip(s, 0.0, _F16_MAX)
        s[(s > 0) & (s < _F16_TINY)] = _F16_TINY
        return s.astype(np.float16)

    def _normalized(self, scales):
        s = scales.astype(np.float64)
        inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > 0)
        A = self.A.astype(np.float64)
        Z = A * (inv[None, :] if self.axis == 1 else inv[:, None])
        return Z.astype(self.dtype)

    def _block_weights(self, scales):
        """Weight of each block (m, n / b): h of its row, times its row's scale^2 (axis 0)."""
        m, n = self.A.shape
        w = np.ones(m) if self.h is None else self.h.copy()
        if self.axis == 0:
            w = w * scales.astype(np.float64) ** 2
        return np.repeat(w[:, None], n // self.b, axis=1)

    # -- the fit --------------------------------------------------------------------------

    def run(self, n_iter, limit):
        m, n = self.A.shape
        M, K, b = self.M, self.K, self.b
        scales = self._first_scales()
        Z = self._normalized(scales)
        blocks = Z.reshape(-1, b)
        weights = self._block_weights(scales).reshape(-1)
        nb = n // b
        if blocks.shape[0] > limit:
            rows = np.sort(self.rng.choice(m, size=max(1, limit // nb), replace=False))
            sel = (rows[:, None] * nb + np.arange(nb)[None, :]).reshape(-1)
        else:
            sel = None
        fx = blocks if sel is None else blocks[sel]
        fw = weights if sel is None else weights[sel]
        if not (fw > 0).any():
            fw = np.ones_like(fw)
        K = min(K, fx.shape[0])
        books, codes = self._rvq(fx, fw, K)
        err = _weighted_error(fx, fw, books, codes)
        for _ in range(n_iter):
            books = _refit_books(fx, fw, books, codes)
            codes = self._encode(fx, books, codes)
            new = _weighted_error(fx, fw, books, codes)
            done = not new < err * (1 - 1e-4)
            err = min(err, new)
            if done:
                break
        books = _refit_books(fx, fw, books, codes).astype(self.dtype)
        if sel is not None:  # every block coded against the fitted codebooks
            codes = np.empty((blocks.shape[0], M), np.int32)
            step = max(1, (1 << 18))
            for a in range(0, blocks.shape[0], step):
                codes[a:a + step] = self._encode(blocks[a:a + step], books)
        if books.shape[1] < self.K:  # fewer blocks than codes asked: pad with zeros
            books = np.concatenate([books, np.zeros((M, self.K - books.shape[1], b),
                                                    self.dtype)], axis=1)
        codes = codes.reshape(m, nb * M)
        packed = pack_bits(codes, _bits(self.K))
        f = AdditiveCodebook(packed, books, scales, n, self.axis)
        return self._refit_scales(f)

    def _rvq(self, x, w, K):
        """Residual training: codebook t is a block k-means of the residuals of every
        hypothesis of the beam search with the first t codebooks (as faiss's
        ``ResidualQuantizer`` trains), so later codebooks also serve the runners-up and the
        beam search can combine them; then every block is coded against all M."""
        from .kmeans import fit_codebook

        M, b = self.M, self.b
        books = np.zeros((M, K, b))
        n = x.shape[0]
        for t in range(M):
            if t == 0:
                points, pw = x, w
            else:
                _, _, res = additive_encode(x, books[:t].astype(self.dtype),
                                            beam_size=self.beam, ordered=True,
                                            return_beam=True, n_threads=self.n_threads)
                points = res.reshape(-1, b)
                pw = np.repeat(w, self.beam)
            seed = int(self.rng.integers(2**31))
            cb, _ = fit_codebook(points.astype(self.dtype).reshape(1, -1), K, block_size=b,
                                 method="lloyd", max_iter=self.max_iter, random_state=seed,
                                 sample_weight=pw.astype(self.dtype).reshape(1, -1),
                                 max_points_per_centroid=_POINTS_PER_CODE,
                                 n_threads=self.n_threads)[:2]
            books[t] = np.reshape(cb, (K, b))  # (K,) for b = 1
        codes = np.zeros((n, M), np.int32) if M == 0 else self._encode(x, books)
        return books, codes

    def _encode(self, x, books, init=None):
        return additive_encode(x, books.astype(self.dtype), init=init, beam_size=self.beam,
                               ordered=True, n_threads=self.n_threads)[0]

    def _refit_scales(self, f):
        """Least-squares scale of each channel given the decoded codes (weighted by h),
        rounded to float16; kept only where that lowers the channel's error."""
        A = self.A.astype(np.float64)
        s0 = f.scales.astype(np.float64)
        inv = np.divide(1.0, s0, out=np.zeros_like(s0), where=s0 != 0)
        d = f.to_dense().astype(np.float64) * (inv[None, :] if self.axis == 1 else inv[:, None])
        w = np.ones(A.shape[0]) if self.h is None else self.h
        W = w[:, None]
        axis = 0 if self.axis == 1 else 1
        num = (W * A * d).sum(axis)
        den = (W * d * d).sum(axis)
        old = f.scales.astype(np.float64)
        new = np.divide(num, den, out=old.copy(), where=den > 0)
        new16 = np.clip(new, -_F16_MAX, _F16_MAX).astype(np.float16)
        def err(s):
            s = s.astype(np.float64)
            e = A - d * (s[None, :] if self.axis == 1 else s[:, None])
            return (W * e * e).sum(axis)
        keep = err(new16) < err(old.astype(np.float16))
        scales = np.where(keep, new16, f.scales).astype(np.float16)
        return dataclasses.replace(f, scales=scales)


def _decode(books, codes):
    out = books[0][codes[:, 0]].astype(np.float64)
    for t in range(1, books.shape[0]):
        out += books[t][codes[:, t]]
    return out


def _weighted_error(x, w, books, codes):
    e = x.astype(np.float64) - _decode(books, codes)
    return float((w * np.einsum("ij,ij->i", e, e)).sum())


def _refit_books(x, w, books, codes):
    """Codebooks minimizing sum_i w_i ||x_i - sum_t books[t, codes[i, t]]||^2 with the codes
    fixed (float64). Unused codewords keep their values."""
    M, K, b = books.shape
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    books = books.astype(np.float64)
    if M * K <= _DENSE_REFIT:
        G = np.zeros((M * K, M * K))
        rhs = np.zeros((M * K, b))
        for t in range(M):
            for u in range(t, M):
                blk = np.bincount(codes[:, t] * K + codes[:, u], weights=w,
                                  minlength=K * K).reshape(K, K)
                G[t * K:(t + 1) * K, u * K:(u + 1) * K] = blk
                if u != t:
                    G[u * K:(u + 1) * K, t * K:(t + 1) * K] = blk.T
            for e in range(b):
                rhs[t * K:(t + 1) * K, e] = np.bincount(codes[:, t], weights=w * x[:, e],
                                                        minlength=K)
        theta = books.reshape(M * K, b)
        # Solve for the change: codewords no block uses (zero rows of G) stay as they are, and
        # the shifts between codebooks (G is singular along them) are damped.
        diag = np.diag(G).copy()
        lam = 1e-9 * max(float(diag.mean()), 1e-300)
        import scipy.linalg

        Gd = G + lam * np.eye(M * K)
        Gd[np.diag_indices_from(Gd)] += (diag == 0)
        try:
            delta = scipy.linalg.solve(Gd, rhs - G @ theta, assume_a="pos")
        except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
            delta = np.linalg.lstsq(Gd, rhs - G @ theta, rcond=None)[0]
        new = (theta + delta).reshape(M, K, b)
        if _weighted_error(x, w, new, codes) <= _weighted_error(x, w, books, codes):
            return new
        return books
    # Block Gauss-Seidel: each codebook's exact update with the others fixed.
    approx = _decode(books, codes)
    for _ in range(3):
        for t in range(M):
            approx -= books[t][codes[:, t]]
            r = x - approx
            cnt = np.bincount(codes[:, t], weights=w, minlength=K)
            used = cnt > 0
            for e in range(b):
                s = np.bincount(codes[:, t], weights=w * r[:, e], minlength=K)
                books[t, used, e] = s[used] / cnt[used]
            approx += books[t][codes[:, t]]
    return books


def _output_error(A, H, f):
    E = A.astype(np.float64) - f.to_dense().astype(np.float64)
    return float(np.einsum("ij,ij->", E, H @ E))


def _gptq_codes(A, H, f, beam, n_threads):
    """``f`` with its codes chosen again row by row by GPTQ (codebooks and scales fixed)."""
    from .gptq import gptq_quantize

    m, n = f.shape
    M, K, b = f.codebooks.shape
    books = np.ascontiguousarray(f.codebooks, np.float64)
    s = f.scales.astype(np.float64)
    old = f.unpacked_codes().astype(np.int32)  # (m, nb, M)
    codes = np.empty_like(old)

    def quantize_rows(rows, start):
        scale = s if f.channel_axis == 1 else np.full(n, s[start])
        safe = np.where(scale == 0, 1.0, scale)
        z = (rows[0] / safe).reshape(-1, b)
        c, _ = additive_encode(z, books, init=old[start], beam_size=beam, ordered=True,
                               n_threads=n_threads)
        codes[start] = c
        return (_decode(books, c).reshape(n) * scale)[None, :]

    gptq_quantize(A, H, quantize_rows, damp=0.0)  # H is dampened already
    return dataclasses.replace(f, codes=pack_bits(codes.reshape(m, -1), f.bits))


def _hessian_refit(A, H, f, n_steps=25):
    """Codebooks refitted (codes and scales fixed) to minimize trace(E^T H E), E = A - W_hat,
    by conjugate gradients on the normal equations; returned when the output error falls."""
    m, n = f.shape
    M, K, b = f.codebooks.shape
    A64 = A.astype(np.float64)
    s = f.scales.astype(np.float64)
    S = s[None, :] if f.channel_axis == 1 else s[:, None]
    codes = f.unpacked_codes().reshape(-1, M)  # (m * nb, M)

    def decode(theta):
        return _decode(theta, codes).reshape(m, n) * S

    def adjoint(G):
        g = (G * S).reshape(-1, b)
        out = np.zeros((M, K, b))
        for t in range(M):
            for e in range(b):
                out[t, :, e] = np.bincount(codes[:, t], weights=g[:, e], minlength=K)
        return out

    def output_error(theta):
        E = A64 - decode(theta)
        return float(np.einsum("ij,ij->", E, H @ E))

    theta = f.codebooks.astype(np.float64)
    start = output_error(theta)
    # Normal equations: adjoint(H decode(d)) = adjoint(H (A - decode(theta))) for the step d.
    r = adjoint(H @ (A64 - decode(theta)))
    d = np.zeros_like(theta)
    p = r.copy()
    rr = float((r * r).sum())
    r0 = rr
    for _ in range(n_steps):
        if rr <= 1e-20 * r0 or rr == 0:
            break
        q = adjoint(H @ decode(p))
        pq = float((p * q).sum())
        if not pq > 0:
            break
        alpha = rr / pq
        d += alpha * p
        r -= alpha * q
        new = float((r * r).sum())
        p = r + (new / rr) * p
        rr = new
    # Judged as stored (rounded to the dtype), so the result never has a higher error.
    theta_new = (theta + d).astype(f.dtype)
    if output_error(theta_new.astype(np.float64)) < start:
        return dataclasses.replace(f, codebooks=theta_new)
    return f
