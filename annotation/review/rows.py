"""Model instances from hand-written SQL, for the few queries the expert review sends on every vote.

Building and compiling a queryset costs Django more CPU than PostgreSQL spends running it: for the claim of
the next pair ~1.5 ms of a ~11 ms round trip, while executing its SQL takes 0.2 ms of the worker's CPU. The
round trip's hottest queries are therefore written as SQL once per process (bench/review_load.py measures
the difference). This module keeps that SQL honest: column lists come from the models' own fields, and every
value goes through the converters the ORM itself applies (JSON, SQLite's datetimes and booleans), so the
instances are the ones a queryset would have built.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from django.db import connection
from django.db.models import Model


@dataclass(frozen=True)
class Columns:
    """One model's columns in a SELECT list, under a table alias."""

    model: type[Model]
    alias: str
    attnames: tuple[str, ...]  # in the model's field order: from_db() takes a full row positionally
    pk_position: int
    sql: str
    # (position in this model's columns, converters, the column expression they expect)
    converters: tuple[tuple[int, tuple, object], ...]

    @property
    def width(self) -> int:
        return len(self.attnames)

    def load(self, row, start: int) -> Model | None:
        """The instance from ``row[start:start + width]``; None when its primary key is NULL (an outer join
        that found nothing)."""
        values = list(row[start : start + self.width])
        if values[self.pk_position] is None:
            return None
        for position, converters, expression in self.converters:
            for converter in converters:
                values[position] = converter(values[position], expression, connection)
        return self.model.from_db(connection.alias, self.attnames, values)


@lru_cache(maxsize=None)
def _columns(model: type[Model], alias: str, vendor: str) -> Columns:
    fields = list(model._meta.concrete_fields)
    quote = connection.ops.quote_name
    converters = []
    for position, field in enumerate(fields):
        expression = field.get_col(alias)
        found = tuple(connection.ops.get_db_converters(expression) + expression.get_db_converters(connection))
        if found:
            converters.append((position, found, expression))
    return Columns(
        model=model,
        alias=alias,
        attnames=tuple(f.attname for f in fields),
        pk_position=fields.index(model._meta.pk),
        sql=", ".join(f"{alias}.{quote(f.column)}" for f in fields),
        converters=tuple(converters),
    )


def columns(model: type[Model], alias: str) -> Columns:
    return _columns(model, alias, connection.vendor)


def table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


class RowReader:
    """Reads one result row left to right: model after model, then plain values."""

    def __init__(self, row):
        self.row = row
        self.at = 0

    def model(self, model_columns: Columns) -> Model | None:
        instance = model_columns.load(self.row, self.at)
        self.at += model_columns.width
        return instance

    def value(self):
        self.at += 1
        return self.row[self.at - 1]
