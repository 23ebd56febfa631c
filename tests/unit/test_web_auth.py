"""Who may use the worker's web server (streams/auth.py): the real server, Faust's driver
and views with the guard in front, over HTTP."""

from __future__ import annotations

import json
import re
import urllib.parse
from http.cookies import SimpleCookie

from rebate_guard.settings import Settings
from streams.app import create_worker
from streams.auth import SESSION_COOKIE, SESSION_S, Guard
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


def test_a_person_logs_in_and_the_session_only_reads() -> None:
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
        assert status == 303 and response.headers["Location"] == "/"
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
        assert response.headers["Location"] == "/"
        status, _, _ = server.call("GET", "/api/rings", headers={"Cookie": _session(response)})
        assert status == 200


def test_sessions_expire_cannot_be_forged_and_end_when_the_secrets_change() -> None:
    guard = Guard(Settings(api_token=TOKEN))
    now = 1_000_000.0
    session = guard.new_session(now)
    assert guard.session_ok(session, now + SESSION_S - 1)
    assert not guard.session_ok(session, now + SESSION_S)
    expires, _, signature = session.partition(".")
    later = str(int(expires) + 3600)
    assert not guard.session_ok(f"{later}.{signature}", now)  # extended by hand
    assert not guard.session_ok(f"{expires}.{'0' * len(signature)}", now)
    assert not guard.session_ok("", now) and not guard.session_ok("garbage", now)
    assert not Guard(Settings(api_token="rotated")).session_ok(session, now)
    assert not Guard(Settings(api_token=TOKEN, console_password="new")).session_ok(session, now)


def test_without_a_token_configured_nothing_is_served_and_nobody_logs_in() -> None:
    with served(Settings()) as server:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"}):
            status, _, _ = server.call("GET", "/api/stats", headers=headers)
            assert status == 401
        status, response, _ = _login(server, "admin", "")
        assert response.headers["Location"] == "/login?failed"
        guard = Guard(Settings())
        assert not guard.session_ok(guard.new_session())


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
