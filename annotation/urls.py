from django.urls import path

from . import views_review

app_name = "annotation"

urlpatterns = [
    path("", views_review.queue, name="queue"),
    path("<int:pk>/", views_review.campaign_queue, name="campaign"),
    path("<int:pk>/undo", views_review.undo, name="undo"),
    path("assignment/<int:pk>/", views_review.assignment_detail, name="assignment"),
    path("assignment/<int:pk>/vote", views_review.vote, name="vote"),
    path("assignment/<int:pk>/skip", views_review.skip, name="skip"),
    path("assignment/<int:pk>/revise", views_review.revise, name="revise"),
]
