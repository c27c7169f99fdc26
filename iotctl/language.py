"""The language ``iotctl`` speaks to a person: English or Chinese (简体中文).

``iotctl --lang zh ...`` (or ``IOTCTL_LANG=zh``; else the locale: ``LC_ALL``/``LANG``
starting with ``zh``) chooses it. Every human word of a command goes through
:func:`say`; what ``--json`` prints is the same in both (English keys, stable codes).
"""

from __future__ import annotations

import os
from typing import Literal, get_args

__all__ = ["Language", "current", "detect", "say", "set_language"]

Language = Literal["en", "zh"]
LANGUAGES: tuple[str, ...] = get_args(Language)


def detect(environ: dict[str, str] | None = None) -> Language:
    env = os.environ if environ is None else environ
    chosen = env.get("IOTCTL_LANG", "").strip().lower()
    if chosen in LANGUAGES:
        return "zh" if chosen == "zh" else "en"
    locale = env.get("LC_ALL") or env.get("LANG") or ""
    return "zh" if locale.lower().startswith("zh") else "en"


_current: Language = detect()


def set_language(language: str | None) -> Language:
    """Set the language (``None``: detect it again); returns the one in use."""
    global _current  # noqa: PLW0603 - one process-wide choice, set once by the CLI's callback
    if language is None:
        _current = detect()
    elif language in LANGUAGES:
        _current = "zh" if language == "zh" else "en"
    else:
        raise ValueError(f"language must be one of {', '.join(LANGUAGES)}, not {language!r}")
    return _current


def current() -> Language:
    return _current


def say(en: str, zh: str) -> str:
    """``en`` or ``zh``, in the language in use."""
    return zh if _current == "zh" else en
