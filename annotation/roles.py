"""Role checks, enforced on the server for every view: experts are a group, admins are staff."""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied

EXPERTS_GROUP = "experts"


def is_expert(user) -> bool:
    return user.is_authenticated and user.groups.filter(name=EXPERTS_GROUP).exists()


def is_admin(user) -> bool:
    return user.is_authenticated and user.is_active and user.is_staff


def expert_required(view):
    """Anonymous users go to the login page; signed-in users who are not experts get 403."""

    @login_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not is_expert(request.user):
            raise PermissionDenied("This page is for experts.")
        return view(request, *args, **kwargs)

    return wrapper


def admin_required(view):
    @login_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not is_admin(request.user):
            raise PermissionDenied("This page is for admins.")
        return view(request, *args, **kwargs)

    return wrapper
