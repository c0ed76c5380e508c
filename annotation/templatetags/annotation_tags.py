from django import template

from annotation.formatting import interval_text
from annotation.models import Choice

register = template.Library()


@register.filter
def choice_label(value: str) -> str:
    """A stored answer as people read it ("both_bad" → "Both bad"); anything else as it is."""
    return Choice(value).label if value in Choice.values else value


@register.filter
def duration(seconds) -> str:
    """Seconds as people say them: "45 s", "3 min", "1 h 20 min"."""
    from annotation.jobs.eta import duration as spoken

    return "" if seconds is None else spoken(float(seconds))


@register.inclusion_tag("annotation/rate.html")
def rate_and_eta(work):
    """The recent rate and the time left, with its error and what it is taken over; the same on every live page."""
    return {"work": work, "estimate": work.estimate()}


@register.filter
def estimate(values) -> str:
    """A stored [value, low, high] as every page prints an estimate: "0.59 [-0.22, 1.00]" (annotation.stats)."""
    return interval_text(*values) if values else "–"
