"""Graph visualizer and debugging aids: DOT/SVG dumps, neighbourhoods, overlays, NaN finder,
per-node profile."""
from .debug import NanReport  # noqa: F401
from .debug import find_first_nan  # noqa: F401
from .debug import format_profile  # noqa: F401
from .debug import profile_graph  # noqa: F401
from .dot import DotOptions  # noqa: F401
from .dot import graph_dump_dot  # noqa: F401
from .dot import layer_of  # noqa: F401
from .dot import to_dot  # noqa: F401
from .render import RenderError  # noqa: F401
from .render import dot_available  # noqa: F401
from .render import render  # noqa: F401
from .saved import load_graph  # noqa: F401
from .saved import save_graph  # noqa: F401


def draw(gf, out: str = "graph.svg", format: str = None, strict: bool = False, **options) -> str:
    """Render gf to out (svg by default); options as DotOptions (around, depth, times_us...)."""
    return render(to_dot(gf, None, DotOptions(**options)), out, format, strict)
