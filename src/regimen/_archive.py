"""Checking a torch zip archive before ``torch.load``: shared by checkpoints (regimen.train) and pruned-model files
(regimen.subnet), which must not import each other."""

from __future__ import annotations

import os
import zipfile
import zlib

__all__ = ["verify_torch_archive"]


def verify_torch_archive(path: str | os.PathLike, error: type[Exception], what: str) -> None:
    """Check the archive's CRC-32 checksums: a flipped bit in tensor data would otherwise load as silently wrong
    weights (``torch.load`` does not check them). Raises ``error`` with one line naming the file; ``what`` names the
    kind of file expected ("checkpoint", "regimen-pruned file")."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as problem:
        raise error(f"{path} is not a readable {what}: not a torch zip archive ({problem})") from None
    if bad is not None:
        raise error(f"{path} is corrupt: checksum mismatch in {bad} (a damaged or truncated file)")
