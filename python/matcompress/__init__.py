"""matcompress: fast matrix compression for machine-learning models.

``import matcompress`` loads the numpy API only; the TensorFlow API lives in
``matcompress.tf`` and is imported on demand.
"""

from ._version import __version__
from . import additive
from .additive import AdditiveCodebook, AdditiveCompressor, additive_encode
from . import composite, compressors, factors
from .composite import (CompositeCompressor, LowRankResidualCompressor, OutlierCompressor,
                        PruneQuantizeCompressor, Sum)
from .auto import AutoCompressor, compress_many
from .compressors import compress
from .dictionary import DictionaryLearning, dict_learning
from .hashing import simhash
from .kmeans import KMeansQuantizer, fit_codebook, pack_4bit, unpack_4bit
from .lowrank import low_rank, randomized_svd
from .omp import sparse_encode
from .pruning import prune, prune_mask, taylor_scores
from . import quant
from .quant import ScaledCodebook, ScaledKMeansCompressor, pack_bits, unpack_bits
from . import structural
from .structural import (BlockDiagonal, BlockDiagonalCompressor, InputOutput,
                         InputOutputCompressor, MixedBlock, MixedBlockCompressor)

__all__ = [
    "__version__",
    "AdditiveCodebook",
    "AdditiveCompressor",
    "AutoCompressor",
    "BlockDiagonal",
    "BlockDiagonalCompressor",
    "CompositeCompressor",
    "DictionaryLearning",
    "additive",
    "additive_encode",
    "dict_learning",
    "InputOutput",
    "InputOutputCompressor",
    "KMeansQuantizer",
    "MixedBlock",
    "MixedBlockCompressor",
    "ScaledCodebook",
    "ScaledKMeansCompressor",
    "LowRankResidualCompressor",
    "OutlierCompressor",
    "PruneQuantizeCompressor",
    "Sum",
    "composite",
    "compress",
    "compress_many",
    "compressors",
    "factors",
    "fit_codebook",
    "low_rank",
    "pack_4bit",
    "pack_bits",
    "randomized_svd",
    "prune",
    "prune_mask",
    "quant",
    "show_config",
    "simhash",
    "sparse_encode",
    "structural",
    "taylor_scores",
    "unpack_4bit",
    "unpack_bits",
]


def show_config():
    """Return the native build's run-time facts: instruction set in use, OpenMP threads, BLAS."""
    from . import _core

    return {
        "version": __version__,
        "isa": _core.active_isa(),
        "isa_detected": _core.detected_isa(),
        "openmp": bool(_core.openmp),
        "default_threads": _core.default_threads(),
        "blas": "scipy.linalg.cython_blas",
    }
