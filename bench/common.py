"""What the training benches share: where they work and how they start."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def run_in_work_dir(
    run: Callable[[argparse.Namespace, Path], None], args: argparse.Namespace, prefix: str
) -> None:
    """``run(args, folder)`` in ``args.work_dir`` (kept, for ``--reuse``) or in a temporary folder.

    Benches never download: the hub is switched off unless the caller already chose otherwise.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.work_dir is not None:
        run(args, args.work_dir)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as work:
        run(args, Path(work))
