"""Judges: concept detectors behind one protocol and one registry."""

from erasurelab.judges import clip as _clip  # noqa: F401  (registers the "clip:FOLDER" judge)
from erasurelab.judges import nudenet as _nudenet  # noqa: F401  (registers "nudenet"; needs the nudity extra)
from erasurelab.judges import shapes as _shapes  # noqa: F401  (registers the "shapes" judge)
from erasurelab.judges.base import Judge, available_judges, load_judge, register_judge
from erasurelab.world import pixel_judge as _pixels  # noqa: F401  (registers the "pixels" judge)

__all__ = ["Judge", "available_judges", "load_judge", "register_judge"]
