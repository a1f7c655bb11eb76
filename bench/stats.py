"""Small statistics helpers: median with min–max, percentiles."""

import statistics


def spread(values: list[float]) -> dict:
    """``{"median", "min", "max", "n"}`` of ``values`` (``None`` if there are none)."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0–100) of ``values``, nearest-rank."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def latency(values: list[float]) -> dict:
    """p50, p99 and max of ``values`` (seconds), and how many there were."""
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
        "n": len(values),
    }
