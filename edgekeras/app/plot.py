"""pareto.png: accuracy against download size and against latency, every point named.

Two panels share the accuracy axis: gzip size (what a device downloads) and
median batch-1 latency with one thread. Each panel draws its own Pareto front.
The legend sits below both panels, off the data, and each name goes in the
first spot near its point (right, left, above, below, then further out, with a
leader line) where it overlaps no other name, no point and no panel edge, so
near-coincident points (a model's int8 files) keep their names apart.
"""

import io

from edgekeras.pareto import pareto_front

__all__ = ["ROLE_COLORS", "pareto_figure", "plot_pareto"]

ROLE_COLORS = {
    "original": "tab:blue",
    "quantized": "tab:orange",
    "pruned": "tab:green",
    "pruned_quantized": "tab:red",
    "other": "tab:gray",
}
_PANELS = (
    ("gzip_bytes", 1 / 1024, "gzip size (KiB)", "accuracy vs download size"),
    ("latency_ms", 1.0, "batch-1 latency, 1 thread (ms)", "accuracy vs latency"),
)
# Where a name may go around its point (offsets in points, then alignment),
# nearest first; the outer rings get a leader line.
_DIRECTIONS = (
    (1, 0, "left", "center"), (-1, 0, "right", "center"), (0, 1, "center", "bottom"), (0, -1, "center", "top"),
    (1, 1, "left", "bottom"), (1, -1, "left", "top"), (-1, 1, "right", "bottom"), (-1, -1, "right", "top"),
)
_RINGS = (6, 16, 28, 42, 58)
# A name's background hides the front's line where the name crosses it.
_NAME_BOX = dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.8)
_MARKER_SIZE = 45
_MARKER_HALF_PIXELS = 5


def _limits(values, log):
    low, high = min(values), max(values)
    if log:
        return low / 1.35, high * 1.35
    span = (high - low) or abs(high) or 1.0
    return low - 0.18 * span, high + 0.18 * span


def _draw_panel(axes, variants, key, scale, xlabel, title):
    for role, color in ROLE_COLORS.items():
        points = [v for v in variants if v["role"] == role]
        if points:
            axes.scatter([v[key] * scale for v in points], [v["accuracy"] * 100 for v in points], c=color,
                         label=role, s=_MARKER_SIZE, zorder=3)
    names = set(pareto_front(variants, cost=key))
    front = sorted((v for v in variants if v["name"] in names), key=lambda v: v[key])
    if len(front) > 1:
        axes.plot([v[key] * scale for v in front], [v["accuracy"] * 100 for v in front], "--", color="black",
                  linewidth=0.8, label="Pareto front", zorder=2)
    values = [v[key] * scale for v in variants]
    log = min(values) > 0 and max(values) / min(values) > 8
    if log:
        from matplotlib.ticker import FuncFormatter

        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    axes.set_xlim(*_limits(values, log))
    axes.set_xlabel(xlabel)
    axes.set_title(title, fontsize=9)
    axes.grid(True, alpha=0.3)


def _free(box, taken, frame):
    inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
    return inside and not any(box.overlaps(other) for other in taken)


def _place_names(axes, variants, key, scale, renderer):
    """Annotates every point with its name where the name collides with nothing placed before."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    points = [(v[key] * scale, v["accuracy"] * 100) for v in variants]
    half = _MARKER_HALF_PIXELS
    taken = [
        Bbox.from_extents(x - half, y - half, x + half, y + half)
        for x, y in (axes.transData.transform(point) for point in points)
    ]
    frame = axes.get_window_extent(renderer)
    for variant, point in zip(variants, points):
        label = None
        for ring in _RINGS:
            for dx, dy, ha, va in _DIRECTIONS:
                label = axes.annotate(
                    variant["name"], point, xytext=(dx * ring, dy * ring), textcoords="offset points", ha=ha, va=va,
                    fontsize=7, zorder=4, bbox=_NAME_BOX,
                    arrowprops=None if ring == _RINGS[0] else dict(arrowstyle="-", color="0.5", linewidth=0.5),
                )
                label.update_positions(renderer)  # offset points resolve at draw time otherwise
                box = Text.get_window_extent(label, renderer)
                if _free(box, taken, frame):
                    taken.append(box)
                    break
                label.remove()
                label = None
            if label is not None:
                break
        if label is None:  # no free spot at all: the nearest one, overlapping
            axes.annotate(variant["name"], point, xytext=(_RINGS[0], 0), textcoords="offset points", fontsize=7,
                          va="center", zorder=4)


def pareto_figure(report):
    """The matplotlib `Figure` of pareto.png: accuracy vs gzip size and vs latency.

    Args:
        report: a report dict (see `edgekeras.app.report`).

    Returns:
        A `matplotlib.figure.Figure` with its names placed (drawn on the Agg
        renderer, so their extents are final).

    Example:

    ```python
    figure = pareto_figure(json.load(open("runs/demo/report.json")))
    figure.savefig("pareto.png")
    ```
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    variants = report["variants"]
    figure = Figure(figsize=(11, 5), dpi=110)
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, 2, sharey=True)
    for axes, (key, scale, xlabel, title) in zip(panels, _PANELS):
        _draw_panel(axes, variants, key, scale, xlabel, title)
    accuracies = [v["accuracy"] * 100 for v in variants]
    panels[0].set_ylim(*_limits(accuracies, log=False))
    panels[0].set_ylabel("top-1 accuracy (%)")
    figure.suptitle(f"{report['dataset']} {report['split']} split ({report['examples']} examples)", fontsize=10)
    handles, labels = panels[0].get_legend_handles_labels()
    extra = [(h, lab) for h, lab in zip(*panels[1].get_legend_handles_labels()) if lab not in labels]
    handles, labels = handles + [h for h, _ in extra], labels + [lab for _, lab in extra]
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    # Fixed margins, set before the names are placed: a later layout pass
    # would move the points under names measured at the old positions.
    figure.subplots_adjust(left=0.06, right=0.99, top=0.88, bottom=0.2, wspace=0.06)
    renderer = figure.canvas.get_renderer()
    for axes, (key, scale, _, _) in zip(panels, _PANELS):
        _place_names(axes, variants, key, scale, renderer)
    return figure


def plot_pareto(report):
    """Draws pareto.png (see `pareto_figure`); returns the PNG as bytes.

    Example:

    ```python
    open("pareto.png", "wb").write(plot_pareto(report))
    ```
    """
    buffer = io.BytesIO()
    pareto_figure(report).savefig(buffer, format="png")
    return buffer.getvalue()
