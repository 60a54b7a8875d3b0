"""Graph visualizer and debugging aids: DOT/SVG dumps, neighbourhoods, overlays, NaN finder,
per-node profile."""
from .debug import NanReport, find_first_nan, format_profile, profile_graph  # noqa: F401
from .dot import DotOptions, graph_dump_dot, layer_of, to_dot  # noqa: F401
from .render import RenderError, dot_available, render  # noqa: F401
from .saved import load_graph, save_graph  # noqa: F401


def draw(gf, out: str = "graph.svg", format: str = None, strict: bool = False, **options) -> str:
    """Render gf to out (svg by default); options as DotOptions (around, depth, times_us...)."""
    return render(to_dot(gf, None, DotOptions(**options)), out, format, strict)
