"""Another version's code beside this checkout's, so that a benchmark measures both in one run."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def unpack(ref: str) -> Path:
    """The tree of git ref ``ref`` in a temporary folder (only its files: a bench runs its code from there).

    Remove it with ``shutil.rmtree(tree.parent)``.
    """
    tree = Path(tempfile.mkdtemp(prefix="compx-bench-ref-")) / "tree"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree
