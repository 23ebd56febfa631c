"""Who may use the worker's web server (streams/auth.py): the real server, Faust's driver
and views with the guard in front, over HTTP."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
import urllib.parse
from http.cookies import SimpleCookie
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from faust.web import Request, Response, View

from rebate_guard.settings import Settings
from streams.app import Worker, create_worker
from streams.auth import (
    ADMIN,
    API_IDENTITY,
    IDENTITY_KEY,
    REVIEWER,
    ROLES,
    SESSION_COOKIE,
    SESSION_S,
    VIEWER,
    Guard,
    Identity,
)
from streams.roles import role_at_least
from streams.throttle import LoginThrottle
from streams.users import User, UsersFile
from tests.factories import tx
from tests.web import TOKEN, served

BEARER = {"Authorization": f"Bearer {TOKEN}"}
JSON_ROUTES = ["/api/stats", "/api/rings", "/decisions/p1", "/router/", "/table/"]


def _login(server, user: str, password: str):  # type: ignore[no-untyped-def]
    form = urllib.parse.urlencode({"user": user, "password": password}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return server.call("POST", "/login", form, headers)


def _session(response) -> str:  # type: ignore[no-untyped-def]
    cookie = SimpleCookie(response.headers["Set-Cookie"])[SESSION_COOKIE]
    return f"{SESSION_COOKIE}={cookie.value}"


def _claims(payload: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _encode(claims: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()


def test_every_route_refuses_requests_without_the_right_token() -> None:
    with served(Settings(api_token=TOKEN, faust_web_pages=True)) as server:
        for path in JSON_ROUTES:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                status, response, body = server.call("GET", path, headers=headers)
                assert status == 401, (path, headers)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert "Bearer" in json.loads(body)["error"]
        payment = json.dumps(tx("p1")).encode()
        status, _, _ = server.call("POST", "/score", payment)
        assert status == 401 and not server.store.decisions  # refused before any work


def test_the_right_token_opens_every_route_faust_pages_included() -> None:
    with served(Settings(api_token=TOKEN, faust_web_pages=True)) as server:
        status, _, body = server.call("POST", "/score", json.dumps(tx("p1")).encode(), BEARER)
        assert status == 200 and json.loads(body)["decision"]["tx_id"] == "p1"
        for path in JSON_ROUTES:
            status, _, body = server.call("GET", path, headers=BEARER)
            assert status == 200, (path, body)
        status, _, body = server.call("GET", "/api/stats", headers=BEARER)
        assert json.loads(body)["recent"][0]["tx_id"] == "p1"
        status, _, body = server.call("GET", "/table/", headers=BEARER)  # Faust's own view
        assert json.loads(body) == []  # the app keeps no Faust tables


def test_faust_pages_are_not_served_unless_asked_for() -> None:
    with served() as server:
        for path in ("/router/", "/table/", "/graph/", "/assignment/"):
            status, _, _ = server.call("GET", path, headers=BEARER)
            assert status == 404, path
            status, _, _ = server.call("GET", path)
            assert status == 401, path  # what is not there is not told apart either


def test_a_person_logs_in_and_the_session_reads_but_changes_nothing_outside_the_console() -> None:
    with served() as server:
        status, response, _ = server.call("GET", "/")
        assert status == 303 and response.headers["Location"] == "/login"
        status, _, page = server.call("GET", "/login")
        assert status == 200 and b'name="password"' in page
        for user, password in (("admin", "wrong"), ("root", TOKEN), ("", "")):
            status, response, _ = _login(server, user, password)
            assert status == 303 and response.headers["Location"] == "/login?failed"
            assert "Set-Cookie" not in response.headers
        status, response, _ = _login(server, "admin", TOKEN)  # no password set: the token
        assert status == 303 and response.headers["Location"] == "/console/"
        set_cookie = response.headers["Set-Cookie"].lower()
        assert "httponly" in set_cookie and "samesite=strict" in set_cookie
        assert f"max-age={SESSION_S}" in set_cookie and "path=/" in set_cookie
        session = {"Cookie": _session(response)}
        status, _, page = server.call("GET", "/", headers=session)
        assert status == 200 and b"Recent decisions" in page
        status, _, _ = server.call("GET", "/api/stats", headers=session)
        assert status == 200
        payment = json.dumps(tx("p1")).encode()
        status, _, _ = server.call("POST", "/score", payment, session)
        assert status == 401 and not server.store.decisions  # changes need the token
        status, response, _ = server.call("POST", "/logout", headers=session)
        assert status == 303 and response.headers["Location"] == "/login"
        assert SimpleCookie(response.headers["Set-Cookie"])[SESSION_COOKIE].value == ""


def test_a_set_console_password_replaces_the_token_for_people() -> None:
    settings = Settings(api_token=TOKEN, console_user="risk", console_password="s3cret")
    with served(settings) as server:
        assert _login(server, "risk", TOKEN)[1].headers["Location"] == "/login?failed"
        status, response, _ = _login(server, "risk", "s3cret")
        assert response.headers["Location"] == "/console/"
        status, _, _ = server.call("GET", "/api/rings", headers={"Cookie": _session(response)})
        assert status == 200


def test_sessions_expire_cannot_be_forged_and_end_when_the_secrets_change() -> None:
    guard = Guard(Settings(api_token=TOKEN))
    now = 1_000_000.0
    admin = Identity("admin", ADMIN, "session")
    session = guard.new_session(admin, now)
    assert guard.session_identity(session, now + SESSION_S - 1) == admin
    assert guard.session_identity(session, now + SESSION_S) is None
    payload, _, signature = session.partition(".")
    claims = _claims(payload)
    for change in ({"e": claims["e"] + 3600}, {"r": VIEWER}, {"u": "root"}, {"e": "9" * 12}):
        forged = f"{_encode({**claims, **change})}.{signature}"  # extended, demoted, renamed
        assert guard.session_identity(forged, now) is None, change
    assert guard.session_identity(f"{payload}.{'0' * len(signature)}", now) is None
    odd = [f"{_encode([1])}.{signature}", f"{payload}.é{signature[1:]}", "é.x", "%%.x"]
    for garbage in ("", ".", "garbage", "a.b", *odd):
        assert guard.session_identity(garbage, now) is None
    assert Guard(Settings(api_token="rotated")).session_identity(session, now) is None
    other_password = Guard(Settings(api_token=TOKEN, console_password="new"))
    assert other_password.session_identity(session, now) is None


def test_a_session_carries_any_user_name_safely() -> None:
    for name in ('we"ird;na.me=\0', "é 名前", "a" * 128, "x.y.z"):
        guard = Guard(Settings(api_token=TOKEN, console_user=name))
        session = guard.new_session(Identity(name, ADMIN, "session"))
        assert re.fullmatch(r"[A-Za-z0-9_\-]+\.[0-9a-f]{64}", session)  # cookie-safe
        assert guard.session_identity(session) == Identity(name, ADMIN, "session")
        assert Guard(Settings(api_token=TOKEN)).session_identity(session) is None


def test_without_a_token_configured_nothing_is_served_and_nobody_logs_in() -> None:
    with served(Settings()) as server:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"}):
            status, _, _ = server.call("GET", "/api/stats", headers=headers)
            assert status == 401
        status, response, _ = _login(server, "admin", "")
        assert response.headers["Location"] == "/login?failed"
        guard = Guard(Settings())
        assert guard.session_identity(guard.new_session(Identity("admin", ADMIN, "x"))) is None


def test_the_server_binds_where_the_settings_say() -> None:
    assert create_worker(Settings(web_host="10.1.2.3")).app.conf.web_bind == "10.1.2.3"
    with served(Settings(api_token=TOKEN, web_host="127.0.0.1")) as server:
        addresses = server.worker.app.web._runner.addresses  # type: ignore[attr-defined]
        assert [a[:2] for a in addresses] == [("127.0.0.1", server.port)]


def test_every_answer_carries_the_security_headers_and_pages_have_no_inline_script() -> None:
    """The Content-Security-Policy forbids inline script, so the pages load theirs from
    /static/ (public: the login page needs its own before anyone is logged in)."""
    from streams.auth import SECURITY_HEADERS
    from streams.web import LOGIN_PAGE, STATUS_PAGE

    assert "script-src 'self'" in SECURITY_HEADERS["Content-Security-Policy"]
    with served() as server:
        answers = [
            server.call("GET", "/api/stats", headers=BEARER),  # allowed
            server.call("GET", "/api/stats"),  # refused
            server.call("GET", "/login"),  # public
            server.call("GET", "/static/login.js"),  # public asset
        ]
        for _, response, _ in answers:
            for name, value in SECURITY_HEADERS.items():
                assert response.headers[name] == value
        status, response, body = server.call("GET", "/static/status.js")
        assert status == 200 and response.headers["Content-Type"].startswith("text/javascript")
        assert b"textContent" in body
        status, _, _ = server.call("GET", "/static/../auth.py")
        assert status == 404
        status, _, _ = server.call("GET", "/static/nothing.js")
        assert status == 404
    for page in (LOGIN_PAGE, STATUS_PAGE):
        assert "<script>" not in page and "<style>" not in page
        assert not re.search(r"\son[a-z]+\s*=", page)  # no inline event handlers either


# --- roles, the users file, console writes, rate limiting ------------------------------------

PASSWORD = "long enough pw"
PEOPLE = {"vera": VIEWER, "rita": REVIEWER, "adam": ADMIN}


def _with_users(tmp_path: Path, people: dict[str, str] = PEOPLE) -> Settings:
    settings = Settings(api_token=TOKEN, data_dir=tmp_path)
    UsersFile(settings.console_users_path).write(
        {name: User.create(name, role, f"{PASSWORD} {name}") for name, role in people.items()}
    )
    return settings


def _console_probe(worker: Worker) -> None:
    """/console/probe: GET shows who is asking; POST needs `?role=` (default admin)."""
    guard = worker.guard

    @worker.app.page("/console/probe")
    class Probe(View):
        async def get(self, request: Request) -> Response:
            identity = request[IDENTITY_KEY]  # type: ignore[index]
            assert identity is not None and guard.identity(request) is identity  # type: ignore[arg-type]
            csrf = guard.csrf_token(request)  # type: ignore[arg-type]
            shown = {**dataclasses.asdict(identity), "csrf": csrf, "unmask": identity.may_unmask}
            return self.json(shown)

        async def post(self, request: Request) -> Response:
            identity = guard.require(request, request.query.get("role", ADMIN))  # type: ignore[arg-type]
            form = await request.post()  # still readable after the guard read the csrf field
            return self.json({"by": identity.user, "note": form.get("note")})


def _form(**fields: str) -> tuple[bytes, dict[str, str]]:
    return urllib.parse.urlencode(fields).encode(), {
        "Content-Type": "application/x-www-form-urlencoded"
    }


class _Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_roles_are_ordered_and_only_admins_see_pii_unmasked() -> None:
    assert ROLES == (VIEWER, REVIEWER, ADMIN)
    for i, role in enumerate(ROLES):
        for j, needed in enumerate(ROLES):
            assert role_at_least(role, needed) is (i >= j), (role, needed)
        assert Identity("x", role, "session").may_unmask is (role == ADMIN)
    assert not role_at_least("root", VIEWER) and not Identity("x", "Admin", "s").at_least(VIEWER)
    with pytest.raises(ValueError, match="unknown role"):
        role_at_least(ADMIN, "superuser")
    assert API_IDENTITY.may_unmask and (API_IDENTITY.user, API_IDENTITY.via) == ("api", "token")


def test_each_role_reads_and_only_reviewers_and_admins_write_in_the_console(
    tmp_path: Path,
) -> None:
    with served(_with_users(tmp_path), _console_probe) as server:
        sessions = {}
        for name, role in PEOPLE.items():
            status, response, _ = _login(server, name, f"{PASSWORD} {name}")
            assert status == 303 and response.headers["Location"] == "/console/", name
            sessions[name] = {"Cookie": _session(response)}
            status, _, body = server.call("GET", "/console/probe", headers=sessions[name])
            shown = json.loads(body)
            assert status == 200 and (shown["user"], shown["role"]) == (name, role)
            assert shown["via"] == "session" and shown["unmask"] is (role == ADMIN)
            sessions[name]["X-CSRF-Token"] = shown["csrf"]
            status, _, _ = server.call("GET", "/api/stats", headers=sessions[name])
            assert status == 200
        expected = {  # (name, needed) -> status
            ("vera", VIEWER): 403,  # viewers never write, even where a view would let them
            ("rita", REVIEWER): 200,
            ("rita", ADMIN): 403,
            ("adam", ADMIN): 200,
        }
        for (name, needed), want in expected.items():
            status, response, body = server.call(
                "POST", f"/console/probe?role={needed}", b"", sessions[name]
            )
            assert status == want, (name, needed, body)
            if want == 403:
                assert f"is {PEOPLE[name]}" in json.loads(body)["error"]
                assert response.headers["X-Frame-Options"] == "DENY"
        status, _, body = server.call("POST", "/console/probe", b"", BEARER)  # the token: admin
        assert status == 200 and json.loads(body)["by"] == "api"
        status, _, _ = server.call("POST", "/console/probe", b"")
        assert status == 401
        status, response, _ = server.call("GET", "/console/probe")
        assert status == 303 and response.headers["Location"] == "/login"
        status, _, _ = server.call("GET", "/console/probe", headers={"Cookie": "rg_session=x.y"})
        assert status == 303


def test_console_writes_need_the_sessions_own_csrf_token(tmp_path: Path) -> None:
    with served(_with_users(tmp_path), _console_probe) as server:
        cookies, tokens = [], []
        for name in ("adam", "adam", "rita"):  # the same user twice: two sessions
            _, response, _ = _login(server, name, f"{PASSWORD} {name}")
            cookie = {"Cookie": _session(response)}
            _, _, body = server.call("GET", "/console/probe", headers=cookie)
            cookies.append(cookie)
            tokens.append(json.loads(body)["csrf"])
        assert len(set(tokens)) == 3 and all(len(t) == 64 for t in tokens)
        adam, token = cookies[0], tokens[0]
        for wrong in (None, "", "0" * 64, tokens[1], tokens[2]):
            fields = {"note": "x"} if wrong is None else {"note": "x", "csrf": wrong}
            body, headers = _form(**fields)
            status, _, answer = server.call("POST", "/console/probe", body, {**adam, **headers})
            assert status == 403 and "CSRF" in json.loads(answer)["error"], wrong
            status, _, _ = server.call(
                "POST", "/console/probe", b"{}", {**adam, "X-CSRF-Token": wrong or ""}
            )
            assert status == 403, wrong
        body, headers = _form(note="held payment p1", csrf=token)
        status, _, answer = server.call("POST", "/console/probe", body, {**adam, **headers})
        assert status == 200 and json.loads(answer) == {"by": "adam", "note": "held payment p1"}
        status, _, _ = server.call("POST", "/console/probe", b"{}", {**adam, "X-CSRF-Token": token})
        assert status == 200
        payment = json.dumps(tx("p1")).encode()
        status, _, _ = server.call("POST", "/score", payment, {**adam, "X-CSRF-Token": token})
        assert status == 401 and not server.store.decisions  # outside /console/: the token


def test_removing_a_user_or_changing_their_role_or_password_ends_their_sessions(
    tmp_path: Path,
) -> None:
    settings = _with_users(tmp_path)
    users = UsersFile(settings.console_users_path)
    with served(settings, _console_probe) as server:

        def logged_in(name: str) -> dict[str, str]:
            _, response, _ = _login(server, name, f"{PASSWORD} {name}")
            return {"Cookie": _session(response)}

        def reads(session: dict[str, str]) -> bool:
            return server.call("GET", "/api/stats", headers=session)[0] == 200

        rita, vera, adam = logged_in("rita"), logged_in("vera"), logged_in("adam")
        assert reads(rita) and reads(vera) and reads(adam)
        with users.editing() as found:
            found["rita"] = found["rita"].with_role(ADMIN)  # promoted: log in again
            del found["vera"]
        assert not reads(rita) and not reads(vera) and reads(adam)
        _, _, body = server.call("GET", "/console/probe", headers=logged_in("rita"))
        assert json.loads(body)["role"] == ADMIN
        with users.editing() as found:  # vera back, with a new password
            found["vera"] = User.create("vera", VIEWER, f"{PASSWORD} vera")
        assert not reads(vera) and reads(logged_in("vera"))
        _, response, _ = _login(server, "vera", "wrong password")
        assert response.headers["Location"] == "/login?failed"
        settings.console_users_path.write_text("{not json")  # fail closed: nobody from it
        assert (
            not reads(adam)
            and _login(server, "adam", f"{PASSWORD} adam")[1].headers["Location"] == "/login?failed"
        )
        assert _login(server, "admin", TOKEN)[1].headers["Location"] == "/console/"  # bootstrap


def test_the_users_file_keeps_only_salted_scrypt_hashes_readable_by_its_owner(
    tmp_path: Path,
) -> None:
    settings = _with_users(tmp_path, {"alice": REVIEWER, "bob": REVIEWER})
    path = settings.console_users_path
    assert path == tmp_path / "console-users.json"
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert PASSWORD not in text and "alice" in text
    data = json.loads(text)
    assert set(data["alice"]) == {"role", "salt", "hash", "n", "r", "p"}
    assert data["alice"]["salt"] != data["bob"]["salt"]
    users = UsersFile(path).read()
    assert users["alice"].verify(f"{PASSWORD} alice") and not users["alice"].verify(PASSWORD)
    assert not users["bob"].verify(f"{PASSWORD} alice")
    assert [p.name for p in tmp_path.iterdir()] == ["console-users.json"]  # no draft left
    elsewhere = tmp_path / "etc" / "users.json"
    assert Settings(console_users_file=str(elsewhere)).console_users_path == elsewhere


def test_failed_logins_from_one_address_get_429_for_the_rest_of_the_window() -> None:
    with served() as server:
        clock = server.worker.guard.throttle.clock = _Clock()
        for user in ("admin", "root", "a", "b", "c"):  # different names, one address
            assert _login(server, user, "wrong")[1].headers["Location"] == "/login?failed"
        status, response, body = _login(server, "admin", TOKEN)  # right, but too late
        assert status == 429 and "Set-Cookie" not in response.headers
        assert response.headers["Retry-After"] == "300" and b"too many" in body
        assert response.headers["X-Frame-Options"] == "DENY"
        clock.now += 299
        assert _login(server, "admin", TOKEN)[1].headers["Retry-After"] == "1"
        clock.now += 1  # the window has passed
        status, response, _ = _login(server, "admin", TOKEN)
        assert status == 303 and response.headers["Location"] == "/console/"


def test_failed_logins_for_one_user_are_limited_across_addresses_and_others_unaffected() -> None:
    guard = Guard(Settings(api_token=TOKEN), clock=_Clock())
    clock = guard.throttle.clock
    assert isinstance(clock, _Clock)

    def login(address: str, user: str, password: str) -> Identity | None:
        request = SimpleNamespace(remote=address)
        return asyncio.run(guard.login(request, user, password))  # type: ignore[arg-type]

    for i in range(4):
        assert login(f"10.0.0.{i}", "admin", "guess") is None
    clock.now += 200
    assert login("10.0.0.9", "admin", "guess") is None  # the fifth within the window
    with pytest.raises(web.HTTPTooManyRequests) as refused:
        login("10.0.1.1", "admin", TOKEN)  # a new address, the right password: still 429
    assert refused.value.headers["Retry-After"] == "100"  # until the first failure is 300 s old
    clock.now += 100
    assert login("10.0.1.1", "admin", TOKEN) == Identity("admin", ADMIN, "session")

    for _ in range(4):  # a success forgives the user's own failures
        assert login("10.0.1.2", "admin", "guess") is None
    assert login("10.0.1.3", "admin", TOKEN) is not None
    assert login("10.0.1.4", "admin", "guess") is None
    assert login("10.0.1.5", "admin", TOKEN) is not None

    # ... and not the address's failures for others.
    for _ in range(4):
        assert login("10.0.2.1", "mallory", "guess") is None
    assert login("10.0.2.1", "admin", TOKEN) is not None
    assert login("10.0.2.1", "eve", "guess") is None  # the address's fifth failure
    with pytest.raises(web.HTTPTooManyRequests):
        login("10.0.2.1", "admin", TOKEN)
    assert login("10.0.3.1", "mallory", "guess") is None  # mallory's fifth
    with pytest.raises(web.HTTPTooManyRequests):
        login("10.0.4.1", "mallory", "guess")


def test_the_login_throttle_stays_bounded_under_random_user_names() -> None:
    clock = _Clock()
    throttle = LoginThrottle(max_keys=100, clock=clock)
    for i in range(5):
        throttle.failed("addr\0attacker", f"user\0{i}")
    for i in range(10_000):
        throttle.failed(f"user\0random-{i}")
        assert len(throttle) <= 100
        throttle.failed("addr\0attacker")  # still counted: the most recently failed
    assert throttle.wait_s("addr\0attacker") == 300
    assert throttle.wait_s("user\00") == 0  # long forgotten
    clock.now += 300
    assert throttle.wait_s("addr\0attacker") == 0 and len(throttle) == 100
    small = LoginThrottle(attempts=1, max_keys=3, clock=clock)
    for key in ("a", "b", "c", "a", "d"):
        small.failed(key)
    assert [k for k in "abcd" if small.wait_s(k)] == ["a", "c", "d"]  # b failed least lately
