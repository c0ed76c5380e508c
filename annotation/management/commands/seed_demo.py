import secrets
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from annotation.documents.importing import ImportOptions, import_documents
from annotation.roles import EXPERTS_GROUP

DEMO_FILE = Path(__file__).resolve().parents[2] / "demo_data" / "abstracts.jsonl"
DEMO_USERS = [("admin", True), ("expert1", False), ("expert2", False)]


class Command(BaseCommand):
    help = "Import the bundled demo abstracts and create an admin and two experts with fresh passwords."

    def add_arguments(self, parser):
        parser.add_argument("--passwords-file", type=Path, help="Also write the logins to this file (mode 600).")

    @transaction.atomic
    def handle(self, *args, **options):
        result = import_documents(DEMO_FILE, ImportOptions(group_by="author", sample_size=5, heldout_fraction=0.2))
        self.stdout.write(f"Demo abstracts: {result.summary()}")
        logins = [self._user(name, is_admin) for name, is_admin in DEMO_USERS]
        lines = [f"  {name:<8} {password}" for name, password in logins]
        self.stdout.write("Logins (new passwords on every seed):\n" + "\n".join(lines))
        if options["passwords_file"]:
            options["passwords_file"].write_text("\n".join(lines) + "\n")
            options["passwords_file"].chmod(0o600)

    def _user(self, username: str, is_admin: bool) -> tuple[str, str]:
        user, _ = get_user_model().objects.get_or_create(username=username)
        password = secrets.token_urlsafe(9)
        user.set_password(password)
        user.is_staff = user.is_superuser = is_admin
        user.save()
        if not is_admin:
            user.groups.add(Group.objects.get_or_create(name=EXPERTS_GROUP)[0])
        return username, password
