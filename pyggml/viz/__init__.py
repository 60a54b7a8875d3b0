"""Graph visualizer and debugging aids: DOT/SVG dumps, neighbourhoods, overlays, NaN finder,
per-node profile."""
from .dot import DotOptions, to_dot, graph_dump_dot, layer_of  # noqa: F401
from .render import render, dot_available, RenderError  # noqa: F401
from .debug import find_first_nan, profile_graph, format_profile, NanReport  # noqa: F401
from .saved import save_graph, load_graph  # noqa: F401


def draw(gf, out: str = "graph.svg", format: str = None, strict: bool = False, **options) -> str:
    """Render gf to out (svg by default); options as DotOptions (around, depth, times_us...)."""
    return render(to_dot(gf, None, DotOptions(**options)), out, format, strict)
