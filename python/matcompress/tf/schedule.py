"""When a compressed layer factorizes its matrix, blends, and drops the full matrix."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from .._validation import check_float, check_int


class _Configured:
    """``from_config``, equality and ``repr`` from a schedule's ``get_config()``."""

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(other) is type(self) and other.get_config() == self.get_config()

    __hash__ = None

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class CompressionSchedule(_Configured):
    """The phases of a compressed matrix, counted in training steps (calls with
    ``training=True``; step t is the t-th such call, from 0).

    - Steps ``t < begin_step``: the full matrix A trains alone.
    - Step ``begin_step``: A is factorized (inside the graph) into the compressor's parts.
    - From then on the product is ``alpha * (x @ A) + (1 - alpha) * factored_matmul(x, parts)``
      with ``alpha = 1 - alpha_decrement * (1 + (t - begin_step) // update_every)``: alpha falls
      by ``alpha_decrement`` every ``update_every`` steps, from ``1 - alpha_decrement`` at the
      snapshot. Both A and the parts train.
    - From :attr:`drop_step` (the first step with alpha = 0): A is not read any more; only the
      parts train (with :class:`CompressionCallback` in ``model.fit``, A also leaves the trainable
      variables, so that the optimizer no longer updates it or its slots).
    - From ``end_step`` (if >= 0): the parts are frozen too.

    Parameters
    ----------
    begin_step : int, default=0
    end_step : int, default=-1
        -1: the parts train to the end.
    update_every : int, default=1
    alpha_decrement : float in (0, 1], default=0.1
        1 switches to the factors at the snapshot.
    calibrate : bool, default=False
        Data-aware factorization: at ``begin_step`` a compressor that takes calibration inputs
        (``uses_inputs``, e.g. k-means with GPTQ codes) receives the batch that the compressed
        matrix multiplies at that step (the inputs of a Dense layer, flattened to
        (rows, m); under a distribution strategy the batches of every replica, gathered, so
        every replica computes the same factors) and minimizes the error of that batch's
        product ``||X (A - W)||`` rather than ``||A - W||``. The factorization then runs on
        the host through its numpy ``compress``. Layers whose input is not the left operand of
        their matrix (embedding tables, recurrent kernels) factorize without inputs.
    """

    def __init__(self, begin_step=0, end_step=-1, update_every=1, alpha_decrement=0.1,
                 calibrate=False):
        self.begin_step = check_int(begin_step, "begin_step", min_value=0)
        self.end_step = check_int(end_step, "end_step", min_value=-1)
        self.update_every = check_int(update_every, "update_every", min_value=1)
        self.alpha_decrement = check_float(alpha_decrement, "alpha_decrement")
        if not 0.0 < self.alpha_decrement <= 1.0:
            raise ValueError(f"alpha_decrement must lie in (0, 1]; got {alpha_decrement}")
        if not isinstance(calibrate, (bool, np.bool_)):
            raise TypeError(f"calibrate must be True or False; got {calibrate!r}")
        self.calibrate = bool(calibrate)
        if self.end_step != -1 and self.end_step <= self.begin_step:
            raise ValueError(f"end_step={self.end_step} must come after begin_step="
                             f"{self.begin_step} (or be -1: never)")
        # The first decrement count q (alpha = 1 - d (1 + q)) at which alpha reaches 0, in
        # exact arithmetic up to rounding: 0.1 ten times is 0.
        self._q_zero = max(0, math.ceil(1.0 / self.alpha_decrement - 1e-9) - 1)

    @property
    def drop_step(self):
        """The first step at which alpha is 0 and A is no longer read."""
        return self.begin_step + self._q_zero * self.update_every

    def alpha_at(self, t):
        """alpha at step t (a Python int): 1 before the snapshot."""
        if t < self.begin_step:
            return 1.0
        q = (t - self.begin_step) // self.update_every
        return 0.0 if q >= self._q_zero else 1.0 - self.alpha_decrement * (1 + q)

    def alpha(self, t, dtype=tf.float32):
        """alpha at step t (an int64 tensor)."""
        t = tf.convert_to_tensor(t, tf.int64)
        q = tf.math.floordiv(t - self.begin_step, self.update_every)
        value = 1.0 - self.alpha_decrement * tf.cast(1 + q, tf.float64)
        value = tf.where(t < self.begin_step, tf.constant(1.0, tf.float64),
                         tf.where(q >= self._q_zero, tf.constant(0.0, tf.float64), value))
        return tf.cast(value, dtype)

    def get_config(self):
        return {"begin_step": self.begin_step, "end_step": self.end_step,
                "update_every": self.update_every, "alpha_decrement": self.alpha_decrement,
                "calibrate": self.calibrate}
