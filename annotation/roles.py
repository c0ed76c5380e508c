"""Role checks, enforced on the server for every view: experts are a group; staff pages each need a named Django
permission (``staff_permission_required``), given to staff through the groups the migrations ship (README,
"Who may do what")."""

from functools import wraps

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.decorators import login_required, permission_required
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef

EXPERTS_GROUP = "experts"
# The staff groups annotation/migrations/0014_staff_groups.py ships.
ANNOTATION_LEAD_GROUP = "annotation lead"
ML_ENGINEER_GROUP = "ML engineer"
VIEWER_GROUP = "viewer"


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


def staff_permission_required(*perms: str):
    """A staff page that needs every one of ``perms``: anonymous users go to the login page, everyone else
    without them (staff included) gets 403. Superusers have every permission."""

    def decorate(view):
        @login_required
        @permission_required(perms, raise_exception=True)
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not is_admin(request.user):
                raise PermissionDenied("This page is for staff.")
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def require_permission(user, perm: str) -> None:
    """For a permission that only one branch of a view needs (e.g. "and start generating" on a form)."""
    if not user.has_perm(perm):
        raise PermissionDenied(f"This needs the permission {perm}.")
