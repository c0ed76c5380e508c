from django.urls import path

from . import views

app_name = "annotation"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("<int:pk>/", views.campaign_queue, name="campaign"),
    path("<int:pk>/undo", views.undo, name="undo"),
    path("assignment/<int:pk>/", views.assignment_detail, name="assignment"),
    path("assignment/<int:pk>/vote", views.vote, name="vote"),
    path("assignment/<int:pk>/skip", views.skip, name="skip"),
    path("assignment/<int:pk>/revise", views.revise, name="revise"),
]
