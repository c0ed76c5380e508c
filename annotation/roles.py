"""Role checks, enforced on the server for every view: experts are a group, admins are staff."""

from functools import lru_cache, wraps

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection

from .review.rows import RowReader, columns, table

EXPERTS_GROUP = "experts"


class RoleBackend(ModelBackend):
    """Django's own backend, loading the signed-in user together with their expert role: every expert request
    checks the role, and this way it costs no query of its own (settings.AUTHENTICATION_BACKENDS).

    Every request runs it, so its SQL is written once (annotation/review/rows.py says why).
    """

    def get_user(self, user_id):
        user_model = get_user_model()
        try:
            pk = user_model._meta.pk.to_python(user_id)
        except ValidationError:
            return None
        with connection.cursor() as cursor:
            cursor.execute(_user_sql(connection.vendor), {"pk": pk, "group": EXPERTS_GROUP})
            row = cursor.fetchone()
        if row is None:
            return None
        reader = RowReader(row)
        user = reader.model(columns(user_model, "u"))
        user.in_experts_group = bool(reader.value())
        return user if self.user_can_authenticate(user) else None


@lru_cache(maxsize=None)
def _user_sql(vendor: str) -> str:
    user_model = get_user_model()
    groups = user_model.groups.field
    user_column, group_column = groups.m2m_column_name(), groups.m2m_reverse_name()
    pk = connection.ops.quote_name(user_model._meta.pk.column)
    return (
        f"SELECT {columns(user_model, 'u').sql}, EXISTS (SELECT 1 FROM {table(groups.remote_field.through)} ug "
        f"INNER JOIN {table(Group)} g ON g.id = ug.{group_column} "
        f"WHERE ug.{user_column} = u.{pk} AND g.name = %(group)s) "
        f"FROM {table(user_model)} u WHERE u.{pk} = %(pk)s"
    )


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
