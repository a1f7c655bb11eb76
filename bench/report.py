"""The side-by-side table, the JSON file and the PNG chart of a bench run."""

import json
import math
import platform
from pathlib import Path

import psutil

PEERS = ("ours", "ours-sync", "ours-pgbouncer", "celery", "dbos")
#: Column headers: ours as shipped skips the disk flush for two commits (claim, run end).
HEADERS = (
    "ours (claim+end: sync commit off)",
    "ours (fully synchronous)",
    "ours (through PgBouncer)",
    "celery",
    "dbos",
)
MB = 1024 * 1024


def _get(data: dict, *path: str):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _ms(spread: dict | None) -> str:
    if not spread or spread.get("median") is None:
        return "-"
    return (
        f"{spread['median'] * 1000:.2f} ms ({spread['min'] * 1000:.2f}–{spread['max'] * 1000:.2f})"
    )


def _rate(spread: dict | None) -> str:
    if not spread or spread.get("median") is None:
        return "-"
    return f"{spread['median']:.0f}/s ({spread['min']:.0f}–{spread['max']:.0f})"


def _num(value, fmt: str = "{:.2f}", scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value * scale if scale != 1.0 else value)


def _ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def targets(results: dict) -> list[dict]:
    """Each target (issues 6 and 18): what it asks, the figure, and whether it is met."""
    out = []

    def add(workload: str, what: str, value, limit, ok) -> None:
        out.append(
            {
                "workload": workload,
                "target": what,
                "value": value,
                "limit": limit,
                "met": None if value is None else bool(ok(value)),
            }
        )

    w1 = results.get("W1", {})
    sizes = sorted(int(k) for k in (w1.get("ours") or {}) if k.isdigit())
    if sizes:
        n = str(sizes[-1])
        ours = _get(w1, "ours", n, "per_step", "median")
        dbos = _get(w1, "dbos", n, "per_step", "median")
        floor = _get(w1, "floor", "median")
        add("W1", f"per step (N={n}) / DBOS's ≤ 0.2", _ratio(ours, dbos), 0.2, lambda v: v <= 0.2)
        add("W1", f"per step (N={n}) / commit floor ≤ 2", _ratio(ours, floor), 2, lambda v: v <= 2)
        add("W1", "t(400)/t(100) ≤ 4.5", _get(w1, "ours", "growth"), 4.5, lambda v: v <= 4.5)
    w2 = results.get("W2", {})
    ours = _get(w2, "ours", "per_second", "median")
    add(
        "W2",
        "runs/s / DBOS's ≥ 3",
        _ratio(ours, _get(w2, "dbos", "per_second", "median")),
        3,
        lambda v: v >= 3,
    )
    add(
        "W2",
        "runs/s / Celery's tasks/s ≥ 1",
        _ratio(ours, _get(w2, "celery", "per_second", "median")),
        1,
        lambda v: v >= 1,
    )
    w3 = results.get("W3", {})
    add(
        "W3",
        "p50 / Celery's p50 ≤ 2 (issue 18)",
        _ratio(_get(w3, "ours", "p50"), _get(w3, "celery", "p50")),
        2,
        lambda v: v <= 2,
    )
    w4 = results.get("W4", {})
    if "ours" in w4 and "error" not in w4["ours"]:
        o = w4["ours"]
        add("W4", "duplicates = 0", o["duplicates"], 0, lambda v: v == 0)
        add("W4", "misses = 0", o["misses"], 0, lambda v: v == 0)
        add("W4", "early = 0", o["early"], 0, lambda v: v == 0)
        add(
            "W4", "p99 lateness ≤ 50 ms (issue 18)", o["lateness"]["p99"], 0.05, lambda v: v <= 0.05
        )
        add(
            "W4",
            "memory growth / Celery eta's ≤ 0.2",
            _ratio(o["rss_growth"], _get(w4, "celery", "rss_growth")),
            0.2,
            lambda v: v <= 0.2,
        )
    w5 = _get(results, "W5", "ours")
    if w5 and "error" not in w5:
        add(
            "W5",
            "memory growth per parked run < 1 KB (flat)",
            w5["rss_growth_per_run"],
            1024,
            lambda v: v < 1024,
        )
    w11 = _get(results, "W11", "ours")
    if w11 and "error" not in w11 and w11["runs"] >= 10_000:
        add(
            "W11",
            f"check_workflows over {w11['runs']} active runs < 60 s",
            w11["check_seconds"],
            60.0,
            lambda v: v < 60.0,
        )
    return out


