"""Staff pages outside the model admin, mounted at /admin-tools/ (see compx_site/urls.py)."""

from django.urls import path

from . import dashboard

app_name = "dashboard"

urlpatterns = [
    path("agreement/", dashboard.agreement_dashboard, name="agreement"),
    path("agreement/comparisons.csv", dashboard.agreement_csv, name="agreement_csv"),
    path("agreement/rankings.csv", dashboard.rankings_csv, name="rankings_csv"),
    path("exports/<id:pk>/files/<path:name>", dashboard.export_file, name="export_file"),
]
