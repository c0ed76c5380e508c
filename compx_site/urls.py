from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path, register_converter
from django.views.generic import RedirectView

from compx_site.converters import IdConverter

register_converter(IdConverter, "id")  # before the included URL confs below use it

from annotation import views as annotation_views  # noqa: E402
from annotation.jobs import views as job_views  # noqa: E402

admin.site.site_header = "CompX administration"
admin.site.site_title = "CompX admin"
admin.site.index_title = "The loop: documents → profiles → judgments → votes → datasets → runs"

urlpatterns = [
    path("", annotation_views.home, name="home"),
    path("healthz", annotation_views.healthz, name="healthz"),
    # Browsers ask for /favicon.ico on pages that name no icon (the admin's).
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("jobs/<id:pk>/", job_views.job_detail, name="job_detail"),
    path("jobs/<id:pk>/cancel", job_views.job_cancel, name="job_cancel"),
    path("review/", include("annotation.review.urls")),
    path("admin-tools/", include("annotation.agreement.urls")),
    path("training/", include("training.urls")),
    path("admin/", admin.site.urls),
]
