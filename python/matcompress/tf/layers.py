"""Keras layers whose weight matrix is compressed during training (:class:`CompressedDense`,
:class:`CompressedEmbedding`), the stripped inference layers that hold only the factors
(:class:`FactoredDense`, :class:`FactoredEmbedding`), and the same schedule on a bare
``tf.Variable`` (:class:`CompressedMatrix`)."""

from __future__ import annotations

import types

import keras
import numpy as np
import tensorflow as tf

from .. import compressors as _compressors
from . import factorize as _factorize
from . import ops as _ops
from .schedule import CompressionSchedule

_PACKAGE = "matcompress"


def _storage(shape, dtype):
    """(shape, dtype) of the variable holding a part: uint8 / uint16 parts are kept as int32
    words (four or two values each, the last axis padded), because TensorFlow's collectives
    (MultiWorkerMirroredStrategy broadcasts initial values) take no 8- or 16-bit integers."""
    dtype = np.dtype(dtype)
    if dtype not in (np.uint8, np.uint16):
        return tuple(shape), dtype
    per_word = 4 // dtype.itemsize
    last = shape[-1] if len(shape) else 1
    return tuple(shape[:-1]) + (-(-last // per_word),), np.dtype(np.int32)


def _to_words(t, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.uint8, np.uint16):
        return t
    per_word = 4 // dtype.itemsize
    t = tf.cast(t, dtype)
    pad = -shape[-1] % per_word
    if pad:
        t = tf.pad(t, [[0, 0]] * (len(shape) - 1) + [[0, pad]])
    t = tf.reshape(t, list(shape[:-1]) + [-1, per_word])
    return tf.bitcast(t, tf.int32)


def _from_words(t, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.uint8, np.uint16):
        return t
    t = tf.reshape(tf.bitcast(t, tf.as_dtype(dtype)), list(shape[:-1]) + [-1])
    return t if t.shape[-1] == shape[-1] else t[..., :shape[-1]]


def _stored_value(var):
    """The value of ``var`` in its own dtype: a Keras variable read inside a layer's call under
    a mixed-precision policy is cast to the compute dtype (float16), which the factorizations
    neither take nor should see."""
    if not isinstance(var, keras.Variable):
        return tf.convert_to_tensor(var)
    try:
        from keras.src.backend.common.variables import AutocastScope
    except ImportError:  # pragma: no cover - another Keras layout
        return tf.convert_to_tensor(var)
    with AutocastScope(None):
        return tf.convert_to_tensor(var)


def _assign_local(var, value):
    """var.assign(value), and in a replica of a tf.distribute strategy: the replica's own copy.
    Every replica computes the same parts from the same (mirrored) A with deterministic ops, so
    each assigns its copy; a mirrored assignment would need a merge_call, which TensorFlow does
    not allow inside the tf.cond that takes the snapshot."""
    v = var.value if isinstance(var, keras.Variable) else var
    if tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
        local = getattr(v, "_get_on_device_or_primary", None)
        if local is not None:
            v = local()
    v.assign(value)


class _Core:
    """The schedule's arithmetic over a matrix variable A, the parts' variables and a step
    counter, shared by the layers and CompressedMatrix (which own the variables). ``shape``:
    the (m, n) matrix the parts factorize, when the variable holds it in another shape (a
    convolution's kernel (*kernel_size, c_in, c_out) through its (prod(...), c_out) view)."""

    def __init__(self, plan, schedule, kernel, parts, step, signs=None, shape=None):
        self.plan, self.schedule = plan, schedule
        self.kernel, self.parts, self.step = kernel, parts, step
        self.shape = tuple(int(d) for d in (kernel.shape if shape is None else shape))
        # Sign bits: R @ S (m, n), fixed from the snapshot on (only the scales train), kept so
        # that no pass regenerates the projection R (m, k, k = 32 m / ratio: 16x A at 2x).
        self.signs = signs
        # The sign-bit scales are about ||a_j|| sqrt(pi / 2) / k: at 2x (k = 16 m) far below a
        # weight of A, and an optimizer's steps are absolute (Adam's ~ its learning rate), so
        # their variable holds scale * k / sqrt(m), the magnitude of A's entries.
        self.gain = dict(plan.gains)
        if plan.kind == "sign_bits":
            k, m = plan.parts["bits"][0][0], self.shape[0]
            self.gain["scale"] = k / np.sqrt(m)
        # Set by sync_trainable once the step counter is past the drop step (end_step): no
        # later step reads A (or trains the parts), so a graph traced from then on leaves out
        # the branches for them.
        self.dropped = self.frozen = False
        # Set by sync once the snapshot has been taken: no calibration batch from then on.
        self.calibrated = False

    def matrix(self, stored=False):
        """A as the (m, n) matrix the parts factorize (a tensor); ``stored``: in the variable's
        own dtype even inside a mixed-precision layer call (which reads it in the compute
        dtype)."""
        a = _stored_value(self.kernel) if stored else tf.convert_to_tensor(self.kernel)
        return a if tuple(a.shape) == self.shape else tf.reshape(a, self.shape)

    def sync(self, t):
        """Records the phase of the step t to come; returns (A trainable, parts trainable)."""
        a_on, parts_on = self.phase_at(t)
        # The snapshot reads A at begin_step even when alpha is 0 from there (drop_step ==
        # begin_step): that step takes the traced phases.
        self.dropped = not a_on and t > self.schedule.begin_step
        self.frozen = not parts_on
        self.calibrated = t > self.schedule.begin_step
        return a_on, parts_on

    def value(self, name):
        """Part ``name`` as a tensor of the plan's dtype."""
        shape, dtype, _ = self.plan.parts[name]
        t = _from_words(tf.convert_to_tensor(self.parts[name]), shape, dtype)
        return t / tf.constant(self.gain[name], t.dtype) if name in self.gain else t

    def arrays(self):
        """The parts as numpy arrays of the plan's dtypes (eager)."""
        return {name: self.value(name).numpy() for name in self.parts}

    def factors(self, frozen=None):
        """The parts; ``frozen`` (True, or a bool tensor) stops their gradients."""
        out = {"kind": self.plan.kind, **self.plan.static}
        for name in self.parts:
            value = self.value(name)
            if frozen is True and self.plan.parts[name][2]:
                value = tf.stop_gradient(value)
            elif frozen is not None and frozen is not False and self.plan.parts[name][2]:
                value = tf.cond(frozen, lambda v=value: tf.stop_gradient(v),
                                lambda v=value: tf.identity(v))
            out[name] = value
        if self.signs is not None:
            out["projected_signs"] = tf.convert_to_tensor(self.signs)
        return out

    def _calibration(self, inputs):
        """The inputs as the (rows, m) calibration batch of the snapshot, or None."""
        if not self.plan.uses_inputs or inputs is None or self.calibrated:
            return None
        m = self.shape[0]
        X = tf.reshape(tf.convert_to_tensor(inputs), [-1, m])
        # Every replica must factorize the same matrix from the same batch (each assigns its
        # own copy of the parts): the whole batch, gathered. A collective cannot run inside
        # the tf.cond of the snapshot, so it runs in every step until the snapshot has been
        # taken (a graph traced after it, as CompressionCallback does, leaves it out).
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            X = ctx.all_gather(X, axis=0)
        return X

    def _snapshot(self, X=None):
        parts = self.plan.factorize(self.matrix(stored=True), X)
        for name, var in self.parts.items():
            shape, dtype, _ = self.plan.parts[name]
            value = parts[name]
            if name in self.gain:
                value = value * tf.constant(self.gain[name], value.dtype)
            _assign_local(var, _to_words(value, shape, dtype))
        if self.signs is not None:
            m = self.shape[0]
            unit = {"kind": "sign_bits", **self.plan.static, "bits": parts["bits"],
                    "scale": tf.ones_like(parts["scale"])}
            _assign_local(self.signs, _ops.factored_rows(tf.range(m), unit))
        return tf.constant(True)

    def advance(self, training, inputs=None):
        """The step index of this call: with training, the counter's value before this call
        (factorizing at begin_step, from ``inputs`` too when the plan takes them, then
        counting the call); else the last training step."""
        t = tf.convert_to_tensor(self.step)
        if not training:
            return t - 1
        X = self._calibration(inputs)
        tf.cond(tf.equal(t, self.schedule.begin_step), lambda: self._snapshot(X),
                lambda: tf.constant(False))
        self.step.assign_add(1)
        return t

    def apply(self, training, dense_fn, factored_fn, dtype, inputs=None):
        """dense_fn(A) before the snapshot, the blend during, factored_fn(parts) after;
        ``inputs`` (the left operand of the product) calibrate the snapshot when the plan
        takes them."""
        s = self.schedule
        if self.dropped:
            frozen = True if self.frozen else None
            if training or (frozen is None and s.end_step >= 0):
                t = tf.convert_to_tensor(self.step)  # read before the increment
                if training:
                    self.step.assign_add(1)
                else:
                    t = t - 1
                if frozen is None and s.end_step >= 0:
                    frozen = t >= s.end_step
            return factored_fn(self.factors(frozen))
        t = self.advance(training, inputs)
        alpha = s.alpha(t, dtype)
        phase = tf.where(t < s.begin_step, 0, tf.where(alpha > 0, 1, 2))
        frozen = (t >= s.end_step) if s.end_step >= 0 else None
        return tf.switch_case(phase, [
            lambda: dense_fn(self.matrix()),
            lambda: alpha * dense_fn(self.matrix())
            + (1 - alpha) * factored_fn(self.factors(frozen)),
            lambda: factored_fn(self.factors(frozen)),
        ])

    def phase_at(self, t):
        """(A trainable, parts trainable) for the step t (a Python int) to come."""
        s = self.schedule
        return t < s.drop_step, not (s.end_step >= 0 and t >= s.end_step)


def _bias_activation(layer, y):
    """A dense layer's ``activation(y + bias)``."""
    if layer.bias is not None:
        y = y + tf.convert_to_tensor(layer.bias)
    return layer.activation(y) if layer.activation is not None else y


def _check_compressor(compressor):
    if isinstance(compressor, dict):
        compressor = _compressors.MatrixCompressor.from_config(compressor)
    if not isinstance(compressor, _compressors.MatrixCompressor):
        raise TypeError("compressor must be a matcompress MatrixCompressor; got "
                        f"{type(compressor).__name__}")
    return compressor


def _check_schedule(schedule):
    if schedule is None:
        return CompressionSchedule()
    if isinstance(schedule, dict):
        return CompressionSchedule.from_config(schedule)
    if not isinstance(schedule, CompressionSchedule):
        raise TypeError("schedule must be a CompressionSchedule; got "
                        f"{type(schedule).__name__}")
    return schedule


class _CompressedLayer(keras.layers.Layer):
    """The variables and schedule common to the compressed layers."""

    def _build_compression(self, shape, takes_batch=False):
        """``takes_batch``: the layer's input is the left operand of its matrix, so a
        calibrating schedule can hand it to the compressor at the snapshot."""
        m, n = shape
        dtype = np.dtype(self.variable_dtype)
        if dtype.kind != "f" or dtype.itemsize not in (4, 8):
            raise TypeError(f"{type(self).__name__} needs float32 or float64 variables; "
                            f"got {self.variable_dtype}")
        # A compressor without an in-graph route is planned on the initial value (its shapes).
        # The source layer's trained matrix when apply_compression made this layer from one
        # (a compressor whose structure depends on the values decides it on that), else A's
        # initial value.
        initial = getattr(self, "_source_kernel", None)
        if initial is None or tuple(initial.shape) != (m, n):
            initial = np.reshape(tf.convert_to_tensor(self.kernel).numpy(), (m, n))
        plan = self._make_plan((m, n), dtype, initial,
                               calibrate=self.schedule.calibrate and takes_batch)
        self._parts = {}
        for name, (shape_, dt, trainable) in plan.parts.items():
            shape_, dt = _storage(shape_, dt)
            self._parts[name] = self.add_weight(
                name=name, shape=shape_, dtype=dt.name, initializer="zeros",
                trainable=trainable, autocast=False, aggregation="only_first_replica")
        self.step = self.add_weight(name="compression_step", shape=(), dtype="int64",
                                    initializer="zeros", trainable=False,
                                    aggregation="only_first_replica")
        signs = (self.add_weight(name="projected_signs", shape=(m, n), dtype=dtype.name,
                                 initializer="zeros", trainable=False, autocast=False,
                                 aggregation="only_first_replica")
                 if plan.kind == "sign_bits" else None)
        self._core = _Core(plan, self.schedule, self.kernel, self._parts, self.step, signs,
                           shape=(m, n))

    def _make_plan(self, shape, dtype, initial, calibrate):
        """The :class:`matcompress.tf.factorize.Plan` of the layer's compressor."""
        return _factorize.plan(self.compressor, shape, dtype, initial=initial,
                               calibrate=calibrate)

    @property
    def plan(self):
        """The :class:`matcompress.tf.factorize.Plan` (after build)."""
        return self._core.plan

    def factors(self):
        """The current parts as :func:`matcompress.tf.factored_matmul` takes them."""
        return self._core.factors()

    def sync_trainable(self):
        """Marks A (and, after end_step, the parts) trainable or not for the next step, from the
        step counter; True when something changed (a ``tf.function`` training step must then be
        traced again: :class:`CompressionCallback` does that in ``model.fit``)."""
        t = int(tf.convert_to_tensor(self.step).numpy())
        was = self._core.calibrated
        a_on, parts_on = self._core.sync(t)
        # Past the snapshot a calibrating layer's retraced step leaves out the batch's gather.
        changed = self._core.plan.uses_inputs and was != self._core.calibrated
        if self.kernel.trainable != a_on:
            self.kernel.trainable = a_on
            changed = True
        for name, var in self._parts.items():
            want = parts_on and self._core.plan.parts[name][2]
            if var.trainable != want:
                var.trainable = want
                changed = True
        return changed

    def _compression_config(self):
        return {"compressor": self.compressor.get_config(),
                "schedule": self.schedule.get_config()}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CompressedDense(_CompressedLayer):
    """``keras.layers.Dense`` whose kernel A (m, units) is factorized during training by a
    :class:`matcompress.compressors.MatrixCompressor` on a :class:`CompressionSchedule`:
    ``activation(x @ W + bias)`` with W = A, then the blend of A and the factors, then the factors
    alone (computed by :func:`matcompress.tf.factored_matmul`, W never built)."""

    def __init__(self, units, compressor, schedule=None, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.supports_jit = False  # the matcompress ops have no XLA kernel
        self.units = int(units)
        self.compressor = _check_compressor(compressor)
        self.schedule = _check_schedule(schedule)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def build(self, input_shape):
        m = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(m, self.units),
                                      initializer=self.kernel_initializer)
        self.bias = (self.add_weight(name="bias", shape=(self.units,),
                                     initializer=self.bias_initializer)
                     if self.use_bias else None)
        self._build_compression((m, self.units), takes_batch=True)
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: m})

    def call(self, inputs, training=None):
        x = tf.convert_to_tensor(inputs)
        if x.dtype != self.compute_dtype:
            x = tf.cast(x, self.compute_dtype)
        y = self._core.apply(bool(training), lambda A: tf.matmul(x, A) if x.shape.rank == 2
                             else tf.tensordot(x, A, axes=1),
                             lambda f: _ops.factored_matmul(x, f), x.dtype, inputs=x)
        return _bias_activation(self, y)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, activation=keras.activations.serialize(self.activation),
                      use_bias=self.use_bias,
                      kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                      bias_initializer=keras.initializers.serialize(self.bias_initializer),
                      **self._compression_config())
        return config


