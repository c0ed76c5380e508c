"""Role checks, enforced on the server for every view: experts are a group, admins are staff."""

from functools import wraps

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef

EXPERTS_GROUP = "experts"


class RoleBackend(ModelBackend):
    """Django's own backend, loading the signed-in user together with their expert role: every expert request
    checks the role, and this way it costs no query of its own (settings.AUTHENTICATION_BACKENDS)."""

    def get_user(self, user_id):
        experts = Group.objects.filter(user=OuterRef("pk"), name=EXPERTS_GROUP)
        users = get_user_model()._default_manager.annotate(in_experts_group=Exists(experts))
        try:
            user = users.get(pk=user_id)
        except users.model.DoesNotExist:
            return None
        return user if self.user_can_authenticate(user) else None


def is_expert(user) -> bool:
    if not user.is_authenticated:
        return False
    loaded = getattr(user, "in_experts_group", None)  # set by RoleBackend for the request's user
    return loaded if loaded is not None else user.groups.filter(name=EXPERTS_GROUP).exists()


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
