"""The ``<id:pk>`` of every URL: digits that fit a database id (bigint), so a longer number is a 404 and never
reaches the database as a value out of its range."""


class IdConverter:
    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)
