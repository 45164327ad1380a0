"""The machine a bench's figures come from, read once from /proc/cpuinfo for every bench: figures are
quoted with the CPU's model name, and its flags (AVX-512, bf16, AMX) decide dtypes and speeds here."""
from __future__ import annotations

from pathlib import Path


def _field(name: str) -> str | None:
    """The first /proc/cpuinfo line named `name`, its value; None where there is none."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == name), None)


def cpu_model() -> str:
    return _field("model name") or "unknown CPU"


def cpu_flags() -> set[str]:
    return set((_field("flags") or "").split())


def cpu_mhz() -> float:
    """The clock /proc/cpuinfo gives the CPUs, the highest of them (MHz)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return 0.0
    return max((float(line.split(":", 1)[1]) for line in lines if line.startswith("cpu MHz")), default=0.0)
