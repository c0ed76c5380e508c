import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "compx_site.settings")

app = Celery("compx_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
