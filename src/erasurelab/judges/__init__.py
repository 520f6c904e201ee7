"""Judges: concept detectors behind one protocol and one registry.

The judges for real models live here (CLIP from a local folder, NudeNet); plugins add theirs
through `register_judge` (the embedded shapes world registers "shapes" and "pixels"). The
lookups below load the plugins first (`erasurelab.plugins`), so a plugin's judge is found by name
without anything here importing it.
"""

from erasurelab.judges import base as _base
from erasurelab.judges import clip as _clip  # noqa: F401  (registers the "clip:FOLDER" judge)
from erasurelab.judges import nudenet as _nudenet  # noqa: F401  (registers "nudenet"; needs the nudity extra)
from erasurelab.judges.base import Judge, register_judge, register_parametric_judge
from erasurelab.plugins import load_plugins

__all__ = ["Judge", "available_judges", "is_judge_name", "load_judge", "register_judge", "register_parametric_judge"]


def load_judge(name: str = "shapes") -> Judge:
    """Instantiate a registered judge (plugins' included); unknown names give a one-line error listing valid ones."""
    load_plugins()
    return _base.load_judge(name)


def available_judges() -> list[str]:
    """Registered judge names, plugins' included; parametric ones are listed as "NAME:ARGUMENT"."""
    load_plugins()
    return _base.available_judges()


def is_judge_name(name: str) -> bool:
    """True for a registered judge name (plugins' included) or a "NAME:ARGUMENT" of a parametric one."""
    load_plugins()
    return _base.is_judge_name(name)
