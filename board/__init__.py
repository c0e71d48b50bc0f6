"""Board profiles: which bus, chip, disks and serial ports a board has — as data.

A profile is a TOML file in ``board/profiles/`` (or any path). Strings may name
``{data_dir}``, filled in from the command line. The firmware reads profiles
only through ``load_profile``; it never branches on a board's name.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

PROFILE_DIR = Path(__file__).parent / "profiles"


class ProfileError(ValueError):
    pass


def available() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str, **values: str) -> dict[str, Any]:
    """Load a profile by name (``sim``) or path, filling ``{key}`` placeholders."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ProfileError(f"no board profile {name_or_path!r} "
                           f"(known: {', '.join(available())})")
    with path.open("rb") as f:
        profile = tomllib.load(f)
    for section in ("nvram", "media"):
        if section not in profile:
            raise ProfileError(f"board profile {path} has no [{section}] table")
    for role in ("local", "second"):
        if role not in profile["media"]:
            raise ProfileError(f"board profile {path} has no [media.{role}] table")
    return _fill(profile, values)


def _fill(node: Any, values: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _fill(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, values) for v in node]
    if isinstance(node, str) and "{" in node:
        try:
            return node.format(**values)
        except KeyError as exc:
            raise ProfileError(f"profile needs --{exc.args[0].replace('_', '-')}") from exc
    return node