class _Lookup:
    """Masking and output shape of the embedding layers."""

    def compute_mask(self, inputs, mask=None):
        return tf.not_equal(inputs, 0) if self.mask_zero else None

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CompressedEmbedding(_Lookup, _CompressedLayer):
    """``keras.layers.Embedding`` whose table A (input_dim, output_dim) is factorized during
    training on a :class:`CompressionSchedule`; lookups read rows of the factors
    (:func:`matcompress.tf.factored_rows`) once A is dropped."""

    def __init__(self, input_dim, output_dim, compressor, schedule=None,
                 embeddings_initializer="uniform", mask_zero=False, **kwargs):
        super().__init__(**kwargs)
        self.supports_jit = False  # the matcompress ops have no XLA kernel
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self.compressor = _check_compressor(compressor)
        self.schedule = _check_schedule(schedule)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero

    def build(self, input_shape=None):
        self.kernel = self.add_weight(name="embeddings",
                                      shape=(self.input_dim, self.output_dim),
                                      initializer=self.embeddings_initializer)
        self._build_compression((self.input_dim, self.output_dim))

    @property
    def embeddings(self):
        return self.kernel

    def call(self, inputs, training=None):
        ids = tf.convert_to_tensor(inputs)
        if not ids.dtype.is_integer:
            ids = tf.cast(ids, tf.int32)
        return self._core.apply(bool(training), lambda A: tf.gather(A, ids),
                                lambda f: _ops.factored_rows(ids, f),
                                tf.as_dtype(self.variable_dtype))

    def get_config(self):
        config = super().get_config()
        config.update(input_dim=self.input_dim, output_dim=self.output_dim,
                      embeddings_initializer=keras.initializers.serialize(
                          self.embeddings_initializer),
                      mask_zero=self.mask_zero, **self._compression_config())
        return config


