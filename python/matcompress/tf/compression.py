"""Compressing a Keras model's weight matrices during training: :func:`apply_compression`,
:class:`CompressionCallback` and :func:`strip_compression`."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf

from .layers import (
    CompressedDense,
    CompressedEmbedding,
    CompressedKernel,
    CompressedMatrix,
    FactoredDense,
    FactoredEmbedding,
    FactoredKernel,
    _check_compressor,
    _check_schedule,
    _is_conv,
    _kernel_slot,
)
from .pruning import (
    PruningKernel,
    PruningMatrix,
    check_pruning_schedule,
    is_pruning_schedule,
)
from .conv import CompressedConv, FactoredConv, _check_conv, _check_form, plain_convs

_COMPRESSED = (CompressedDense, CompressedEmbedding, CompressedKernel)
_FACTORED = (FactoredDense, FactoredEmbedding, FactoredKernel)

#: The layers compressed by default: Keras' own (not subclasses, whose ``call`` may use the
#: kernel otherwise) dense layers, embeddings and convolutions.
DEFAULT_LAYERS = (keras.layers.Dense, keras.layers.Embedding, keras.layers.Conv1D,
                  keras.layers.Conv2D, keras.layers.Conv3D)


def _default_filter(layer):
    return type(layer) in DEFAULT_LAYERS


def _default_pruning_filter(layer):
    """Gradual pruning's default: Keras' own Dense and Embedding layers (a PruningKernel masks a
    2-D kernel; convolutions are compressed, not pruned, by default)."""
    return type(layer) in (keras.layers.Dense, keras.layers.Embedding)


def _compressed_twin(layer, compressor, schedule, selected=True, conv_form="reconstructed"):
    """A compressed layer configured (and, when ``layer`` is built, weighted) as ``layer``:
    CompressedDense / CompressedEmbedding for Keras' own Dense and Embedding, a CompressedConv
    around a copy of a convolution (``conv_form``), else a CompressedKernel around a copy of
    ``layer`` (``selected``, when a string, names the kernel attribute)."""
    path = selected if isinstance(selected, str) else None
    if _is_conv(layer) and path in (None, "kernel"):
        _check_conv(layer, conv_form, compressor)
        inner, input_shape = _copy_layer(layer, "kernel")
        new = CompressedConv(inner, compressor, schedule, form=conv_form, name=layer.name,
                             dtype=layer.dtype_policy)
        if inner.built:
            new.build(input_shape)
        return new
    if type(layer) is keras.layers.Dense and path in (None, "kernel"):
        cfg = layer.get_config()
        if cfg.get("lora_rank"):
            raise ValueError(f"layer {layer.name!r} uses LoRA: compress the merged layer")
        new = CompressedDense(cfg["units"], compressor, schedule, activation=cfg["activation"],
                              use_bias=cfg["use_bias"],
                              kernel_initializer=cfg["kernel_initializer"],
                              bias_initializer=cfg["bias_initializer"], name=layer.name,
                              dtype=layer.dtype_policy)
        if layer.built:
            new._source_kernel = np.asarray(layer.kernel.numpy())
            new.build((None, int(layer.kernel.shape[0])))
            new.kernel.assign(layer.kernel)
            if new.bias is not None:
                new.bias.assign(layer.bias)
        return new
    if type(layer) is keras.layers.Embedding and path in (None, "embeddings"):
        cfg = layer.get_config()
        new = CompressedEmbedding(cfg["input_dim"], cfg["output_dim"], compressor, schedule,
                                  embeddings_initializer=cfg["embeddings_initializer"],
                                  mask_zero=cfg["mask_zero"], name=layer.name,
                                  dtype=layer.dtype_policy)
        if layer.built:
            new._source_kernel = np.asarray(layer.embeddings.numpy())
            new.build(None)
            new.kernel.assign(layer.embeddings)
        return new
    if path is None:
        path = "embeddings" if isinstance(layer, keras.layers.Embedding) else "kernel"
    inner, input_shape = _copy_layer(layer, path)
    new = CompressedKernel(inner, compressor, schedule, kernel_attr=path, name=layer.name,
                           dtype=layer.dtype_policy)
    if inner.built:
        new.build(input_shape)
    return new


def _pruning_twin(layer, schedule, selected=True):
    """A :class:`PruningKernel` around a copy of ``layer`` (weights copied when it is built),
    with the final sparsity the schedule gives its name."""
    path = selected if isinstance(selected, str) else None
    if path is None:
        path = "embeddings" if isinstance(layer, keras.layers.Embedding) else "kernel"
    if isinstance(layer, (keras.layers.Dense, keras.layers.Embedding)) and getattr(
            layer, "lora_rank", None):
        raise ValueError(f"layer {layer.name!r} uses LoRA: prune the merged layer")
    if _is_conv(layer) and path == "kernel":
        raise TypeError(f"layer {layer.name!r} of type {type(layer).__name__}: gradual pruning "
                        "masks 2-D kernels (Dense, Embedding, a kernel path of another layer); "
                        "a convolution's kernel is not pruned by a PruningSchedule (compress it "
                        "with a PruningCompressor and a CompressionSchedule instead)")
    inner, input_shape = _copy_layer(layer, path)
    new = PruningKernel(inner, schedule, kernel_attr=path,
                        target_sparsity=schedule.target_for(layer.name), name=layer.name,
                        dtype=layer.dtype_policy)
    if inner.built:
        new.build(input_shape)
    return new


def _copy_layer(layer, path):
    """A copy of ``layer`` from its config, built and weighted as ``layer`` when that is built
    (whose kernel at ``path`` is checked to be a 2-D variable); and its input shape."""
    if layer.built:
        _kernel_slot(layer, path)
    inner = layer.__class__.from_config(layer.get_config())
    if not layer.built:
        return inner, None
    build_config = layer.get_build_config() or {}
    inner.build_from_config(build_config)
    inner.set_weights(layer.get_weights())
    return inner, build_config.get("input_shape")


def _check_model_not_compressed(layers):
    for layer in layers:
        if isinstance(layer, _COMPRESSED + (PruningKernel,)):
            raise ValueError(f"layer {layer.name!r} is compressed already: apply_compression "
                             "cannot be applied twice (strip_compression first)")


def _clone(model, replace, plain_replacements=False):
    """clone_model with ``replace(layer)`` (a new layer, or None to clone as is), then every
    unreplaced layer's weights copied from the original. ``plain_replacements``: a replacement
    may be a layer whose ``call`` takes no ``mask`` (see _call_without_foreign_mask)."""
    pairs = []

    def clone_fn(layer):
        new = replace(layer)
        if new is None:
            new = layer.__class__.from_config(layer.get_config())
            pairs.append((layer, new))
        return new

    kwargs = {}
    if plain_replacements and _is_graph_model(model) and not isinstance(model,
                                                                        keras.Sequential):
        kwargs["call_function"] = _call_without_foreign_mask
    clone = keras.models.clone_model(model, clone_function=clone_fn, **kwargs)
    for old, new in pairs:
        if old.weights:
            new.set_weights(old.get_weights())
    return clone


def _call_without_foreign_mask(layer, *args, **kwargs):
    """A functional node's call on its replacement: Keras records ``mask=`` for a layer whose
    ``call`` takes one (the wrappers do), which a replacement that takes none (a stripped
    PruningKernel's plain layer) must not receive; the wrapper passed it on only to a layer
    that takes it."""
    if "mask" in kwargs and not getattr(layer, "_call_has_mask_arg", True):
        kwargs.pop("mask")
    return layer(*args, **kwargs)


def _is_graph_model(model):
    """Sequential or functional (Keras 3 keeps the functional class out of its public API)."""
    try:
        from keras.src.models.functional import Functional
    except ImportError:  # pragma: no cover - another Keras layout
        Functional = ()
    return isinstance(model, (keras.Sequential, Functional))


def _replace_in_place(model, replace):
    """A subclassed model: each layer attribute (at any depth) for which ``replace`` gives a new
    layer is re-bound to it, and the old layer stops being tracked (its variables leave the
    model)."""
    def visit(owner):
        for name, value in list(vars(owner).items()):
            if isinstance(value, keras.layers.Layer) and not name.startswith("_"):
                new = replace(value)
                if new is None:
                    visit(value)
                    continue
                tracker = getattr(owner, "_tracker", None)
                locked = tracker is not None and tracker.locked
                if locked:  # Keras locks a built layer's state; this swap is deliberate
                    tracker.unlock()
                try:
                    setattr(owner, name, new)
                    owner._layers[:] = [x for x in owner._layers if x is not value]
                finally:
                    if locked:
                        tracker.lock()

    visit(model)
    return model


def _warn_unmatched(schedule, names):
    for key in getattr(schedule, "unmatched", lambda names: [])(names):
        warnings.warn(f"apply_compression: sparsity_map key {key!r} matches no pruned layer "
                      f"(pruned: {', '.join(names) or 'none'})", stacklevel=3)


def apply_compression(target, compressor, *, schedule, filter_fn=None,
                      conv_form="reconstructed"):
    """Compress the weight matrices of ``target`` during training.

    Parameters
    ----------
    target : keras.Model, keras.layers.Layer or tf.Variable
        - A Sequential or functional model: a copy whose selected layers are
          :class:`CompressedDense` / :class:`CompressedEmbedding` (weights copied; the other
          layers cloned with their weights). Compile it before training, and pass
          :class:`CompressionCallback` to ``fit``.
        - A subclassed model: the same model, its selected layer attributes (at any depth;
          not layers held in lists) replaced in place. Compile it again. Its ``call`` must
          take a ``training`` argument (as for Dropout): Keras then passes ``training=True``
          to the compressed layers in ``fit``, and each such call is a step of the schedule.
        - A layer: its compressed twin (see ``filter_fn``).
        - A 2-D ``tf.Variable``: a :class:`CompressedMatrix` (a :class:`PruningMatrix` with a
          PruningSchedule) for custom training loops.
    compressor : MatrixCompressor, or None with a PruningSchedule
        Built-in or user-defined. ``low_rank``, ``kmeans``, ``simhash``, ``pruning`` and
        ``dictionary`` factorize inside the graph (see :mod:`matcompress.tf.factorize`); any
        other (``scaled_kmeans``, ``additive``, the composites, the structural forms
        ``block``, ``mixed_block`` and ``input_output``, a user's) runs its numpy ``compress``
        once at the snapshot through ``tf.numpy_function``. Every factorization kind trains
        and strips: low rank, sparse codes, codebook, sign bits, pruned, scaled codebook,
        additive codebook, sums of them, diagonal blocks (dense or each compressed), shared
        basis blocks and input/output projections.
    schedule : CompressionSchedule or PruningSchedule (or its get_config() dict)
        A :class:`PruningSchedule` prunes the selected layers gradually instead of
        factorizing them: each becomes a :class:`PruningKernel` wrapping a copy of the layer
        (Dense and Embedding too), with the final sparsity that the schedule's
        ``sparsity_map`` gives its name (a map key matching no selected layer warns). The
        schedule holds the score, pattern and sparsities, so ``compressor`` must be None. No
        callback is needed (the masks are updated inside the training step);
        :func:`strip_compression` gives back the plain layers with the pruned kernels.
    filter_fn : callable(layer) -> bool or str, optional
        Which layers to compress; default: every Dense, Embedding, Conv1D, Conv2D and Conv3D
        layer (Keras' own classes). Keras' own Dense and Embedding become
        :class:`CompressedDense` / :class:`CompressedEmbedding`; a convolution (Conv1D, Conv2D,
        Conv3D or a subclass) becomes a :class:`~matcompress.tf.conv.CompressedConv`, its
        kernel (*kernel_size, c_in, c_out) compressed through its 2-D view
        (prod(kernel_size) * c_in, c_out); any other selected layer (a Dense subclass,
        EinsumDense, a custom layer) is wrapped in a :class:`CompressedKernel`, which runs the
        layer's own ``call`` with its 2-D kernel replaced: the attribute ``kernel``
        (``embeddings`` for an Embedding subclass), or the attribute path that ``filter_fn``
        returns as a string (say "cell.kernel" for an LSTM's input kernel). A selected layer
        without such a kernel raises TypeError.
    conv_form : {"reconstructed", "rank_reduced"}, default="reconstructed"
        How a compressed convolution computes (see :mod:`matcompress.tf.conv`).
        "reconstructed": the layer's own convolution on the kernel rebuilt from the factors.
        "rank_reduced" (``compressor`` a LowRankCompressor; convolutions with ``groups=1``):
        a convolution to ``rank`` filters, initialized at the snapshot to ``U_r S_r`` of the
        kernel view's truncated SVD, then a 1x1 convolution (projection) ``V_r^T`` back to
        c_out; it strips to two plain Keras convolutions. Other layers are compressed as
        usual.
    """
    conv_form = _check_form(conv_form)
    if schedule is None:
        raise TypeError("schedule must be a CompressionSchedule; got NoneType")
    if is_pruning_schedule(schedule):
        schedule = check_pruning_schedule(schedule)
        if compressor is not None:
            raise TypeError("with a PruningSchedule the schedule holds the score, pattern and "
                            "sparsities: pass compressor=None; got "
                            f"{type(compressor).__name__}")

        def twin(layer, selected):
            return _pruning_twin(layer, schedule, selected)

        default_filter = _default_pruning_filter
    else:
        compressor = _check_compressor(compressor)
        schedule = _check_schedule(schedule)

        def twin(layer, selected):
            return _compressed_twin(layer, compressor, schedule, selected, conv_form)

        default_filter = _default_filter
    if isinstance(target, (tf.Variable, keras.Variable)):
        variable = target.value if isinstance(target, keras.Variable) else target
        if compressor is None:
            return PruningMatrix(variable, schedule)
        return CompressedMatrix(variable, compressor, schedule)
    if isinstance(target, keras.Model):
        _check_model_not_compressed(target._flatten_layers(include_self=False))
        select = filter_fn or default_filter
        chosen = []

        def replace(layer):
            selected = select(layer)
            if selected:
                chosen.append(layer.name)
                return twin(layer, selected)
            return None

        if _is_graph_model(target):
            model = _clone(target, replace)
        else:
            model = _replace_in_place(target, replace)
        if not chosen:
            warnings.warn("apply_compression: filter_fn selected no layer; nothing is "
                          "compressed", stacklevel=2)
        _warn_unmatched(schedule, chosen)
        return model
    if isinstance(target, keras.layers.Layer):
        _check_model_not_compressed([target])
        selected = True if filter_fn is None else filter_fn(target)
        if not selected:
            warnings.warn("apply_compression: filter_fn rejects the layer; it is returned "
                          "unchanged", stacklevel=2)
            return target
        _warn_unmatched(schedule, [target.name])
        return twin(target, selected)
    raise TypeError("target must be a Keras model, a Keras layer or a tf.Variable; got "
                    f"{type(target).__name__}")


class CompressionCallback(keras.callbacks.Callback):
    """Keeps ``model.fit``'s trainable variables in step with the compression schedule: from a
    layer's drop step its full matrix A leaves the trainable variables (the optimizer no longer
    updates A or its slots), and after ``end_step`` its factors do; the training function is
    traced again when that happens. Without it the model computes the same outputs, but the
    optimizer keeps applying its momentum to the unused A. With ``steps_per_execution > 1`` it
    runs between executions only, so A may move for up to that many steps after its drop."""

    def _sync(self):
        changed = False
        for layer in self.model._flatten_layers(include_self=False):
            if isinstance(layer, _COMPRESSED) and layer.built:
                changed |= layer.sync_trainable()
        return changed

    def on_train_begin(self, logs=None):
        if self._sync():
            self.model.make_train_function(force=True)

    def on_train_batch_begin(self, batch, logs=None):
        if self._sync():
            self.model.make_train_function(force=True)


def _factored_twin(layer, convs="plain"):
    f = _layer_factorization(layer)
    if isinstance(layer, CompressedConv):
        inner, input_shape = _copy_layer(layer.layer, "kernel")
        if convs == "plain":
            return plain_convs(layer, f, inner, input_shape)
        return FactoredConv.from_factorization(inner, f, input_shape=input_shape,
                                               form=layer.form, name=layer.name,
                                               dtype=layer.dtype_policy)
    if isinstance(layer, CompressedKernel):
        inner, input_shape = _copy_layer(layer.layer, layer.kernel_attr)
        return FactoredKernel.from_factorization(inner, f, kernel_attr=layer.kernel_attr,
                                                 input_shape=input_shape, name=layer.name,
                                                 dtype=layer.dtype_policy)
    if isinstance(layer, CompressedDense):
        bias = None if layer.bias is None else tf.convert_to_tensor(layer.bias).numpy()
        return FactoredDense.from_factorization(
            f, bias=bias, activation=keras.activations.serialize(layer.activation),
            name=layer.name, dtype=layer.dtype_policy)
    return FactoredEmbedding.from_factorization(f, mask_zero=layer.mask_zero, name=layer.name,
                                                dtype=layer.dtype_policy)


def _layer_factorization(layer):
    from .layers import to_factorization

    t = int(tf.convert_to_tensor(layer.step).numpy())
    if t <= layer.schedule.begin_step:
        raise ValueError(f"layer {layer.name!r} has not been factorized yet (step {t}, "
                         f"begin_step {layer.schedule.begin_step}): train past begin_step "
                         "before strip_compression")
    if t <= layer.schedule.drop_step:
        warnings.warn(f"layer {layer.name!r} still blends its full matrix (step {t}, drop "
                      f"step {layer.schedule.drop_step}): the stripped layer keeps only the "
                      "factors", stacklevel=3)
    plan = layer.plan
    return to_factorization(plan.kind, plan.static, layer._core.arrays())


def _pruned_twin(layer, sparse):
    """The stripped PruningKernel: a copy of the wrapped layer with the kernel ``W * mask``, or
    with ``sparse`` the factored layer holding the kept entries in CSR form."""
    inner, input_shape = _copy_layer(layer.layer, layer.kernel_attr)
    if sparse:
        f = layer.factorization()
        if type(inner) is keras.layers.Dense and layer.kernel_attr == "kernel":
            bias = None if inner.bias is None else tf.convert_to_tensor(inner.bias).numpy()
            return FactoredDense.from_factorization(
                f, bias=bias, activation=keras.activations.serialize(inner.activation),
                name=layer.name, dtype=layer.dtype_policy)
        if type(inner) is keras.layers.Embedding and layer.kernel_attr == "embeddings":
            return FactoredEmbedding.from_factorization(f, mask_zero=inner.mask_zero,
                                                        name=layer.name,
                                                        dtype=layer.dtype_policy)
        return FactoredKernel.from_factorization(inner, f, kernel_attr=layer.kernel_attr,
                                                 input_shape=input_shape, name=layer.name,
                                                 dtype=layer.dtype_policy)
    _kernel_slot(inner, layer.kernel_attr)[2].assign(layer.pruned_kernel())
    return inner


def strip_compression(target, *, sparse=False, convs="plain"):
    """An inference copy of ``target`` holding only the factors: each compressed layer becomes
    a :class:`FactoredDense` / :class:`FactoredEmbedding` / :class:`FactoredKernel` whose parts
    are stored as the numpy compressor stores them (4-bit packed codes, narrow indices), so
    that their bytes are what the compressor's ``compression_ratio`` counts. ``target``: a
    model from :func:`apply_compression`, a compressed or pruned layer, a
    :class:`CompressedMatrix` (gives its numpy :class:`matcompress.factors.Factorization`) or a
    :class:`PruningMatrix` (its :class:`matcompress.factors.Pruned`).

    A :class:`PruningKernel` (gradual pruning) becomes the layer it wraps, a plain Keras layer
    whose kernel is ``W * mask``; with ``sparse=True`` it becomes a factored layer holding the
    kept entries in CSR form (:class:`matcompress.factors.Pruned`, counted by
    :func:`compressed_nbytes`) instead.

    ``convs`` says what a compressed convolution becomes:

    - "plain" (default): plain Keras layers, no matcompress op needed to run them. The
      convolution's own class with the kernel rebuilt from the factors (bias, activation and
      every other setting kept): it stores the dense kernel, so it computes at the dense
      layer's speed but keeps none of the bytes saved. A rank-reduced convolution becomes a
      ``keras.Sequential`` (named as the layer) of its two convolutions, the one to ``rank``
      filters and the 1x1 projection with the bias and activation: they store the factors'
      bytes.
    - "factored": a :class:`~matcompress.tf.conv.FactoredConv` holding the factors (counted by
      :func:`compressed_nbytes`), the kernel rebuilt from them at each call (or, rank-reduced,
      the two convolutions computed from them).
    """
    if not isinstance(sparse, (bool, np.bool_)):
        raise TypeError(f"sparse must be True or False; got {sparse!r}")
    if convs not in ("plain", "factored"):
        raise ValueError(f"convs must be 'plain' or 'factored'; got {convs!r}")
    if isinstance(target, (CompressedMatrix, PruningMatrix)):
        return target.factorization()
    if isinstance(target, _COMPRESSED):
        return _factored_twin(target, convs)
    if isinstance(target, PruningKernel):
        return _pruned_twin(target, sparse)
    if isinstance(target, keras.Model):
        layers = target._flatten_layers(include_self=False)
        if not any(isinstance(layer, _COMPRESSED + (PruningKernel,)) for layer in layers):
            raise ValueError("the model has no compressed layer")
        pruned = any(isinstance(layer, PruningKernel) for layer in layers)

        def replace(layer):
            if isinstance(layer, _COMPRESSED):
                return _factored_twin(layer, convs)
            if isinstance(layer, PruningKernel):
                return _pruned_twin(layer, sparse)
            return None

        return _clone(target, replace, plain_replacements=pruned and not sparse)
    raise TypeError("target must be a model from apply_compression, a compressed or pruned "
                    f"layer, a CompressedMatrix or a PruningMatrix; got {type(target).__name__}")


def compressed_nbytes(model):
    """(bytes of the factors, bytes of the dense matrices they replace) over the layers that
    hold factors: the factored layers of a stripped model, the compressed layers of a model
    from :func:`apply_compression` (their current parts; ValueError before a layer's
    snapshot), and its pruned layers (:class:`PruningKernel`, counted as the CSR form of their
    kept weights). A convolution stripped to a plain Keras layer holds its dense kernel, not
    factors, and is not counted (strip with ``convs="factored"``, or count the compressed
    model); a rank-reduced one stripped to two plain convolutions is not counted either."""
    from .layers import to_factorization

    factored = dense = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, _FACTORED + (PruningKernel,)):
            f = layer.factorization()
        elif isinstance(layer, _COMPRESSED):
            t = int(tf.convert_to_tensor(layer.step).numpy()) if layer.built else 0
            if t <= layer.schedule.begin_step:
                raise ValueError(f"layer {layer.name!r} has not been factorized yet (step {t}, "
                                 f"begin_step {layer.schedule.begin_step})")
            f = to_factorization(layer.plan.kind, layer.plan.static, layer._core.arrays())
        else:
            continue
        factored += int(f.nbytes)
        dense += int(np.prod(f.shape)) * np.dtype(f.dtype).itemsize
    return factored, dense


__all__ = ["apply_compression", "strip_compression", "CompressionCallback",
           "compressed_nbytes"]
