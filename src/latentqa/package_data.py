"""Where files shipped inside installed packages are: latentqa's own and its data packages'."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from latentqa.errors import LatentQAError


def package_file(package: str, relative: str, install: str | None = None) -> Path:
    """Locate a file or folder inside an installed package without importing the package.

    Some data packages' ``__init__`` imports things latentqa does not install, so the
    package is found with ``importlib.util.find_spec``, which does not run it.

    Args:
        package: Import name of the package (``"latentqa"`` for the shipped resources).
        relative: Path inside the package folder, ``/``-separated.
        install: The pip requirement to suggest when it is missing (``None``: the
            file belongs to latentqa itself).

    Returns:
        The path.

    Raises:
        LatentQAError: The package or the file is missing.
    """
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / relative
        if path.exists():
            return path
    fix = f"install it with `pip install {install}`" if install else "reinstall latentqa"
    raise LatentQAError(f"data file {package}/{relative} not found: {fix}")
