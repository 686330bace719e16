"""Run the real trainer (`python -m tests.reliability.record_digests OVERRIDES`, also under torchrun) writing the
path of every file each rank digests to $DIGEST_LOG.rankR, one a line: what a rank read to verify or commit a
checkpoint. Test-only (the library has no such hook); nothing else changes."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _install() -> None:
    from isaac_train.checkpoint import integrity

    log = Path(f"{os.environ['DIGEST_LOG']}.rank{os.environ.get('RANK', '0')}")
    digest = integrity.file_digest

    def recorded(path: Path) -> dict:
        with open(log, "a") as f:
            f.write(f"{path}\n")
        return digest(path)

    integrity.file_digest = recorded


if __name__ == "__main__":
    _install()
    from isaac_train.train.cli import main

    sys.argv = ["isaac-train", *sys.argv[1:]]
    main()
