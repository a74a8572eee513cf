"""Bar chart of benchmark results from one or more JSON files, as a PNG.

This script holds the chart maker for lockstep's benchmarks.  It reads JSON
written by bench/py_bench.py (and any other suite, such as the C benchmark or
bench/py_async_bench.py, whose "loop" and "group" fields are folded in)
and draws one horizontal bar per approach on a log time axis, one subplot per
(suite, N).  A JSON input is either a list of rows or an object with "rows"
(and optionally "suite", "machine" and "window_sweep").  A row looks like

    {"suite": "python", "name": "itertools.tee", "n": 1000000,
     "median_s": 0.048, "min_s": 0.047, "max_s": 0.052,
     "ratio": 1.4, "peak_bytes": 40975152}

where only "name" and a time are required: "median_s", or else
"ns_per_item" (turned into seconds when "n" is known, plotted as ns/item
otherwise), or a throughput, "gb_per_s" (the byte-stream suites,
bench/bench_bytes.c and bench/py_bytes_bench.py, plotted as GB/s).  Rows with "skipped" are listed without a bar.  A non-empty
"window_sweep" list adds a line plot of time against window per engine.

    /usr/bin/python3 bench/py_chart.py --out bench/py_results.png bench/py_results.json
"""

import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def load_rows(paths):
    """Rows and window-sweep rows from every JSON file, with suite filled in."""
    rows, sweeps, machines = [], [], []
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        default_suite = os.path.splitext(os.path.basename(path))[0]
        if isinstance(doc, list):
            file_rows, file_sweep = doc, []
        else:
            default_suite = doc.get("suite", default_suite)
            file_rows, file_sweep = doc.get("rows", []), doc.get("window_sweep") or []
            if isinstance(doc.get("machine"), dict):  # py_async.json's is a string
                machines.append(doc["machine"])
        for row in file_rows:
            rows.append(async_row(dict(row, suite=row.get("suite", default_suite))))
        for row in file_sweep:
            sweeps.append(dict(row, suite=row.get("suite", default_suite + "-window-sweep")))
    return rows, sweeps, machines


def async_row(row):
    """A row of bench/py_async_bench.py (bench/results/py_async.json) in this
    script's terms: its "loop" (asyncio, uvloop, trio) joins the name, its
    "group" (one comparison) the suite, and "peak_b" is "peak_bytes"."""
    if row.get("loop"):
        row["name"] = f"{row['name']} [{row['loop']}]"
    if row.get("group") is not None:
        row["suite"] = f"{row['suite']} {row['group']}"
    if "peak_b" in row and "peak_bytes" not in row:
        row["peak_bytes"] = row["peak_b"]
    return row


def row_value(row):
    """(value, unit) to plot for a row: seconds, ns/item without N, or GB/s
    for a throughput; None if none."""
    if row.get("gb_per_s") is not None:
        return row["gb_per_s"], "GB/s"
    if row.get("median_s") is not None:
        return row["median_s"], "s"
    if row.get("ns_per_item") is not None:
        if row.get("n"):
            return row["ns_per_item"] * row["n"] * 1e-9, "s"
        return row["ns_per_item"], "ns/item"
    return None, None


def row_spread(row, value, unit):
    """Error-bar half-widths (below, above) from min_s/max_s, in the plot unit."""
    if unit != "s" or row.get("min_s") is None or row.get("max_s") is None:
        return 0.0, 0.0
    return max(0.0, value - row["min_s"]), max(0.0, row["max_s"] - value)


def fmt_value(value, unit):
    """A plotted value as a short label."""
    if unit != "s":
        return f"{value:.3g} {unit}"
    for name, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if value >= scale:
            return f"{value / scale:.3g} {name}"
    return f"{value / 1e-9:.3g} ns"


