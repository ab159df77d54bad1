"""The firmware download a device's offer links to: ``GET /iot/firmware/<token>/``.

The token is the signed, expiring link of iot/services/firmware.py (``firmware_link``):
it names the firmware and the device it was made for, so no other credential is needed
and a device can fetch only what it was offered. In production PUBLIC_URL, and so the
link, is https; the device checks the image against the offer's sha256 either way.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.views.decorators.http import require_safe

from iot.services.firmware import FirmwareLinkRefused, firmware_link_open


@require_safe
def firmware_download(request: HttpRequest, token: str) -> HttpResponse:
    """The image as ``application/octet-stream`` with its SHA-256 as ETag and
    X-Checksum-Sha256; 304 when If-None-Match names it; 403 naming the problem for a
    forged, damaged or expired link or a revoked device."""
    try:
        firmware, _device = firmware_link_open(token)
    except FirmwareLinkRefused as refused:
        return HttpResponseForbidden(f"{refused}\n", content_type="text/plain; charset=utf-8")
    etag = f'"{firmware.sha256}"'
    headers = {"ETag": etag, "X-Checksum-Sha256": firmware.sha256, "Cache-Control": "private"}
    if etag in {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}:
        return HttpResponse(status=304, headers=headers)
    response = HttpResponse(bytes(firmware.image), content_type="application/octet-stream", headers=headers)
    response["Content-Disposition"] = f'attachment; filename="{firmware.kind}-{firmware.version}.bin"'
    response["Content-Length"] = str(firmware.size)
    return response
