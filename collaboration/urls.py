"""Routes of the documents API, under /api/v1/documents/ (project/urls.py puts them before
the v1 catch-all). Path parameters use the converters whose patterns the schema states
(notifications/api/schema.py PATH_PARAMETERS)."""

from django.urls import path, register_converter

from collaboration import api
from notifications.api.schema import IdConverter, SegmentConverter


class NumberConverter:
    """A version number: 1 to 999,999,999; anything else names no route (a JSON 404)."""

    regex = "[1-9][0-9]{0,8}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(SegmentConverter, "doc_key")
register_converter(IdConverter, "doc_id")
register_converter(NumberConverter, "doc_version")

urlpatterns = [
    path("", api.DocumentListView.as_view(), name="documents"),
    path("<doc_key:key>/", api.DocumentView.as_view(), name="document"),
    path("<doc_key:key>/content/", api.DocumentContentView.as_view(), name="document-content"),
    path("<doc_key:key>/versions/", api.VersionListView.as_view(), name="document-versions"),
    path("<doc_key:key>/versions/<doc_version:number>/", api.VersionView.as_view(), name="document-version"),
    path(
        "<doc_key:key>/versions/<doc_version:number>/restore/",
        api.VersionRestoreView.as_view(),
        name="document-version-restore",
    ),
    path("<doc_key:key>/comments/", api.CommentListView.as_view(), name="document-comments"),
    path("<doc_key:key>/comments/<doc_id:comment_id>/", api.CommentView.as_view(), name="document-comment"),
]