def rows(results: dict) -> list[tuple[str, str, str, str, str]]:
    """(workload, figure, ours, celery, dbos) rows of the table."""
    table = []
    w1 = results.get("W1", {})
    if w1:
        floor = w1.get("floor")
        table.append(("W1", "commit floor (1-row INSERT)", _ms(floor), "", ""))
        for n in sorted(int(k) for k in (w1.get("ours") or w1.get("dbos") or {}) if k.isdigit()):
            table.append(
                (
                    "W1",
                    f"per step, N={n}",
                    *(_ms(_get(w1, p, str(n), "per_step")) for p in PEERS),
                )
            )
        table.append(("W1", "t(400)/t(100)", *(_num(_get(w1, p, "growth")) for p in PEERS)))
        fl = _get(floor or {}, "median")
        table.append(
            (
                "W1",
                "per step / commit floor",
                *(
                    _num(_ratio(_get(w1, p, "400", "per_step", "median"), fl), "{:.2f}×")
                    for p in PEERS
                ),
            )
        )
    w2 = results.get("W2", {})
    if w2:
        n = next((v.get("events") for v in w2.values() if isinstance(v, dict)), "")
        table.append(
            ("W2", f"fan-out {n}: units/s", *(_rate(_get(w2, p, "per_second")) for p in PEERS))
        )
        table.append(
            (
                "W2",
                "fan-out: seconds (median)",
                *(_num(_get(w2, p, "seconds", "median")) for p in PEERS),
            )
        )
    w3 = results.get("W3", {})
    if w3:
        for q in ("p50", "p99"):
            table.append(
                (
                    "W3",
                    f"send → first step, {q}",
                    *(_num(_get(w3, p, q), "{:.2f} ms", 1000) for p in PEERS),
                )
            )
    w4 = results.get("W4", {})
    if w4:
        n = next(
            (v.get("events") for v in w4.values() if isinstance(v, dict) and "events" in v), ""
        )
        for q in ("p50", "p99"):
            table.append(
                (
                    "W4",
                    f"{n} deferred: lateness {q}",
                    *(_num(_get(w4, p, "lateness", q), "{:.3f} s") for p in PEERS),
                )
            )
        table.append(
            (
                "W4",
                "  of which emission (p50/p99)",
                *(
                    "/".join(
                        _num(_get(w4, p, "emission_lateness", q), "{:.3f} s")
                        for q in ("p50", "p99")
                    )
                    if _get(w4, p, "emission_lateness")
                    else "-"
                    for p in PEERS
                ),
            )
        )
        for key in ("duplicates", "misses", "early"):
            table.append(("W4", key, *(_num(_get(w4, p, key), "{}") for p in PEERS)))
        table.append(
            (
                "W4",
                "worker RSS idle",
                *(_num(_get(w4, p, "rss_idle"), "{:.0f} MB", 1 / MB) for p in PEERS),
            )
        )
        table.append(
            (
                "W4",
                "worker RSS peak",
                *(_num(_get(w4, p, "rss_peak"), "{:.0f} MB", 1 / MB) for p in PEERS),
            )
        )
        table.append(
            (
                "W4",
                "growth per deferred item",
                *(_num(_get(w4, p, "growth_per_item"), "{:.0f} B") for p in PEERS),
            )
        )
        table.append(
            (
                "W4",
                "database bytes per pending item",
                *(_num(_get(w4, p, "db_bytes_per_item"), "{:.0f} B") for p in PEERS),
            )
        )
    w5 = results.get("W5", {})
    if any(isinstance(v, dict) and "error" not in v for v in w5.values()):
        n = next((v.get("runs") for v in w5.values() if isinstance(v, dict) and "runs" in v), "")
        for label, key, fmt, scale in (
            (f"{n} parked: RSS idle", "rss_idle", "{:.0f} MB", 1 / MB),
            ("RSS parked", "rss_parked", "{:.0f} MB", 1 / MB),
            ("RSS growth per parked run", "rss_growth_per_run", "{:.0f} B", 1),
            ("DB rows per parked run", "rows_per_run", "{:.2f}", 1),
            ("DB bytes per parked run", "bytes_per_run", "{:.0f} B", 1),
            ("seconds to park them all", "park_seconds", "{:.1f} s", 1),
        ):
            table.append(("W5", label, *(_num(_get(w5, p, key), fmt, scale) for p in PEERS)))
    w11 = _get(results, "W11", "ours")
    if w11 and "error" not in w11:
        table.append(
            (
                "W11",
                f"check_workflows, {w11['runs']} runs x 20 memos",
                f"{w11['check_seconds']:.1f} s ({w11['runs_per_second']:.0f} runs/s)",
                "",
                "",
            )
        )
    for workload, per_peer in results.items():
        for peer in PEERS:
            err = _get(per_peer, peer, "error")
            if err:
                table.append((workload, f"{peer} FAILED", err[:60], "", ""))
    return table


