"""Who may use the worker's web server: one aiohttp middleware in front of every route,
RebateGuard's and Faust's own alike.

- Programs (rebate engines, scripts, benchmarks) send `Authorization: Bearer <RG_API_TOKEN>`:
  they are `API_IDENTITY`, role admin, and may do everything.
- People log in on `/login`: the bootstrap user `RG_CONSOLE_USER` / `RG_CONSOLE_PASSWORD` (the
  API token when no password is set), role admin, or a user of the users file
  (streams/users.py) with their role (streams/roles.py). They get a session cookie naming
  user, role and expiry: HttpOnly (no script reads it), SameSite=Strict (no other site's page
  sends it), signed with a key derived from the token and the bootstrap password (changing
  either ends every session; no session store, so any worker with the same settings accepts
  it), valid for `SESSION_S`. Every request checks the user is still there with that role (and,
  for file users, the same password): removing a user or changing their role or password ends
  their sessions.
- A session reads everything (GET, HEAD) and writes only under `/console/`, as a reviewer or
  admin, with the session's CSRF token (`csrf_token`: form field `csrf` or header
  `X-CSRF-Token`). Any other change, such as `POST /score`, needs the token itself. Finer
  checks are the views': `require(request, role)`.
- Logins are rate limited (streams/throttle.py): 5 failures from one client address, or for one
  user name, within 5 minutes, and further attempts get 429 for the rest of the window.

Without a token configured nothing is served but the login page, and no login succeeds.
Comparisons are constant-time. Not here: TLS (terminate it in front of the worker; the cookie is
marked Secure when the request came over https).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from rebate_guard.settings import Settings
from streams.roles import ADMIN, API_IDENTITY, REVIEWER, ROLES, VIEWER, Identity
from streams.throttle import LoginThrottle
from streams.users import DUMMY, MAX_NAME, UsersFile

__all__ = [
    "ADMIN",
    "API_IDENTITY",
    "REVIEWER",
    "ROLES",
    "VIEWER",
    "Guard",
    "Identity",
]

SESSION_COOKIE = "rg_session"
SESSION_S = 12 * 3600
#: Where the middleware keeps the request's `Identity` (None: nobody), for the views:
#: `request[IDENTITY_KEY]`, or `guard.identity(request)`, which reads it.
IDENTITY_KEY: web.RequestKey[Identity | None] = web.RequestKey("identity")
#: Served to anyone: the login form and its submission, logging out, and "no icon".
PUBLIC_PATHS = frozenset({"/login", "/logout", "/favicon.ico"})
#: The login page's own script and style are public; the rest of /static/ is only code.
PUBLIC_PREFIX = "/static/"
#: The console: where a session may write, and where a browser without one is sent to log in.
CONSOLE_PREFIX = "/console/"
#: Where a login lands.
HOME = CONSOLE_PREFIX
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
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
#: What a session may do anywhere; writing it may only under `CONSOLE_PREFIX`.
READ_METHODS = frozenset({"GET", "HEAD"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(
    status: type[web.HTTPException], message: str, headers: dict[str, str] | None = None
) -> web.HTTPException:
    body = json.dumps({"error": message})
    return status(text=body, content_type="application/json", headers=headers)


def _unauthorized(message: str) -> web.HTTPException:
    www = {"WWW-Authenticate": 'Bearer realm="rebate-guard"'}
    return _error(web.HTTPUnauthorized, message, www)


class Guard:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.token = settings.api_token
        self.user = settings.console_user
        self.password = settings.console_password or settings.api_token
        secret = f"{self.token}\0{self.password}".encode()
        self._key = hashlib.sha256(b"rebate-guard session\0" + secret).digest()
        self.clock = clock
        self.users = UsersFile(settings.console_users_path)
        self.users.current()  # read now: a broken file is logged at start
        self.throttle = LoginThrottle(clock=clock)

    # --- users and logins -----------------------------------------------------------------
    def _role_and_stamp(self, user: str) -> tuple[str, str] | None:
        """The user's role now and what else their sessions are signed with (file users: the
        password's salt, new with every password); None for nobody."""
        if not self.token:
            return None
        if user == self.user:
            return ADMIN, ""
        found = self.users.current().get(user)
        return None if found is None else (found.role, found.salt.hex())

    def check_password(self, user: str, password: str) -> Identity | None:
        """Who `user` is if `password` is theirs (slow: scrypt for file users)."""
        if not self.token:
            return None
        if hmac.compare_digest(user.encode(), self.user.encode()):
            if hmac.compare_digest(password.encode(), self.password.encode()):
                return Identity(self.user, ADMIN, "session")
            return None
        found = self.users.current().get(user)
        ok = (found or DUMMY).verify(password)  # as slow for an unknown name
        return Identity(user, found.role, "session") if ok and found else None

    async def login(self, request: web.Request, user: str, password: str) -> Identity | None:
        """Who logs in, or None; raises 429 (Retry-After) while the client address or the user
        name has too many recent failures, whether or not the password is right."""
        keys = (f"addr\0{request.remote}", f"user\0{user[: MAX_NAME + 1]}")
        wait = self.throttle.wait_s(*keys)
        if wait > 0:
            seconds = str(math.ceil(wait))
            raise web.HTTPTooManyRequests(
                text=f"too many failed logins: try again in {seconds} s",
                headers={"Retry-After": seconds},
            )
        at = self.throttle.failed(*keys)  # counted before the check: parallel guesses too
        identity = await asyncio.to_thread(self.check_password, user, password)
        if identity is not None:
            self.throttle.forgive(keys[0], at)  # only this attempt: others' failures stay
            self.throttle.forgive(keys[1])
        return identity

    # --- sessions -------------------------------------------------------------------------
    def new_session(self, identity: Identity, now: float | None = None) -> str:
        expires = int((self.clock() if now is None else now) + SESSION_S)
        # A nonce: every login its own cookie, and so its own CSRF token.
        claims = {"u": identity.user, "r": identity.role, "e": expires, "n": secrets.token_hex(8)}
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        found = self._role_and_stamp(identity.user)
        return f"{payload}.{self._sign(payload, found[1] if found else '')}"

    def session_identity(self, value: str, now: float | None = None) -> Identity | None:
        """The identity a session cookie carries: None unless signed here, unexpired, and its
        user still there with that role and password."""
        payload, _, signature = value.rpartition(".")
        try:
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            user, role, expires = claims["u"], claims["r"], claims["e"]
        except (ValueError, TypeError, KeyError):
            return None
        current = self._role_and_stamp(user) if isinstance(user, str) else None
        if current is None or current[0] != role or not isinstance(expires, int):
            return None
        if expires <= (self.clock() if now is None else now):
            return None
        if not hmac.compare_digest(signature.encode(), self._sign(payload, current[1]).encode()):
            return None
        return Identity(user, role, "session")

    def _sign(self, payload: str, stamp: str) -> str:
        return hmac.new(self._key, f"{payload}\0{stamp}".encode(), hashlib.sha256).hexdigest()

    def set_session(self, response: web.StreamResponse, identity: Identity, secure: bool) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            self.new_session(identity),
            max_age=SESSION_S,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=secure,
        )

    # --- requests -------------------------------------------------------------------------
    def identity(self, request: web.Request) -> Identity | None:
        """Who made the request: the bearer token's identity, the session's, or None."""
        if IDENTITY_KEY in request:
            return request[IDENTITY_KEY]
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.token:
            ok = hmac.compare_digest(given.strip().encode(), self.token.encode())
            return API_IDENTITY if ok else None
        session = request.cookies.get(SESSION_COOKIE)
        return None if session is None else self.session_identity(session)

    def csrf_token(self, request: web.Request) -> str:
        """What the console's forms send back as `csrf` (or scripts as `X-CSRF-Token`): bound
        to the session cookie, so it changes with every login. "" without a session."""
        session = request.cookies.get(SESSION_COOKIE)
        if not session:
            return ""
        return hmac.new(self._key, f"csrf\0{session}".encode(), hashlib.sha256).hexdigest()

    def require(self, request: web.Request, role: str) -> Identity:
        """The request's identity if its role is at least `role`; else 401 (nobody) or 403."""
        identity = self.identity(request)
        if identity is None:
            raise _unauthorized("authentication required")
        if not identity.at_least(role):
            raise _error(
                web.HTTPForbidden, f"needs role {role}; {identity.user} is {identity.role}"
            )
        return identity

    async def _csrf_ok(self, request: web.Request) -> bool:
        expected = self.csrf_token(request)
        given = request.headers.get(CSRF_HEADER)
        if given is None and request.content_type in FORM_TYPES:
            given = str((await request.post()).get(CSRF_FIELD, ""))  # kept for the view
        return bool(expected) and hmac.compare_digest((given or "").encode(), expected.encode())

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        identity = request[IDENTITY_KEY] = self.identity(request)
        path, method = request.path, request.method
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIX):
            return await handler(request)
        if identity is None:
            to_login = path == "/" or path.startswith(CONSOLE_PREFIX) or path == "/console"
            if method in READ_METHODS and to_login:
                raise web.HTTPSeeOther("/login")  # log in first
            raise _unauthorized("authentication required: Authorization: Bearer <RG_API_TOKEN>")
        if identity.via == "session" and method not in READ_METHODS:
            if not path.startswith(CONSOLE_PREFIX):
                raise _unauthorized("a session writes only under /console/: this needs the token")
            self.require(request, REVIEWER)
            if not await self._csrf_ok(request):
                raise _error(web.HTTPForbidden, "missing or wrong CSRF token")
        return await handler(request)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await self._guarded(request, handler)
        except web.HTTPException as exc:  # refusals, redirects and views' 403s alike
            exc.headers.update(SECURITY_HEADERS)
            raise
        response.headers.update(SECURITY_HEADERS)
        return response
