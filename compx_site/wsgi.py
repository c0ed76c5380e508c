import gc
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "compx_site.settings")
application = get_wsgi_application()
# Everything loaded so far (Django, the apps, their modules) lives as long as the worker: frozen, the
# collector stops walking it on every full collection, which otherwise lands inside some request
# (bench/review_load.py: ~0.7 ms off the review round trip's CPU time, more at p95).
gc.freeze()
