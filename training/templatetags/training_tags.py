"""Percentages and intervals as the evaluation pages print them; None (undefined) prints as a dash."""

from django import template

register = template.Library()


@register.filter
def percent(value) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


@register.filter
def interval(ci) -> str:
    if not ci or ci[0] is None:
        return "–"
    return f"{100 * ci[0]:.0f}–{100 * ci[1]:.0f}%"


@register.filter
def decimal_interval(ci) -> str:
    """A mean's interval in its own unit (words, competencies): "41.2–47.9"."""
    if not ci or ci[0] is None:
        return "–"
    return f"{ci[0]:.1f}–{ci[1]:.1f}"


@register.filter
def decimal(value) -> str:
    return "–" if value is None else f"{value:.1f}"
