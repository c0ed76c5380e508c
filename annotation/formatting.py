"""Figures as every page, command and dataset card prints them (light: web processes import it)."""


def interval_text(value: float | None, low: float | None = None, high: float | None = None) -> str:
    """An estimate with its 95% interval: "0.59 [-0.22, 1.00]"; "–" when undefined, the value alone when the
    interval is."""
    if value is None or value != value:
        return "–"
    if low is None or high is None or low != low or high != high:
        return f"{value:.2f}"
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"
