from django.urls import path

from . import views

app_name = "training"

urlpatterns = [
    path("runs/<id:pk>/", views.run_detail, name="run"),
    path("runs/<id:pk>/cancel", views.run_cancel, name="run_cancel"),
    path("runs/<id:pk>/resume", views.run_resume, name="run_resume"),
    path("runs/<id:pk>/merge", views.run_merge, name="run_merge"),
    path("runs/<id:pk>/generator", views.run_make_generator, name="run_make_generator"),
    path("runs/<id:pk>/files/<path:name>", views.run_download, name="run_download"),
    path("evaluations/<id:pk>/", views.evaluation_detail, name="evaluation"),
    path("evaluations/<id:pk>/cancel", views.evaluation_cancel, name="evaluation_cancel"),
    path("evaluations/<id:pk>/experts", views.evaluation_send, name="evaluation_send"),
    path("evaluations/<id:pk>/generator", views.evaluation_make_generator, name="evaluation_make_generator"),
    path("rounds/<id:pk>/", views.round_detail, name="round"),
    path("rounds/<id:pk>/cancel", views.round_cancel, name="round_cancel"),
]
