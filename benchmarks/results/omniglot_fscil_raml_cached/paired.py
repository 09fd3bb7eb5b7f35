"""Print this page's table: RAML with cached meta-training on Omniglot and `prototype`, paired by seed with
the recorded rows of the same CPU type (the same base networks).

Run from the repository root: ``python benchmarks/results/omniglot_fscil_raml_cached/paired.py``.
The table code is ``tiny_imagenet_fscil_raml_cached/paired.py``'s.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("tiny_raml_cached_paired", HERE.parent / "tiny_imagenet_fscil_raml_cached" / "paired.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

FOLDERS = [str((HERE / f).relative_to(tiny.lb.RESULTS)) for f in ("seeds01", "seed2")]
RECORDED = {
    "raml, uncached (recorded: 300 episodes)": (["omniglot_fscil_raml_lr003/amd"], "raml"),
    "prototype, 12 base epochs (recorded)": (["compute_matched/omniglot_fscil_proto_be12"], "prototype"),
    "prototype, 24 base epochs (recorded)": (["compute_matched/omniglot_fscil_proto_be24"], "prototype"),
}

if __name__ == "__main__":
    tiny.print_table(FOLDERS, ["prototype", "raml", *RECORDED], RECORDED)
