"""A request whose database connection broke answers 503 with a page that says what happened, instead of a
bare "Server Error (500)". Every expert write is one transaction, so the page can say that nothing was saved,
or, once a view has set ``request.answer_saved``, that the answer was kept.
"""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string

logger = logging.getLogger(__name__)

# The expert's answers: each is one transaction, so a database failure leaves none half-written.
NOT_SAVED = {
    "annotation:vote": "Your vote was not saved.",
    "annotation:revise": "Your vote was not saved.",
    "annotation:skip": "The pair was not skipped.",
    "annotation:undo": "Your vote was not undone.",
}


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        logger.error("database unavailable during %s %s", request.method, request.path, exc_info=exception)
        match = request.resolver_match
        saved = getattr(request, "answer_saved", False)
        context = {
            "saved": saved,
            "not_saved": NOT_SAVED.get(match.view_name, "") if match and not saved else "",
            "retry_url": request.get_full_path() if request.method == "GET" else "",
        }
        # Rendered without the request: no context processor may touch the database that just failed.
        body = render_to_string("db_unavailable.html", context)
        response = HttpResponse(body, status=503)
        response["Retry-After"] = "5"
        return response
