"""Rendering DOT to SVG/PNG through the graphviz package (needs the `dot` binary)."""
from __future__ import annotations

import os
import shutil
import sys

from ..errors import GGMLError

FORMATS = ("svg", "png", "pdf", "dot")


class RenderError(GGMLError):
    """The graph could not be rendered (no `dot` binary, graphviz failed)."""


def dot_available() -> bool:
    return shutil.which("dot") is not None


def render(dot_text: str, out: str, format: str = None, strict: bool = False) -> str:
    """Write `out` as svg/png/pdf (by format or extension) or .dot.

    Without the `dot` binary the DOT text is written next to `out` (.dot) with a clear
    message on stderr (or a RenderError when strict). Returns the path written."""
    base, ext = os.path.splitext(out)
    fmt = (format or ext.lstrip(".") or "svg").lower()
    if fmt not in FORMATS:
        raise RenderError(f"render: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "dot":
        path = base + ".dot"
        with open(path, "w") as f:
            f.write(dot_text)
        return path
    if not dot_available():
        path = base + ".dot"
        with open(path, "w") as f:
            f.write(dot_text)
        msg = (f"graphviz's `dot` binary is not installed, so {fmt.upper()} cannot be rendered; "
               f"wrote {path} instead (install it with `apt-get install graphviz`, then "
               f"`dot -T{fmt} {path} -o {base}.{fmt}`)")
        if strict:
            raise RenderError(msg)
        print(msg, file=sys.stderr)
        return path
    import graphviz
    try:
        graphviz.Source(dot_text).render(outfile=f"{base}.{fmt}", format=fmt, cleanup=True)
    except Exception as e:  # graphviz.backend.ExecutableNotFound, CalledProcessError
        raise RenderError(f"render: graphviz failed on {base}.{fmt}: {e}") from e
    return f"{base}.{fmt}"
