from django.urls import path

from . import views

app_name = "training"

urlpatterns = [
    path("runs/<int:pk>/", views.run_detail, name="run"),
    path("runs/<int:pk>/cancel", views.run_cancel, name="run_cancel"),
    path("runs/<int:pk>/resume", views.run_resume, name="run_resume"),
    path("runs/<int:pk>/merge", views.run_merge, name="run_merge"),
    path("runs/<int:pk>/generator", views.run_make_generator, name="run_make_generator"),
    path("runs/<int:pk>/files/<path:name>", views.run_download, name="run_download"),
    path("evaluations/<int:pk>/", views.evaluation_detail, name="evaluation"),
    path("evaluations/<int:pk>/cancel", views.evaluation_cancel, name="evaluation_cancel"),
    path("evaluations/<int:pk>/experts", views.evaluation_send, name="evaluation_send"),
    path("evaluations/<int:pk>/generator", views.evaluation_make_generator, name="evaluation_make_generator"),
    path("rounds/<int:pk>/", views.round_detail, name="round"),
    path("rounds/<int:pk>/cancel", views.round_cancel, name="round_cancel"),
]
