"""Compressed convolutions: Keras ``Conv1D``, ``Conv2D`` and ``Conv3D`` kernels (and their
subclasses') compressed during training (:class:`CompressedConv`) and stripped for inference
(plain Keras convolutions, or :class:`FactoredConv` holding the factors).

A convolution kernel K of shape (*kernel_size, c_in, c_out) (``groups`` > 1: c_in / groups) acts
on an image as a matrix product: with P the image patches (im2col; one row per output position,
the taps and input channels flattened in K's order) the outputs are ``P @ W``, W the kernel's
2-D view (prod(kernel_size) * c_in, c_out) = ``reshape(K, (-1, c_out))``. That view is the matrix
every compressor sees (rows: the receptive field's weights; columns: output channels, as a
Dense kernel's), and the layer's own ``call`` runs on the kernel reshaped back from it.

Two forms (``conv_form`` of :func:`matcompress.tf.apply_compression`):

- ``"reconstructed"`` (any compressor): W is rebuilt from the factors each step
  (:func:`matcompress.tf.factored_rows`), reshaped to K's shape and convolved by the layer's
  own ``call``. The rebuilt kernel is small next to the convolution (kh kw c_in c_out values
  against that many multiply-adds per output position).
- ``"rank_reduced"`` (a :class:`~matcompress.compressors.LowRankCompressor`): the convolution to
  ``rank`` filters followed by a learned 1x1 convolution (projection) back to c_out. With
  ``W ~ U_r S_r V_r^T`` (truncated SVD of the view, at the snapshot) the first kernel is
  ``U_r S_r`` reshaped to (*kernel_size, c_in, rank) and the projection ``V_r^T``; the
  convolution is linear in its kernel's output channels, so ``conv(x, W1) @ W2`` equals the
  convolution with the rank-r reconstruction ``W1 W2``. It costs ``rank / c_out`` of the
  convolution plus the 1x1 projection, and strips to two plain Keras convolutions.

Calibration (``CompressionSchedule(calibrate=True)``): the left operand of W is P, so the
snapshot hands the compressor the patches of its batch, computed by the layer's own
convolution arithmetic (padding, strides, dilation, causal padding, data format) applied to an
identity kernel, and subsampled to at most :data:`CALIBRATION_ROWS` rows (a fixed random
subset). A grouped convolution (``groups`` > 1) factorizes without inputs: each group's outputs
see another slice of the input channels, which one matrix of patches does not describe.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from .. import compressors as _compressors
from ..factors import LowRank
from . import factorize as _factorize
from . import ops as _ops
from .layers import _PACKAGE, CompressedKernel, FactoredKernel, _is_conv

#: Most rows of image patches handed to a calibrating compressor at the snapshot.
CALIBRATION_ROWS = 8192

#: The forms of a compressed convolution.
CONV_FORMS = ("reconstructed", "rank_reduced")

_KERAS_CALLS = (keras.layers.Conv1D.call, keras.layers.Conv2D.call, keras.layers.Conv3D.call)


def _check_form(form):
    if not isinstance(form, str) or form not in CONV_FORMS:
        raise ValueError(f"conv_form must be one of {CONV_FORMS}; got {form!r}")
    return form


def _check_conv(layer, form, compressor=None):
    """Refuses what a compressed convolution cannot take, with a message naming the layer."""
    if not _is_conv(layer):
        raise TypeError(f"layer {layer.name!r} of type {type(layer).__name__} is not a Keras "
                        "Conv1D, Conv2D or Conv3D")
    if getattr(layer, "lora_rank", None):
        raise ValueError(f"layer {layer.name!r} uses LoRA: compress the merged layer")
    if form != "rank_reduced":
        return
    if compressor is not None and not isinstance(compressor, _compressors.LowRankCompressor):
        raise ValueError("conv_form='rank_reduced' needs a LowRankCompressor (its rank is the "
                         f"number of intermediate filters); got {type(compressor).__name__}")
    if layer.groups != 1:
        raise ValueError(f"layer {layer.name!r}: conv_form='rank_reduced' needs groups=1; got "
                         f"groups={layer.groups} (the projection would mix the groups)")
    if type(layer).call not in _KERAS_CALLS:
        raise TypeError(f"layer {layer.name!r} of type {type(layer).__name__} overrides call: "
                        "conv_form='rank_reduced' computes the convolution as Keras' Conv "
                        "layers do, which would bypass it (use conv_form='reconstructed')")


def _view_shape(kernel_shape):
    """(rows, c_out) of the 2-D view of a kernel (*kernel_size, c_in, c_out)."""
    return int(np.prod(kernel_shape[:-1], dtype=np.int64)), int(kernel_shape[-1])


class _ConvMath:
    """The arithmetic of the wrapped convolution ``self.layer`` with a given kernel, as Keras'
    ``Conv1D/2D/3D.call`` computes it (causal padding, strides, padding, dilation, data
    format), split into the convolution, the 1x1 projection and the bias and activation."""

    def _conv(self, x, kernel):
        layer = self.layer
        padding = layer.padding
        if padding == "causal":
            x = keras.ops.pad(x, layer._compute_causal_padding())
            padding = "valid"
        return keras.ops.conv(x, kernel, strides=list(layer.strides), padding=padding,
                              dilation_rate=layer.dilation_rate, data_format=layer.data_format)

    def _project(self, y, right):
        """The 1x1 convolution of ``y`` (rank channels) with ``right`` (rank, c_out)."""
        if self.layer.data_format == "channels_last":
            return tf.tensordot(y, right, axes=[[y.shape.rank - 1], [0]])
        return tf.einsum("nr...,ro->no...", y, right)

    def _rank_reduced(self, x, left, right):
        dtype = x.dtype
        left = tf.reshape(tf.cast(left, dtype), self._kernel_shape[:-1] + (-1,))
        return self._project(self._conv(x, left), tf.cast(right, dtype))

    def _bias_activation(self, y):
        layer = self.layer
        if layer.use_bias:
            bias = tf.cast(tf.convert_to_tensor(layer.bias), y.dtype)
            if layer.data_format == "channels_last":
                y = y + bias
            else:
                y = y + tf.reshape(bias, (1, -1) + (1,) * layer.rank)
        return layer.activation(y) if layer.activation is not None else y

    def _cast_inputs(self, inputs):
        x = tf.convert_to_tensor(inputs)
        if x.dtype != self.layer.compute_dtype:
            x = tf.cast(x, self.layer.compute_dtype)
        return x


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CompressedConv(_ConvMath, CompressedKernel):
    """A Keras ``Conv1D``/``Conv2D``/``Conv3D`` (or subclass) whose kernel A is compressed on a
    :class:`~matcompress.tf.CompressionSchedule` through its 2-D view (prod(kernel_size) * c_in,
    c_out) (see :mod:`matcompress.tf.conv`): the convolution with A, then with the blend
    ``alpha*A + (1-alpha)*W``, then with W, W rebuilt from the factors.

    Parameters
    ----------
    layer : keras.layers.Conv1D, Conv2D or Conv3D
        The wrapped convolution (its bias and other weights stay its own).
    compressor : MatrixCompressor
    schedule : CompressionSchedule, optional
    form : {"reconstructed", "rank_reduced"}, default="reconstructed"
        "reconstructed": the layer's own ``call`` on the kernel rebuilt from the factors.
        "rank_reduced" (``compressor`` a LowRankCompressor, ``groups=1``): after the drop, the
        convolution to ``rank`` filters (``U_r S_r`` of the view's truncated SVD at the
        snapshot) and the 1x1 projection ``V_r^T``; during the blend
        ``alpha*conv(x, A) + (1-alpha)*that``.
    """

    def __init__(self, layer, compressor, schedule=None, kernel_attr="kernel",
                 form="reconstructed", **kwargs):
        if kernel_attr != "kernel":
            raise ValueError(f"CompressedConv compresses the layer's kernel; got "
                             f"kernel_attr={kernel_attr!r}")
        super().__init__(layer, compressor, schedule, kernel_attr="kernel", **kwargs)
        self.form = _check_form(form)
        _check_conv(layer, self.form, self.compressor)

    def build(self, input_shape=None):
        keras.layers.Wrapper.build(self, input_shape)
        kernel_shape = tuple(int(d) for d in self._locate().shape)
        object.__setattr__(self, "_kernel_shape", kernel_shape)  # a tuple, untracked
        self._build_compression(_view_shape(kernel_shape), takes_batch=self.layer.groups == 1)

    def _make_plan(self, shape, dtype, initial, calibrate):
        if self.form != "rank_reduced":
            return super()._make_plan(shape, dtype, initial, calibrate)
        return rank_reduced_plan(self.compressor, shape, dtype, initial, calibrate)

    def patches(self, inputs, max_rows=CALIBRATION_ROWS):
        """The image patches (rows, prod(kernel_size) * c_in) of ``inputs``: the left operand of
        the kernel's 2-D view (``conv(x, K)`` equals ``patches @ view`` row for row, before the
        subsampling), at most ``max_rows`` of them (a fixed random subset, in order)."""
        layer = self.layer
        x = tf.convert_to_tensor(inputs)
        dtype = tf.as_dtype(self.layer.variable_dtype)
        x = tf.cast(x, dtype)
        m = self._core.shape[0]
        try:  # only the images needed for max_rows rows are convolved
            out = layer.compute_output_shape(tuple(x.shape))
            spatial = out[1:-1] if layer.data_format == "channels_last" else out[2:]
            per_image = int(np.prod([int(d) for d in spatial]))
        except (TypeError, ValueError):  # unknown spatial sizes
            per_image = 0
        if per_image > 0:
            x = x[:max(1, math.ceil(max_rows / per_image))]
        eye = tf.reshape(tf.eye(m, dtype=dtype), self._kernel_shape[:-1] + (m,))
        p = self._conv(x, eye)
        if layer.data_format != "channels_last":
            p = tf.transpose(p, [0] + list(range(2, p.shape.rank)) + [1])
        X = tf.reshape(p, [-1, m])
        rows = tf.shape(X)[0]
        keys = tf.random.stateless_uniform([rows], seed=[0, 1])
        keep = tf.sort(tf.math.top_k(keys, k=tf.minimum(rows, max_rows)).indices)
        return tf.gather(X, keep)

    def call(self, inputs, training=None, mask=None):
        core = self._core
        batch = None
        if training and core.plan.uses_inputs and not core.calibrated:
            batch = self.patches(inputs)
        if self.form == "rank_reduced":
            x = self._cast_inputs(inputs)
            y = core.apply(bool(training),
                           lambda A: self._conv(x, tf.cast(tf.reshape(A, self._kernel_shape),
                                                           x.dtype)),
                           lambda f: self._rank_reduced(x, f["left"], f["right"]),
                           x.dtype, inputs=batch)
            return self._bias_activation(y)
        m = core.shape[0]
        dtype = tf.as_dtype(self.layer.variable_dtype)  # the blend in the variables' dtype
        w = core.apply(bool(training), lambda A: tf.cast(A, dtype),
                       lambda f: _ops.factored_rows(tf.range(m), f), dtype, inputs=batch)
        return self._call_with(tf.reshape(w, self._kernel_shape), inputs, training, mask)

    def get_config(self):
        config = super().get_config()
        config.update(form=self.form)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FactoredConv(_ConvMath, FactoredKernel):
    """The stripped :class:`CompressedConv` that keeps the factors
    (``strip_compression(..., convs="factored")``): the wrapped convolution keeps its bias, its
    kernel variable is dropped, and each call convolves with the kernel rebuilt from the
    factors ("reconstructed"), or with the rank-``r`` kernel and then the 1x1 projection
    ("rank_reduced")."""

    def __init__(self, layer, shape, kind, static, parts_spec, kernel_attr="kernel",
                 form="reconstructed", **kwargs):
        super().__init__(layer, shape, kind, static, parts_spec, kernel_attr=kernel_attr,
                         **kwargs)
        self.form = _check_form(form)
        _check_conv(layer, self.form)
        if self.form == "rank_reduced" and kind != "low_rank":
            raise ValueError(f"form='rank_reduced' holds a low_rank factorization; got {kind!r}")

    @classmethod
    def from_factorization(cls, layer, f, kernel_attr="kernel", input_shape=None,
                           form="reconstructed", **kwargs):
        spec, static, arrays = cls._spec(f)
        wrapper = cls(layer, f.shape, f.kind, static, spec, kernel_attr=kernel_attr, form=form,
                      **kwargs)
        wrapper.build(input_shape)
        wrapper._set_parts(arrays)
        return wrapper

    @staticmethod
    def _matrix_shape(kernel_shape):
        return _view_shape(kernel_shape)

    def call(self, inputs, training=None, mask=None):
        if self.form == "rank_reduced":
            x = self._cast_inputs(inputs)
            parts = self.factors()
            return self._bias_activation(self._rank_reduced(x, parts["left"], parts["right"]))
        w = _ops.factored_rows(tf.range(self.shape[0]), self.factors())
        return self._call_with(tf.reshape(w, self._kernel_shape), inputs, training, mask)

    def get_config(self):
        config = super().get_config()
        config.update(form=self.form)
        return config


# ---- the rank-reduced form's factorization ---------------------------------------------------

class _SVDSplit(_compressors.MatrixCompressor):
    """A low-rank compressor's result (data-aware when given X) re-split as ``U S`` and ``V^T``
    of its own SVD (the product unchanged): the rank-reduced form's factors. Not registered."""

    uses_inputs = True

    def __init__(self, inner):
        self.inner = inner

    def compress(self, A, *, grad=None, X=None):
        f = _compressors._compress_with(self.inner, A, X=X)
        return svd_split(f.left, f.right)


