"""The machine a bench's figures come from, read once from /proc/cpuinfo for every bench: figures are
quoted with the CPU's model name, and its flags (AVX-512, bf16, AMX) decide dtypes and speeds here."""
from __future__ import annotations

from pathlib import Path


def _values(name: str) -> list[str]:
    """The values of the /proc/cpuinfo lines named `name`, one per CPU (none where it cannot be read)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
    return [line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == name]


def cpu_model() -> str:
    return next(iter(_values("model name")), "unknown CPU")


def cpu_flags() -> set[str]:
    return set(next(iter(_values("flags")), "").split())


def cpu_mhz() -> float:
    """The highest clock /proc/cpuinfo gives a CPU, in MHz (0 where it gives none)."""
    return max(map(float, _values("cpu MHz")), default=0.0)
