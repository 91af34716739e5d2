"""matcompress's TensorFlow face: ``import matcompress.tf as mctf``.

Importing this module imports TensorFlow (``import matcompress`` never does) and loads the op
library when it is there, so that SavedModels holding matcompress ops load after
``import matcompress.tf``; when it is missing or was built for another TensorFlow, the
ImportError comes from the first op call (or :func:`load_library`), with the versions and what
to do.
"""

try:
    import tensorflow  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("matcompress.tf needs TensorFlow 2.21: pip install 'matcompress[tf]' "
                      "(or pip install 'tensorflow-cpu==2.21.*')") from exc

from .ops import (  # noqa: E402
    factor_tensors,
    factored_matmul,
    factored_rows,
    fit_codebook,
    load_library,
    simhash,
    sparse_encode,
)
from .schedule import CompressionSchedule  # noqa: E402
from .pruning import PruningKernel, PruningMatrix, PruningSchedule  # noqa: E402
from .layers import (  # noqa: E402
    CompressedDense,
    CompressedEmbedding,
    CompressedKernel,
    CompressedMatrix,
    FactoredDense,
    FactoredEmbedding,
    FactoredKernel,
)
from .conv import CompressedConv, FactoredConv  # noqa: E402
from .compression import (  # noqa: E402
    CompressionCallback,
    apply_compression,
    compressed_nbytes,
    strip_compression,
)

__all__ = ["factored_matmul", "factored_rows", "factor_tensors", "fit_codebook",
           "load_library", "simhash", "sparse_encode", "CompressionSchedule",
           "CompressedDense", "CompressedEmbedding", "CompressedKernel", "CompressedMatrix",
           "FactoredDense", "FactoredEmbedding", "FactoredKernel", "CompressedConv",
           "FactoredConv", "CompressionCallback", "apply_compression", "compressed_nbytes",
           "strip_compression", "PruningSchedule", "PruningKernel", "PruningMatrix"]

try:
    load_library()
except ImportError:
    pass
