"""Benchmarks of matcompress against the libraries a user would pick instead.

``matcompress bench`` (and ``python bench/compare.py`` in a checkout) runs
:func:`matcompress.benchmark.compare.main`: every kernel against scikit-learn, SPAMS, faiss,
dense numpy and Keras in one run, with the speed ratios beside the targets of DESIGN.md §7.
The modules here are also what the repository's ``bench/`` scripts import (a wheel installs the
package only):

- :mod:`~matcompress.benchmark.harness`: timing, machine load, peak memory, report helpers;
- :mod:`~matcompress.benchmark.workloads`: benchmark data, the peers' calls, scoring;
- :mod:`~matcompress.benchmark.forms`: the stored forms of a matrix for the factored products;
- :mod:`~matcompress.benchmark.tf_step`: the CompressedDense train step (imports TensorFlow
  when called);
- :mod:`~matcompress.benchmark.compare`: the comparison itself.

Nothing here is imported by ``import matcompress``.
"""

__all__ = ["main"]


def main(argv=None):
    """Run the comparison; see :func:`matcompress.benchmark.compare.main`."""
    from .compare import main as _main

    return _main(argv)
