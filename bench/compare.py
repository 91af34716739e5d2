"""Every kernel against its peers in one run: the script face of ``matcompress bench``.

    python bench/compare.py [--quick] [--markdown FILE] [--results FILE] [--png FILE]
                            [--cases GROUPS] [--wait-idle SECONDS] [--no-memory]

The comparison lives in the package (``matcompress.benchmark.compare``), so that
``matcompress bench`` works from an installed wheel, where this directory does not exist; see
its docstring for the cases, the peers and how they are timed. ``--results bench/RESULTS.md``
replaces the section "## Comparison: `matcompress bench`" of that file and leaves the others.
"""

from __future__ import annotations

import sys

from matcompress.benchmark.compare import main

if __name__ == "__main__":
    sys.exit(main(prog="python bench/compare.py"))
