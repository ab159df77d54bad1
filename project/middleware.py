"""Middleware of the project itself."""

from __future__ import annotations

from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from whitenoise.middleware import WhiteNoiseMiddleware


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise, able to run in an asynchronous middleware chain.

    WhiteNoise's middleware is synchronous only, so under ASGI Django switched threads
    around it on every request: the event loop handed the request to a thread for
    WhiteNoise, which handed the rest of the chain back to the loop, which handed the view
    to a thread again. Looking a path up among the collected files needs no thread (the
    table is in memory; with autorefresh, in development, one stat), so this one answers
    in the chain's own mode and only a static file's response is made by WhiteNoise."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        super().__init__(get_response)
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        return super().__call__(request)

    def _static_file(self, request: Any) -> Any:
        if self.autorefresh:
            return self.find_file(request.path_info)
        return self.files.get(request.path_info)

    async def __acall__(self, request: Any) -> Any:
        static_file = self._static_file(request)
        if static_file is not None:
            return self.serve(static_file, request)
        return await self.get_response(request)
