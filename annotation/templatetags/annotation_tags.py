from django import template

from annotation.models import Choice

register = template.Library()


@register.filter
def choice_label(value: str) -> str:
    """A stored answer as people read it ("both_bad" → "Both bad"); anything else as it is."""
    return Choice(value).label if value in Choice.values else value
