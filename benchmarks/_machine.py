"""What a benchmark's JSON lines record about the machine: processor, CPUs, torch threads, versions, date.

Imported by the scripts in this folder as ``from _machine import machine`` (they run as ``python
benchmarks/NAME.py``, so this folder is on ``sys.path``).
"""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any

import torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def machine(**versions: str) -> dict[str, Any]:
    """The machine record, with ``versions`` (package name -> version) beside torch's and Python's."""
    return {
        "processor": platform.processor() or _cpu_model(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        **versions,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
