"""What made a result besides the config and the data: the software, recorded with every artefact.

Versions are not in the fingerprints (an upgrade reruns nothing: most change no number); the
report lists them and warns when results were made with different ones.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from importlib import metadata

# name shown -> distribution
PACKAGES = {"layerprobe": "layerprobe", "torch": "torch", "transformers": "transformers",
            "open_clip": "open_clip_torch", "zarr": "zarr", "numpy": "numpy"}


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """{"python": ..., "layerprobe": ..., "torch": ..., ...} of this process."""
    out = {"python": platform.python_version()}
    for name, dist in PACKAGES.items():
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def differences(records: dict[str, dict[str, str]]) -> dict[str, dict[str, list[str]]]:
    """{package: {version: [where, ...]}} for every package whose version differs between the
    records ({where: versions}); empty when all agree."""
    seen: dict[str, dict[str, list[str]]] = {}
    for where, record in records.items():
        for package, version in (record or {}).items():
            seen.setdefault(package, {}).setdefault(version, []).append(where)
    return {package: found for package, found in seen.items() if len(found) > 1}
