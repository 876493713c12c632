"""Requests refused before a view sees them."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest


class RefuseNulInQuery:
    """A query parameter holding a NUL character is a 400: PostgreSQL text cannot hold one, so a filter
    of the admin's lists passed it on would fail the request with a 500."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if any("\x00" in key or "\x00" in value for key, values in request.GET.lists() for value in values):
            return HttpResponseBadRequest("A query parameter holds a NUL character.")
        return self.get_response(request)
