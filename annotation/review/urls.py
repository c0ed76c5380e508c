from django.urls import path

from . import views

app_name = "annotation"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("<id:pk>/", views.campaign_queue, name="campaign"),
    path("<id:pk>/undo", views.undo, name="undo"),
    path("assignment/<id:pk>/", views.assignment_detail, name="assignment"),
    path("assignment/<id:pk>/vote", views.vote, name="vote"),
    path("assignment/<id:pk>/skip", views.skip, name="skip"),
    path("assignment/<id:pk>/revise", views.revise, name="revise"),
]
