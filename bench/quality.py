"""Quality at a byte budget: how well each compression method keeps trained models at 4x, 8x
and 16x fewer bytes, without retraining.

    python bench/quality.py [--quick] [--retrain] [--results FILE] [--markdown FILE]
                            [--png FILE] [--json FILE] [--cache DIR] [--models NAMES]
                            [--seed N]

The benchmark lives in the package (``matcompress.benchmark.quality``); see its docstring for
the models, the matrices and the inputs captured, the methods and the figures. Trained weights
are cached in bench/out/quality-cache (gitignored); ``--retrain`` trains again.
``--results bench/RESULTS.md`` replaces the section "## Quality at a byte budget: `python
bench/quality.py`" of that file and leaves the others.
"""

from __future__ import annotations

import os
import sys

from matcompress.benchmark.quality import main

if __name__ == "__main__":
    sys.exit(main(prog="python bench/quality.py",
                  default_cache=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                             "quality-cache")))
