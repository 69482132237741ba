"""The kernel's id for this boot: monotonic readings compare only within one boot."""

from pathlib import Path
from typing import Final

BOOT_ID_FILE: Final = Path("/proc/sys/kernel/random/boot_id")


def current_boot_id(path: Path = BOOT_ID_FILE) -> str | None:
    """This boot's id (Linux), or None where the system does not tell."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