def svd_split(left, right):
    """``LowRank(U S, V^T)`` with ``U S V^T`` the SVD of ``left @ right`` (rank r, computed from
    QR factors of the two thin sides, never the m x n product)."""
    import scipy.linalg

    dtype = np.result_type(left, right)
    ql, rl = scipy.linalg.qr(np.asarray(left, np.float64), mode="economic")
    qr_, rr = scipy.linalg.qr(np.asarray(right, np.float64).T, mode="economic")
    u, s, vt = np.linalg.svd(rl @ rr.T)
    return LowRank(np.ascontiguousarray((ql @ u) * s, dtype),
                   np.ascontiguousarray(vt @ qr_.T, dtype))


def rank_reduced_plan(compressor, shape, dtype, initial=None, calibrate=False):
    """The :class:`~matcompress.tf.factorize.Plan` of the rank-reduced form: a ``low_rank``
    factorization whose ``left`` is ``U_r S_r`` and ``right`` is ``V_r^T`` of the truncated SVD
    of A (in the graph), or, with ``calibrate`` and the compressor's calibration inputs, of the
    compressor's data-aware approximation (its numpy ``compress`` with the patches)."""
    if not isinstance(compressor, _compressors.LowRankCompressor):
        raise ValueError("conv_form='rank_reduced' needs a LowRankCompressor; got "
                         f"{type(compressor).__name__}")
    m, n = shape
    dtype = np.dtype(dtype)
    r = compressor.solve((m, n), dtype.itemsize)
    if calibrate:
        return _factorize._numpy_plan(_SVDSplit(compressor), m, n, dtype, initial,
                                      calibrate=True)

    def fn(A):
        s, u, v = tf.linalg.svd(A, full_matrices=False)
        return {"left": u[:, :r] * s[:r], "right": tf.transpose(v[:, :r])}

    return _factorize.Plan(compressor, "low_rank",
                           {"left": ((m, r), dtype, True), "right": ((r, n), dtype, True)},
                           {}, fn)