def _padded(row: tuple) -> tuple:
    """A row with one cell per peer (rows of ours alone leave the others blank)."""
    return (*row, *[""] * (2 + len(PEERS) - len(row)))


def render(results: dict, target_list: list[dict]) -> str:
    """The printable table and the target check."""
    header = ("", "figure", *HEADERS)
    table = [header, *(_padded(r) for r in rows(results))]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    lines = []
    for i, r in enumerate(table):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("Targets (issues 6 and 18):")
    for t in target_list:
        mark = {True: "met   ", False: "MISSED", None: "n/a   "}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        lines.append(f"  {mark} {t['workload']} {t['target']}: {value}")
    return "\n".join(lines)


def machine() -> dict:
    """What the figures were measured on."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "load_avg": [round(x, 2) for x in psutil.getloadavg()],
    }


def write_json(path: Path, document: dict) -> None:
    """Write the figures as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def chart(path: Path, results: dict, title: str) -> None:
    """Draw the main figures side by side as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "ours": "#2b7bb9",
        "ours-sync": "#8fbfe0",
        "ours-pgbouncer": "#5a9bd0",
        "celery": "#7fb800",
        "dbos": "#e4572e",
    }
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    fig.suptitle(title, fontsize=11)

    def bars(ax, values: dict, ylabel: str, subtitle: str, errs: dict | None = None) -> None:
        names = [p for p in PEERS if values.get(p) is not None]
        heights = [values[p] for p in names]
        yerr = None
        if errs:
            yerr = [
                [values[p] - errs[p][0] for p in names],
                [errs[p][1] - values[p] for p in names],
            ]
        ax.bar(names, heights, color=[colors[p] for p in names], yerr=yerr, capsize=4)
        for i, h in enumerate(heights):
            ax.annotate(f"{h:.3g}", (i, h), ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(subtitle, fontsize=10)

    w1 = results.get("W1", {})
    ax = axes[0][0]
    ns = sorted({int(k) for p in PEERS for k in (w1.get(p) or {}) if k.isdigit()})
    width = 0.8 / max(1, len(ns))
    for j, n in enumerate(ns):
        vals = [(_get(w1, p, str(n), "per_step", "median") or 0) * 1000 for p in PEERS]
        ax.bar(
            [i + j * width for i in range(len(PEERS))],
            vals,
            width,
            label=f"N={n}",
            color=[colors[p] for p in PEERS],
            alpha=1.0 - 0.35 * j,
        )
    floor = _get(w1, "floor", "median")
    if floor:
        ax.axhline(floor * 1000, color="black", linestyle="--", linewidth=1, label="1-row commit")
    ax.set_xticks([i + width * (len(ns) - 1) / 2 for i in range(len(PEERS))], PEERS)
    ax.set_ylabel("ms per step")
    ax.set_title("W1 sequential steps (lower is better)", fontsize=10)
    if ns or floor:
        ax.legend(fontsize=8)

    w2 = results.get("W2", {})
    med = {p: _get(w2, p, "per_second", "median") for p in PEERS}
    errs = {
        p: (_get(w2, p, "per_second", "min"), _get(w2, p, "per_second", "max"))
        for p in PEERS
        if med.get(p)
    }
    bars(axes[0][1], med, "units per second", "W2 fan-out throughput (higher is better)", errs)

    w3 = results.get("W3", {})
    ax = axes[0][2]
    for j, q in enumerate(("p50", "p99")):
        vals = [(_get(w3, p, q) or 0) * 1000 for p in PEERS]
        ax.bar(
            [i + j * 0.4 for i in range(len(PEERS))],
            vals,
            0.4,
            label=q,
            color=[colors[p] for p in PEERS],
            alpha=1.0 - 0.4 * j,
        )
    ax.set_xticks([i + 0.2 for i in range(len(PEERS))], PEERS)
    ax.set_ylabel("ms")
    ax.set_title("W3 latency to first step (p50 solid, p99 light)", fontsize=10)

    w4 = results.get("W4", {})
    ax = axes[1][0]
    for j, q in enumerate(("p50", "p99")):
        vals = [(_get(w4, p, "lateness", q) or 0) for p in PEERS]
        ax.bar(
            [i + j * 0.4 for i in range(len(PEERS))],
            vals,
            0.4,
            color=[colors[p] for p in PEERS],
            alpha=1.0 - 0.4 * j,
        )
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_xticks([i + 0.2 for i in range(len(PEERS))], PEERS)
    ax.set_ylabel("seconds late")
    ax.set_title("W4 deferred lateness (p50 solid, p99 light; target p99 ≤ 50 ms)", fontsize=10)

    growth = {
        p: (_get(w4, p, "rss_growth") or 0) / MB if _get(w4, p, "rss_growth") is not None else None
        for p in PEERS
    }
    bars(axes[1][1], growth, "MB over idle", "W4 worker memory growth at peak")

    w5 = _get(results, "W5", "ours") or {}
    ax = axes[1][2]
    if "rss_idle" in w5:
        ax.bar(
            ["idle", "parked"], [w5["rss_idle"] / MB, w5["rss_parked"] / MB], color=colors["ours"]
        )
        ax.set_ylabel("worker RSS, MB")
        ax.set_title(
            f"W5 {w5['runs']} parked runs: {w5['rows_per_run']:.1f} rows, "
            f"{w5['bytes_per_run'] / 1024:.1f} KB in DB per run",
            fontsize=10,
        )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def failures(results: dict) -> list[str]:
    """What makes the bench fail: an error of this project's workloads, and duplicates,
    misses or early runs of its deferred work (W4). Timing never does; a peer's error is
    shown in the table, not failed on."""
    found = []
    for workload, by_peer in results.items():
        if not isinstance(by_peer, dict):
            continue
        for peer, figures in by_peer.items():
            if not isinstance(figures, dict):
                continue
            if peer.startswith("ours") and "error" in figures:
                found.append(f"{workload} {peer}: {figures['error']}")
            if workload == "W4" and peer.startswith("ours") and "error" not in figures:
                for kind in ("duplicates", "misses", "early"):
                    if figures.get(kind):
                        found.append(f"W4 {peer}: {figures[kind]} {kind}")
    return found
