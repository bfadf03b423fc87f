"""Jinja2 rendering of mail bodies: packaged templates, optionally overridden by a directory.

Templates are plain text (no autoescape); undefined variables are errors, so a template
and its caller cannot silently drift apart.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader, StrictUndefined


@lru_cache(maxsize=8)
def environment(override_dir: str = "") -> Environment:
    loaders: list[Any] = [PackageLoader("seclistd", "templates")]
    if override_dir:
        loaders.insert(0, FileSystemLoader(override_dir))
    return Environment(loader=ChoiceLoader(loaders), autoescape=False,
                       undefined=StrictUndefined, keep_trailing_newline=True,
                       trim_blocks=True, lstrip_blocks=True)


def render(name: str, override_dir: str = "", **context: Any) -> str:
    return environment(override_dir).get_template(name).render(**context)
