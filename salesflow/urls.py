from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

urlpatterns = [
    # The admin is the only web UI: send the bare host there instead of a 404.
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    path("admin/", admin.site.urls),
]