# ---- any layer with a 2-D kernel -------------------------------------------------------------

def _is_conv(layer):
    """A Keras Conv1D, Conv2D or Conv3D (or a subclass): its kernel (*kernel_size, c_in /
    groups, filters) is compressed through its 2-D view (see :mod:`matcompress.tf.conv`)."""
    return isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D))


def _kernel_slot(layer, path):
    """(owner, attribute name, variable) of the 2-D kernel that ``layer`` reaches through the
    dotted attribute ``path`` (say "kernel" or "cell.kernel"): the attribute of the owner that
    holds the variable itself (Keras' Dense reads ``self.kernel`` through a property over
    ``_kernel``). A convolution's ``kernel`` may have any rank (its 2-D view is compressed)."""
    owner = layer
    *outer, last = path.split(".")
    for name in outer:
        owner = getattr(owner, name, None)
        if owner is None:
            raise TypeError(f"layer {layer.name!r} of type {type(layer).__name__} has no "
                            f"attribute {path!r}")
    var = getattr(owner, last, None)
    if not isinstance(var, (keras.Variable, tf.Variable)):
        raise TypeError(f"layer {layer.name!r} of type {type(layer).__name__} has no weight "
                        f"variable {path!r} (after build)")
    if len(var.shape) != 2 and not (path == "kernel" and _is_conv(layer)):
        raise TypeError(f"layer {layer.name!r} of type {type(layer).__name__}: its {path} of "
                        f"shape {tuple(var.shape)} is not 2-D (of the N-D kernels, only "
                        "those of Conv1D, Conv2D and Conv3D are compressed, through their "
                        "2-D view)")
    for name, value in vars(owner).items():
        if value is var:
            return owner, name, var
    raise TypeError(f"layer {layer.name!r}: {path} is computed, not held in an attribute")


