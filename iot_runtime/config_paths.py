"""Relative paths in a configuration resolve against the configuration file's directory.

``cloud-hub create-admin-key --config /etc/citypulse/hub.yaml`` run from any directory must
open the registry that ``cloud-hub serve --config /etc/citypulse/hub.yaml`` uses. So while
:func:`~iot_runtime.config.load_settings` validates a file, a relative path — written in the
file, given in an environment variable, or a field's default — is taken relative to the
file's folder. Settings built without a file (the environment alone, or in code) keep
relative paths relative to the working directory, as before.

A settings field opts in by its type: :data:`ConfigPath` (a file or folder), or by calling
:func:`resolve_config_path` in a validator (a path inside a URL, e.g. a SQLite registry).
Fields with a relative default also need ``validate_default=True``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

__all__ = ["ConfigPath", "relative_to", "resolve_config_path"]

_base_dir: ContextVar[Path | None] = ContextVar("config_base_dir", default=None)


@contextmanager
def relative_to(directory: Path) -> Iterator[None]:
    """Within this block, relative configuration paths resolve against ``directory``."""
    token = _base_dir.set(directory.absolute())
    try:
        yield
    finally:
        _base_dir.reset(token)


def resolve_config_path(path: Path) -> Path:
    """``path`` against the configuration file's folder if it is relative and a file is
    being loaded; otherwise ``path`` unchanged."""
    base = _base_dir.get()
    if base is None or path.is_absolute():
        return path
    return base / path


#: A file or folder named in a configuration (see the module docstring).
ConfigPath = Annotated[Path, AfterValidator(resolve_config_path)]