def fmt_bytes(count):
    """A byte count as B, KiB or MiB."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def fmt_n(n):
    """N as 10^k when it is a power of ten."""
    if n is None:
        return "?"
    k = len(str(n)) - 1
    return f"$10^{{{k}}}$" if n == 10 ** k else str(n)


def bar_color(row):
    """Colour by family: the baseline (ratio exactly 1) grey, lockstep blue, others orange."""
    if row.get("ratio") == 1.0:
        return "#888888"
    if row["name"].lower().startswith("lockstep"):
        return "#1f77b4"
    return "#ff7f0e"


AXIS_LABELS = {"s": "median time (s, log)", "ns/item": "ns per item (log)",
               "GB/s": "throughput, GB/s of stream (log; longer is faster)"}


def draw_group(ax, suite, n, rows):
    """One subplot: a horizontal bar per row of this (suite, n), log time axis."""
    values = [row_value(r) for r in rows]
    units = {u for _, u in values if u}
    unit = units.pop() if len(units) == 1 else "s"
    ys = list(range(len(rows)))[::-1]  # first row at the top
    plotted = [v for v, u in values if v is not None and u == unit and v > 0]
    lo = min(plotted) if plotted else 1e-6
    hi = max(plotted) if plotted else 1.0
    for y, row, (value, vunit) in zip(ys, rows, values):
        if "skipped" in row or value is None or vunit != unit or value <= 0:
            reason = row.get("skipped", "no time")
            ax.text(lo, y, f"  skipped ({reason})", va="center", fontsize=8,
                    color="#666666", style="italic")
            continue
        below, above = row_spread(row, value, unit)
        ax.barh(y, value, color=bar_color(row), height=0.7,
                xerr=[[below], [above]] if (below or above) else None,
                error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"})
        label = fmt_value(value, unit)
        if row.get("ratio") is not None:
            ratio = row["ratio"]
            label += f"  x{ratio:.3g}" if ratio < 1000 else f"  x{ratio:.0f}"
        if row.get("peak_bytes"):
            label += f"  mem {fmt_bytes(row['peak_bytes'])}"
            if row.get("peak_n") not in (None, row.get("n")):
                label += f" (at N={fmt_n(row['peak_n'])})"
        ax.text(value * 1.15 + (above if above else 0), y, label, va="center", fontsize=7.5)
    ax.set_yticks(ys)
    ax.set_yticklabels([r["name"] for r in rows], fontsize=8)
    ax.set_xscale("log")
    # room on the right for the labels; a little on the left for short bars
    ax.set_xlim(lo / 3, hi * 10 ** max(1.6, 0.35 * math.log10(max(hi / lo, 10))))
    ax.set_xlabel(AXIS_LABELS[unit])
    ax.set_title(suite if n is None else f"{suite}, N = {fmt_n(n)}", fontsize=10)
    ax.grid(axis="x", which="major", alpha=0.3)


def draw_sweep(ax, sweeps):
    """Line plot of time against window, one line per (suite, engine)."""
    lines = {}
    for row in sweeps:
        value, unit = row_value(row)
        if value is None or "skipped" in row or row.get("window") is None:
            continue
        key = (row["suite"], row.get("engine", row["name"]))
        lines.setdefault(key, []).append((row["window"], value))
    for (suite, engine), points in sorted(lines.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                markersize=3, label=f"{engine} ({suite})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("window (items)")
    ax.set_ylabel("median time (s, log)")
    n = next((r.get("n") for r in sweeps if r.get("n")), None)
    ax.set_title(f"lockstep window sweep, N = {fmt_n(n)}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def make_chart(rows, sweeps, machines, out):
    """Lay out one subplot per (suite, n) (plus the sweep) and save the PNG."""
    groups = {}
    for row in rows:
        groups.setdefault((row["suite"], row.get("n")), []).append(row)
    keys = list(groups)  # in file order
    panels = len(keys) + (1 if any("skipped" not in r for r in sweeps) else 0)
    if panels == 0:
        raise SystemExit("no rows to plot")
    heights = [max(2.2, 0.32 * len(groups[k]) + 1.0) for k in keys]
    if panels > len(keys):
        heights.append(4.0)
    fig, axes = plt.subplots(panels, 1, figsize=(11, sum(heights) + 0.8),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        draw_group(ax, key[0], key[1], groups[key])
    if panels > len(keys):
        draw_sweep(axes[-1, 0], sweeps)
    title = ("several consumers over one stream: time or throughput per approach "
             "(bars: median, or best for byte streams; whiskers: min-max)")
    if machines:
        m = machines[0]
        title += f"\n{m.get('cpu_model', '?')} x{m.get('cpu_count', '?')}"
        if m.get("python"):
            title += f", Python {m['python'].split()[0]}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    """Parse arguments, read the JSON files and write the chart."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, metavar="PATH", help="PNG file to write")
    p.add_argument("inputs", nargs="+", metavar="JSON", help="result files to plot")
    args = p.parse_args(argv)
    rows, sweeps, machines = load_rows(args.inputs)
    make_chart(rows, sweeps, machines, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
