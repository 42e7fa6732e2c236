"""What every benchmark's JSON records about the machine it ran on, and how it is written."""

import datetime
import importlib.metadata
import os
import platform

from edgekeras.io import atomic_write_json


def machine_info():
    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "tensorflow": version("tensorflow"),
        "ai_edge_litert": version("ai-edge-litert"),
    }


def write_json(path, report):
    """Writes `report` to `path` atomically when a path was given; returns `report`."""
    if path:
        atomic_write_json(path, report)
        print(f"wrote {path}")
    return report
