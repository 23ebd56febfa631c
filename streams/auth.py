"""Who may use the worker's web server: one aiohttp middleware in front of every route,
RebateGuard's and Faust's own alike.

- Programs (rebate engines, scripts, benchmarks) send `Authorization: Bearer <RG_API_TOKEN>`.
- People log in on `/login` with `RG_CONSOLE_USER` / `RG_CONSOLE_PASSWORD` (the API token when
  no password is set) and get a session cookie: HttpOnly (no script reads it), SameSite=Strict
  (no other site's page sends it), signed with a key derived from the token and the password
  (changing either ends every session; no session store, so any worker with the same settings
  accepts it), valid for `SESSION_S`. A session only reads (GET, HEAD): whatever changes
  something, such as `POST /score`, needs the token itself.

Without a token configured nothing is served but the login page, and no login succeeds.
Comparisons are constant-time. Not here: roles, rate limiting of logins, TLS (terminate it in
front of the worker; the cookie is marked Secure when the request came over https).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from rebate_guard.settings import Settings

SESSION_COOKIE = "rg_session"
SESSION_S = 12 * 3600
#: Served to anyone: the login form and its submission, and logging out.
PUBLIC_PATHS = frozenset({"/login", "/logout"})
#: The login page's own script and style are public; the rest of /static/ is only code.
PUBLIC_PREFIX = "/static/"
#: On every answer. Scripts and styles only from this server's files (no inline script, so
#: a value that slipped into the page as HTML still cannot run), no framing, no plugins, no
#: referrer leaking ids, no content-type sniffing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
#: What a session may do; everything else needs the bearer token.
READ_METHODS = frozenset({"GET", "HEAD"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Guard:
    def __init__(self, settings: Settings) -> None:
        self.token = settings.api_token
        self.user = settings.console_user
        self.password = settings.console_password or settings.api_token
        secret = f"{self.token}\0{self.password}".encode()
        self._key = hashlib.sha256(b"rebate-guard session\0" + secret).digest()

    def login_ok(self, user: str, password: str) -> bool:
        if not self.token:
            return False
        # Both compared, always: the time taken tells nothing about which one was wrong.
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        password_ok = hmac.compare_digest(password.encode(), self.password.encode())
        return user_ok and password_ok

    def new_session(self, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + SESSION_S)
        return f"{expires}.{self._sign(expires)}"

    def session_ok(self, value: str, now: float | None = None) -> bool:
        expires, _, signature = value.partition(".")
        if not self.token or not expires.isdigit():
            return False
        fresh = int(expires) > (time.time() if now is None else now)
        return fresh and hmac.compare_digest(signature, self._sign(int(expires)))

    def _sign(self, expires: int) -> str:
        return hmac.new(self._key, str(expires).encode(), hashlib.sha256).hexdigest()

    def allows(self, request: web.Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token:
            return hmac.compare_digest(given.strip().encode(), self.token.encode())
        session = request.cookies.get(SESSION_COOKIE)
        return session is not None and request.method in READ_METHODS and self.session_ok(session)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIX) or self.allows(request):
            response = await handler(request)
        elif path == "/" and request.method in READ_METHODS:
            raise web.HTTPSeeOther("/login", headers=SECURITY_HEADERS)  # log in first
        else:
            response = web.json_response(
                {"error": "authentication required: Authorization: Bearer <RG_API_TOKEN>"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="rebate-guard"'},
            )
        response.headers.update(SECURITY_HEADERS)
        return response

    def set_session(self, response: web.StreamResponse, secure: bool) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            self.new_session(),
            max_age=SESSION_S,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=secure,
        )