class _KernelSwap:
    """Within the block, the kernel's attribute holds ``value`` (a tensor) instead of the
    variable: the wrapped layer's own ``call`` then computes with it. Set and restored below
    Keras' attribute tracking, at trace time."""

    def __init__(self, owner, slot, value):
        self.owner, self.slot, self.value = owner, slot, value

    def __enter__(self):
        self.saved = getattr(self.owner, self.slot)
        object.__setattr__(self.owner, self.slot, self.value)

    def __exit__(self, *exc):
        object.__setattr__(self.owner, self.slot, self.saved)


class _KernelWrapper(keras.layers.Wrapper):
    """Calls the wrapped layer with its kernel replaced by a tensor."""

    def _locate(self):
        owner, slot, var = _kernel_slot(self.layer, self.kernel_attr)
        # Held below Keras' tracking: the variable is the wrapped layer's.
        object.__setattr__(self, "_slot", (owner, slot))
        return var

    def _call_with(self, kernel, inputs, training, mask):
        owner, slot = self._slot
        kwargs = {}
        if training is not None and self.layer._call_has_training_arg:
            kwargs["training"] = training
        if mask is not None and self.layer._call_has_mask_arg:
            kwargs["mask"] = mask
        kernel = tf.cast(kernel, self.layer.compute_dtype)
        with _KernelSwap(owner, slot, kernel):
            return self.layer(inputs, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CompressedKernel(_CompressedLayer, _KernelWrapper):
    """Any layer holding a 2-D kernel (``kernel_attr``: "kernel", or a dotted path such as
    "cell.kernel"), with that kernel A compressed on a :class:`CompressionSchedule`: the layer's
    own ``call`` runs with its kernel replaced by A, then the blend ``alpha*A + (1-alpha)*W``,
    then W, the product of the factors, built each step from them
    (:func:`matcompress.tf.factored_rows`) since how the layer uses its kernel is its own
    business. Dense and Embedding layers are better served by :class:`CompressedDense` and
    :class:`CompressedEmbedding`, which never build W."""

    def __init__(self, layer, compressor, schedule=None, kernel_attr="kernel", **kwargs):
        super().__init__(layer, **kwargs)
        self.supports_jit = False  # the matcompress ops have no XLA kernel
        self.kernel_attr = str(kernel_attr)
        self.compressor = _check_compressor(compressor)
        self.schedule = _check_schedule(schedule)

    def build(self, input_shape=None):
        keras.layers.Wrapper.build(self, input_shape)
        shape = tuple(self._locate().shape)
        self._build_compression(shape, takes_batch=self._takes_batch(input_shape, shape[0]))

    def _takes_batch(self, input_shape, m):
        """The layer's inputs are the left operand of the kernel (an input-facing kernel whose
        rows match the inputs' last axis: Dense-like and recurrent layers' ``kernel``, not
        their ``recurrent_kernel``)."""
        try:
            last = int(input_shape[-1])
        except (TypeError, IndexError, ValueError):  # no shape, a nested one, unknown width
            return False
        return last == m and "recurrent" not in self.kernel_attr.split(".")[-1]

    @property
    def kernel(self):
        """The wrapped layer's kernel variable A (after build)."""
        owner, slot = self._slot
        return getattr(owner, slot)

    def call(self, inputs, training=None, mask=None):
        m = self._core.shape[0]
        batch = inputs if self._core.plan.uses_inputs else None
        w = self._core.apply(bool(training), lambda A: A,
                             lambda f: _ops.factored_rows(tf.range(m), f),
                             tf.as_dtype(self._core.kernel.dtype), inputs=batch)
        return self._call_with(w, inputs, training, mask)

    def get_config(self):
        config = super().get_config()
        config.update(kernel_attr=self.kernel_attr, **self._compression_config())
        return config


# ---- the factors alone, as a numpy Factorization and as inference layers ---------------------

def to_factorization(kind, static, arrays):
    """A numpy :class:`matcompress.factors.Factorization` from parts (name -> array) as the
    layers hold them, with the index arrays narrowed to the dtypes the numpy compressors store
    (so that its ``nbytes`` is what the compressor's ``compression_ratio`` counts)."""
    from .. import factors as F

    a = {k: np.asarray(v) for k, v in arrays.items()}
    if kind == "low_rank":
        return F.LowRank(a["left"], a["right"])
    if kind == "sparse_codes":
        k = a["dictionary"].shape[0]
        return F.SparseCodes(a["indices"].astype(F.index_dtype(k)), a["values"],
                             a["dictionary"])
    if kind == "codebook":
        codes = a["codes"]
        if not static.get("packed", False):
            codes = codes.astype(F.index_dtype(a["codebook"].shape[0]))
        return F.Codebook(codes, a["codebook"], int(static["n_cols"]),
                          packed=bool(static.get("packed", False)))
    if kind == "sign_bits":
        return F.SignBits(a["bits"], a["scale"], int(static["seed"]), int(static["n_rows"]))
    if kind == "pruned":
        n = int(static["n_cols"])
        indptr = a["indptr"]
        indptr = indptr.astype(static.get("indptr_dtype")
                               or (np.int32 if indptr[-1] < 2**31 else np.int64))
        indices = a["indices"].astype(F.index_dtype(n))
        if "values" in a:
            return F.Pruned(indptr, indices, n, values=a["values"])
        return F.Pruned(indptr, indices, n, codes=a["codes"].astype(
            F.index_dtype(a["codebook"].shape[0])), codebook=a["codebook"])
    if kind == "scaled_codebook":
        from ..quant import ScaledCodebook

        return ScaledCodebook(a["codes"].astype(np.uint8), a["codebook"],
                              a["scales"].astype(np.float16), int(static["n_cols"]),
                              int(static["group_size"]), int(static["channel_axis"]))
    if kind == "additive":
        from ..additive import AdditiveCodebook

        return AdditiveCodebook(a["codes"].astype(np.uint8), a["codebooks"],
                                a["scales"].astype(np.float16), int(static["n_cols"]),
                                int(static["channel_axis"]))
    if kind == "sum":
        from ..composite import Sum

        return Sum(tuple(to_factorization(part.pop("kind"), *_split_static(part))
                         for part in _ops.split_sum({**static, **a})))
    if kind == "block_diagonal":
        from ..structural import BlockDiagonal

        ints = {k: int(static[k]) for k in ("n_rows", "n_cols", "n_blocks")}
        if _ops.has_parts({**static, **a}):
            return BlockDiagonal(parts=tuple(
                to_factorization(part.pop("kind"), *_split_static(part))
                for part in _ops.split_sum({**static, **a})), **ints)
        return BlockDiagonal(a["values"], **ints)
    if kind == "mixed_block":
        from ..structural import MixedBlock

        return MixedBlock(a["bases"], a["coeffs"])
    if kind == "input_output":
        from ..structural import InputOutput

        return InputOutput(a["C"], a.get("P"), a.get("Q"))
    raise ValueError(f"unknown factorization kind {kind!r}")


def _split_static(fields):
    """(static, arrays) of a part's fields."""
    arrays = {k: v for k, v in fields.items() if isinstance(v, np.ndarray)}
    return {k: v for k, v in fields.items() if k not in arrays}, arrays


def _op_parts(kind, static, parts):
    """The parts as the ops take them: index arrays cast to the ops' dtypes."""
    out = {"kind": kind, **static}
    if kind in _ops._PARTED and _ops.has_parts({**static, **parts}):
        for i, part in enumerate(_ops.split_sum({**static, **parts})):
            sub_static = {k: v for k, v in part.items() if k != "kind" and k not in parts_of(part)}
            sub = _op_parts(part["kind"], sub_static, parts_of(part))
            out.update({f"parts.{i}.{k}": v for k, v in sub.items()})
        return out
    for name, value in parts.items():
        t = tf.convert_to_tensor(value)
        if kind == "sparse_codes" and name == "indices" and t.dtype != tf.int32:
            t = tf.cast(t, tf.int32)
        elif kind == "codebook" and name == "codes" and t.dtype not in (tf.uint8, tf.uint16,
                                                                           tf.int32):
            t = tf.cast(t, tf.int32)
        elif kind == "pruned" and name == "indptr" and t.dtype != tf.int64:
            t = tf.cast(t, tf.int64)
        elif kind == "pruned" and name == "indices" and t.dtype not in (tf.uint16, tf.int32):
            t = tf.cast(t, tf.uint16 if int(static["n_cols"]) <= 65536 else tf.int32)
        out[name] = t
    return out


def parts_of(fields):
    """The tensor or array entries of a part's fields (not its static ints, bools, kind)."""
    return {k: v for k, v in fields.items()
            if not isinstance(v, (int, bool, str, np.integer, np.bool_))}


def _stored_fields(f, prefix=""):
    """(arrays, static) of a factorization as its stored dtypes: the fields the ops read,
    a sum's parts flattened under "parts.<i>." with their kinds as "parts.<i>.kind"."""
    arrays, static = {}, {}
    if f.kind in _ops._PARTED and getattr(f, "parts", None) is not None:
        # A sum's parts, or compressed diagonal blocks.
        for i, part in enumerate(f.parts):
            a, s = _stored_fields(part, f"{prefix}parts.{i}.")
            arrays.update(a)
            static.update(s, **{f"{prefix}parts.{i}.kind": part.kind})
    arrays.update({prefix + name: getattr(f, name) for name in _ops._FIELDS[f.kind]
                   if isinstance(getattr(f, name, None), np.ndarray)})
    static.update({prefix + name: (int(v) if not isinstance(v, bool) else v)
                   for name in _ops._FIELDS[f.kind]
                   if not isinstance(v := getattr(f, name, None), np.ndarray)
                   and v is not None})
    if f.kind == "pruned":
        static[prefix + "indptr_dtype"] = np.dtype(f.indptr.dtype).name
    return arrays, static


class _FactoredLayer(keras.layers.Layer):
    """Variables holding a factorization's parts in its own dtypes."""

    def _build_parts(self):
        self._parts = {}
        for name, (shape, dtype, trainable) in self.parts_spec.items():
            self._parts[name] = self.add_weight(name=name, shape=tuple(shape), dtype=dtype,
                                                initializer="zeros", trainable=trainable,
                                                autocast=False)

    def factors(self):
        """The parts as :func:`matcompress.tf.factored_matmul` takes them."""
        return _op_parts(self.kind, self.static, self._parts)

    def factorization(self):
        """The parts as a numpy :class:`matcompress.factors.Factorization`."""
        return to_factorization(self.kind, self.static,
                                {k: tf.convert_to_tensor(v).numpy()
                                 for k, v in self._parts.items()})

    @property
    def factor_nbytes(self):
        """Bytes the factorization stores (what the compressor's compression_ratio counts:
        the parts, and for sign bits the seed and row count)."""
        return int(self.factorization().nbytes)

    @staticmethod
    def _spec(f):
        arrays, static = _stored_fields(f)
        trainable = set(f.trainable_fields)
        spec = {k: [list(v.shape), np.dtype(v.dtype).name, k in trainable]
                for k, v in arrays.items()}
        return spec, static, arrays

    def _set_parts(self, arrays):
        for name, value in arrays.items():
            self._parts[name].assign(value)

    def _factored_config(self):
        return {"kind": self.kind, "static": dict(self.static), "parts_spec": self.parts_spec}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FactoredDense(_FactoredLayer):
    """A dense layer ``activation(x @ W + bias)`` that holds only W's factorization (the result
    of :func:`matcompress.tf.strip_compression`); its float parts stay trainable."""

    def __init__(self, units, kind, static, parts_spec, activation=None, use_bias=True,
                 **kwargs):
        super().__init__(**kwargs)
        self.supports_jit = False  # the matcompress ops have no XLA kernel
        self.units, self.kind = int(units), kind
        self.static, self.parts_spec = dict(static), dict(parts_spec)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)

    @classmethod
    def from_factorization(cls, f, bias=None, activation=None, **kwargs):
        """A built layer holding ``f`` (and ``bias``, when given)."""
        spec, static, arrays = cls._spec(f)
        layer = cls(f.shape[1], f.kind, static, spec, activation=activation,
                    use_bias=bias is not None, **kwargs)
        layer.build((None, f.shape[0]))
        layer._set_parts(arrays)
        if bias is not None:
            layer.bias.assign(bias)
        return layer

    def build(self, input_shape):
        self._build_parts()
        self.bias = (self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
                     if self.use_bias else None)

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs)
        if x.dtype != self.compute_dtype:
            x = tf.cast(x, self.compute_dtype)
        return _bias_activation(self, _ops.factored_matmul(x, self.factors()))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, activation=keras.activations.serialize(self.activation),
                      use_bias=self.use_bias, **self._factored_config())
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FactoredEmbedding(_Lookup, _FactoredLayer):
    """An embedding lookup that holds only the table's factorization (the result of
    :func:`matcompress.tf.strip_compression`)."""

    def __init__(self, input_dim, output_dim, kind, static, parts_spec, mask_zero=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.supports_jit = False  # the matcompress ops have no XLA kernel
        self.input_dim, self.output_dim, self.kind = int(input_dim), int(output_dim), kind
        self.static, self.parts_spec = dict(static), dict(parts_spec)
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero

    @classmethod
    def from_factorization(cls, f, mask_zero=False, **kwargs):
        spec, static, arrays = cls._spec(f)
        layer = cls(f.shape[0], f.shape[1], f.kind, static, spec, mask_zero=mask_zero,
                    **kwargs)
        layer.build(None)
        layer._set_parts(arrays)
        return layer

    def build(self, input_shape=None):
        self._build_parts()

    def call(self, inputs):
        ids = tf.convert_to_tensor(inputs)
        if not ids.dtype.is_integer:
            ids = tf.cast(ids, tf.int32)
        return _ops.factored_rows(ids, self.factors())

    def get_config(self):
        config = super().get_config()
        config.update(input_dim=self.input_dim, output_dim=self.output_dim,
                      mask_zero=self.mask_zero, **self._factored_config())
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FactoredKernel(_FactoredLayer, _KernelWrapper):
    """The stripped :class:`CompressedKernel`: the wrapped layer keeps its other weights, its
    kernel variable is dropped (neither held nor saved), and each call builds the kernel from
    the factors (:func:`matcompress.tf.factored_rows`) for the layer's own ``call``."""

    def __init__(self, layer, shape, kind, static, parts_spec, kernel_attr="kernel", **kwargs):
        super().__init__(layer, **kwargs)
        self.supports_jit = False  # the matcompress ops have no XLA kernel
        self.shape = tuple(int(d) for d in shape)
        self.kernel_attr, self.kind = str(kernel_attr), kind
        self.static, self.parts_spec = dict(static), dict(parts_spec)

    @classmethod
    def from_factorization(cls, layer, f, kernel_attr="kernel", input_shape=None, **kwargs):
        """A built layer wrapping ``layer`` (built, or built here for ``input_shape``), whose
        weights other than the kernel are kept, with the kernel's factorization ``f``."""
        spec, static, arrays = cls._spec(f)
        wrapper = cls(layer, f.shape, f.kind, static, spec, kernel_attr=kernel_attr, **kwargs)
        wrapper.build(input_shape)
        wrapper._set_parts(arrays)
        return wrapper

    def build(self, input_shape=None):
        keras.layers.Wrapper.build(self, input_shape)
        var = self._locate()
        if self._matrix_shape(var.shape) != self.shape:
            raise ValueError(f"layer {self.layer.name!r}: its {self.kernel_attr} of shape "
                             f"{tuple(var.shape)} does not match the factorization's "
                             f"{self.shape}")
        # Held below Keras' tracking (a plain tuple of ints).
        object.__setattr__(self, "_kernel_shape", tuple(int(d) for d in var.shape))
        owner, slot = self._slot
        owner._tracker.untrack(var)
        object.__setattr__(owner, slot, None)
        # Layers such as Dense save their kernel by name; the owner now saves (and loads) the
        # variables it still tracks, as a plain Keras layer does.
        for method in ("save_own_variables", "load_own_variables"):
            object.__setattr__(owner, method,
                               types.MethodType(getattr(keras.layers.Layer, method), owner))
        self._build_parts()

    @staticmethod
    def _matrix_shape(kernel_shape):
        """The factorized matrix's shape for a kernel of ``kernel_shape``."""
        return tuple(int(d) for d in kernel_shape)

    def call(self, inputs, training=None, mask=None):
        w = _ops.factored_rows(tf.range(self.shape[0]), self.factors())
        return self._call_with(w, inputs, training, mask)

    def get_config(self):
        config = super().get_config()
        config.update(shape=list(self.shape), kernel_attr=self.kernel_attr,
                      **self._factored_config())
        return config


# ---- a bare variable -------------------------------------------------------------------------

class CompressedMatrix(tf.Module):
    """The schedule on a ``tf.Variable`` A (m, n), for custom training loops: ``matmul(x)``
    (and ``value()``) follow the phases of :class:`CompressionSchedule`; each
    ``matmul(x, training=True)`` is one training step. :attr:`trainable_variables` lists A
    until its drop step and the trainable parts until ``end_step``: take it each step (and trace
    a ``tf.function`` step again when :meth:`sync_trainable` returns True)."""

    def __init__(self, variable, compressor, schedule=None, name=None):
        super().__init__(name=name)
        if not isinstance(variable, tf.Variable) or variable.shape.rank != 2:
            raise TypeError("variable must be a 2-D tf.Variable")
        if variable.dtype not in (tf.float32, tf.float64):
            raise TypeError(f"variable must be float32 or float64; got {variable.dtype.name}")
        self.compressor = _check_compressor(compressor)
        self.schedule = _check_schedule(schedule)
        self.kernel = variable
        plan = _factorize.plan(self.compressor, tuple(variable.shape),
                               variable.dtype.as_numpy_dtype, initial=variable.numpy(),
                               calibrate=self.schedule.calibrate)
        agg = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self._parts = {name: tf.Variable(tf.zeros(*_storage(shape, dtype)), trainable=trainable,
                                         name=name, aggregation=agg)
                       for name, (shape, dtype, trainable) in plan.parts.items()}
        self.step = tf.Variable(tf.constant(0, tf.int64), trainable=False,
                                name="compression_step", aggregation=agg)
        self._signs = (tf.Variable(tf.zeros(variable.shape, variable.dtype), trainable=False,
                                   name="projected_signs", aggregation=agg)
                       if plan.kind == "sign_bits" else None)
        self._core = _Core(plan, self.schedule, self.kernel, self._parts, self.step,
                           self._signs)
        self._phase = (True, True)

    @property
    def plan(self):
        return self._core.plan

    def matmul(self, x, training=True):
        """``x @ W`` for the current phase (a training step when ``training``)."""
        x = tf.convert_to_tensor(x, self.kernel.dtype)
        return self._core.apply(training, lambda A: tf.matmul(x, A) if x.shape.rank == 2
                                else tf.tensordot(x, A, axes=1),
                                lambda f: _ops.factored_matmul(x, f), x.dtype, inputs=x)

    def value(self):
        """The matrix the last step used: A, the blend, or the product of the factors."""
        m = int(self.kernel.shape[0])
        rows = tf.range(m)
        return self._core.apply(False, lambda A: A, lambda f: _ops.factored_rows(rows, f),
                                self.kernel.dtype)

    def factors(self):
        return self._core.factors()

    def factorization(self):
        """The current parts as a numpy :class:`matcompress.factors.Factorization`."""
        return to_factorization(self.plan.kind, self.plan.static, self._core.arrays())

    def sync_trainable(self):
        """Updates :attr:`trainable_variables` for the next step; True when it changed."""
        phase = self._core.sync(int(self.step.numpy()))
        changed, self._phase = phase != self._phase, phase
        return changed

    @property
    def trainable_variables(self):
        a_on, parts_on = self._core.phase_at(int(self.step.numpy()))
        out = [self.kernel] if a_on else []
        if parts_on:
            out += [v for name, v in self._parts.items() if self.plan.parts[name][2]]
        return tuple(out)
