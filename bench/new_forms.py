"""The new forms of issue 13 in training: test accuracy against stored bytes on the demo's
digits MLP and CNN at 2x, 4x, 8x (block, mixed_block, input_output, rank_reduced, gradual
pruning beside the five built-in methods and the dense model), and the train step of each new
form against the dense layer (target <= 1.5x).

    python bench/new_forms.py [--quick | --tiny] [--results FILE] [--markdown FILE]
                              [--seed N] [--wait-idle SECONDS]

The benchmark lives in the package (``matcompress.benchmark.new_forms``; see its docstring).
``--results bench/RESULTS.md`` replaces the section "## New forms in training: `python
bench/new_forms.py` (issue 13)" of that file and leaves the others. Full run about 5 minutes
on 2 cores, ``--quick`` about a minute.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from matcompress.benchmark.new_forms import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="python bench/new_forms.py"))