# ---- export --------------------------------------------------------------------------------

def plain_convs(wrapper, f, inner, input_shape):
    """Plain Keras layers computing what the compressed convolution ``wrapper`` computes with
    the factorization ``f``: ``inner`` (a built copy of the wrapped convolution, bias and all)
    with the kernel rebuilt from ``f``; for the rank-reduced form, a ``keras.Sequential`` named
    as the layer of the convolution to ``rank`` filters (``<name>_reduce``, no bias or
    activation) and the 1x1 convolution back to c_out (``<name>_project``, with the bias and
    activation)."""
    kernel_shape = tuple(int(d) for d in inner.kernel.shape)
    if wrapper.form != "rank_reduced":
        inner.kernel.assign(np.reshape(f.to_dense(), kernel_shape))
        return inner
    left, right = f.left, f.right
    r = left.shape[1]
    cfg = inner.get_config()
    reduce_cfg = dict(cfg, name=f"{wrapper.name}_reduce", filters=r, use_bias=False,
                      activation=None, kernel_regularizer=None, bias_regularizer=None,
                      activity_regularizer=None, kernel_constraint=None, bias_constraint=None)
    reduce = type(inner).from_config(reduce_cfg)
    project = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D, 3: keras.layers.Conv3D}[
        inner.rank](kernel_shape[-1], 1, data_format=inner.data_format,
                    activation=cfg["activation"], use_bias=inner.use_bias,
                    name=f"{wrapper.name}_project", dtype=inner.dtype_policy)
    model = keras.Sequential([keras.Input(tuple(input_shape[1:]), dtype=inner.compute_dtype),
                              reduce, project], name=wrapper.name)
    reduce.kernel.assign(np.reshape(left, kernel_shape[:-1] + (r,)))
    project.kernel.assign(np.reshape(right, (1,) * inner.rank + right.shape))
    if inner.use_bias:
        project.bias.assign(inner.bias)
    return model


__all__ = ["CompressedConv", "FactoredConv", "CALIBRATION_ROWS", "CONV_FORMS",
           "rank_reduced_plan", "svd_split"]
