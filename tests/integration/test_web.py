"""The unsubscribe pages over a real socket (uvicorn in a thread) on a real database."""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin

import pytest
import uvicorn
from click.testing import CliRunner
from sqlalchemy import Engine, text

from digest import logs, watchdog
from digest.channels.email.file import FileTransport
from digest.cli import cli
from digest.config import Settings
from digest.db import make_engine
from digest.errors import DigestError
from digest.scheduler import schedule_once
from digest.unsubscribe import MAX_AGE_DAYS, make_legacy_token, make_token, make_token_v1
from digest.web.app import SECRET_MISSING, create_app
from digest.worker import Worker

SECRET = "test-secret"
ONE_CLICK = "List-Unsubscribe=One-Click"
URLENCODED = {"Content-Type": "application/x-www-form-urlencoded"}
BOUNDARY = "digest-test-boundary-7MA4YWxkTrZu0gW"
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}

ADD_RECIPIENT = text(
    "INSERT INTO recipients (bucket, user_id, email, name) "
    "VALUES (digest_bucket(:user_id), :user_id, :email, :name)"
)
ADD_EVENTS = text(
    """
    INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id, actor_id, payload,
                               created_at)
    SELECT digest_bucket(:user_id), CAST(:user_id AS text), 'comment', 'post', 'p1', 'a' || g,
           jsonb_build_object('title', 'Trip photos', 'actor_name', 'Actor ' || g),
           now() - interval '1 hour'
      FROM generate_series(1, 3) g
    """
)


@dataclass(frozen=True)
class Reply:
    """An HTTP answer as the client saw it; `headers` without Date (it ticks)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: str

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)


@dataclass(frozen=True)
class Site:
    """A running server and a way to talk to it."""

    port: int

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            data = body.encode() if isinstance(body, str) else body
            conn.request(method, path, body=data, headers=headers or {})
            response = conn.getresponse()
            raw = response.read()
            kept = tuple((k.lower(), v) for k, v in response.getheaders() if k.lower() != "date")
            return Reply(response.status, kept, raw.decode("utf-8"))
        finally:
            conn.close()

    def one_click(self, token: str) -> Reply:
        return self.request("POST", f"/u/{token}", ONE_CLICK, URLENCODED)


StartSite = Callable[..., Site]


@pytest.fixture
def start_site() -> Iterator[StartSite]:
    """Starts the app on a free 127.0.0.1 port in a thread; stops every one at teardown."""
    running: list[tuple[uvicorn.Server, threading.Thread, socket.socket]] = []

    def start(engine: Engine, settings: Settings | None = None) -> Site:
        app = create_app(engine, settings or Settings(secret_key=SECRET))
        listener = socket.create_server(("127.0.0.1", 0))  # bound first: no port race
        config = uvicorn.Config(app, log_config=None, log_level="warning", ws="none")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]})
        thread.start()
        running.append((server, thread, listener))
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive(), "server thread died"
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        return Site(listener.getsockname()[1])

    yield start
    for server, thread, listener in running:
        server.should_exit = True
        thread.join(10)
        listener.close()


@pytest.fixture
def site(engine: Engine, start_site: StartSite) -> Site:
    return start_site(engine)


def add_user(engine: Engine, user_id: str, email: str | None = None, name: str = "") -> None:
    with engine.begin() as conn:
        conn.execute(
            ADD_RECIPIENT,
            {"user_id": user_id, "email": email or f"{user_id}@example.com", "name": name or None},
        )
        conn.execute(ADD_EVENTS, {"user_id": user_id})


def token_for(engine: Engine, user_id: str, issued: date | None = None) -> str:
    """The token of `user_id` as mail sent now (or on `issued`) carries it."""
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT bucket, id, subscription_version FROM recipients WHERE user_id = :u"),
            {"u": user_id},
        ).one()
    return make_token(SECRET, row.bucket, row.id, row.subscription_version, issued or today())


def today() -> date:
    return datetime.now(UTC).date()


def form_token(reply: Reply, token: str) -> str:
    """The token the page /u/`token`'s forms post to, as a browser resolves their action."""
    match = re.search(r'<form method="post" action="([^"]+)"', reply.body)
    target = urljoin(f"/u/{token}", match[1]) if match else f"/u/{token}"
    assert target.startswith("/u/"), target
    return target.removeprefix("/u/")


def schedule(engine: Engine) -> int:
    with engine.begin() as conn:
        return schedule_once(conn, datetime.now(UTC), 0)


def recipient(engine: Engine, user_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT * FROM recipients WHERE user_id = :u"), {"u": user_id}
        ).one()


def run_statuses(engine: Engine, user_id: str) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT status FROM digest_runs WHERE user_id = :u ORDER BY id"),
                {"u": user_id},
            ).scalars()
        )


def snapshot(engine: Engine) -> list[tuple[Any, ...]]:
    """Everything a request could change."""
    with engine.connect() as conn:
        people = conn.execute(text("SELECT * FROM recipients ORDER BY user_id")).all()
        runs = conn.execute(text("SELECT * FROM digest_runs ORDER BY id")).all()
        blocked = conn.execute(text("SELECT * FROM suppressions ORDER BY email")).all()
    return [tuple(row) for row in (*people, *runs, *blocked)]


def multipart(fields: list[tuple[str, str]], filename: str | None = None) -> bytes:
    parts = []
    for name, value in fields:
        disposition = f'form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        parts.append(f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n{value}\r\n")
    return ("".join(parts) + f"--{BOUNDARY}--\r\n").encode()


def worker(engine: Engine, outbox: Path) -> Worker:
    settings = Settings(secret_key=SECRET, outbox=outbox)
    return Worker(engine, settings, FileTransport(outbox))


# ---------------------------------------------------------------------------- one click


@pytest.mark.parametrize(
    ("body", "headers"),
    [(ONE_CLICK, URLENCODED), (multipart([("List-Unsubscribe", "One-Click")]), MULTIPART)],
    ids=["urlencoded", "multipart"],
)
def test_one_click_post_unsubscribes_at_once_with_200_and_no_redirect(
    engine: Engine, site: Site, body: bytes | str, headers: dict[str, str]
) -> None:
    """RFC 8058: the POST unsubscribes, answers 200 (no redirect) and cancels pending runs."""
    add_user(engine, "ana")
    add_user(engine, "ben")
    assert schedule(engine) == 2
    reply = site.request("POST", f"/u/{token_for(engine, 'ana')}", body, headers)
    assert reply.status == 200
    assert reply.header("location") is None
    assert "You are unsubscribed" in reply.body
    assert recipient(engine, "ana").unsubscribed_at is not None
    assert run_statuses(engine, "ana") == ["cancelled"]
    assert recipient(engine, "ben").unsubscribed_at is None
    assert run_statuses(engine, "ben") == ["pending"]


def test_one_click_is_idempotent(engine: Engine, site: Site) -> None:
    """A second one-click POST is another 200, keeping the first time; the page then says so."""
    add_user(engine, "ana")
    token = token_for(engine, "ana")
    assert site.one_click(token).status == 200
    first = recipient(engine, "ana").unsubscribed_at
    again = site.one_click(token)
    assert again.status == 200
    assert "You are unsubscribed" in again.body
    assert recipient(engine, "ana").unsubscribed_at == first
    page = site.request("GET", f"/u/{token}")
    assert "You are unsubscribed" in page.body
    assert "List-Unsubscribe" not in page.body  # no button for what is done; re-subscribe is
    assert 'name="cadence" value="daily"' in page.body


def test_get_shows_the_page_and_changes_nothing(engine: Engine, site: Site) -> None:
    """A GET (what link scanners do) shows buttons but never unsubscribes or cancels a run."""
    add_user(engine, "ana", name="Ana")
    schedule(engine)
    before = snapshot(engine)
    token = token_for(engine, "ana")
    reply = site.request("GET", f"/u/{token}")
    assert reply.status == 200
    assert reply.header("content-type") == "text/html; charset=utf-8"
    assert "Ana" in reply.body
    assert "ana@example.com" in reply.body
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in reply.body
    for cadence in ("daily", "weekly", "off"):
        assert f'name="cadence" value="{cadence}"' in reply.body
    assert 'name="viewport"' in reply.body
    assert token not in reply.body  # the forms post back to the page's own URL
    assert reply.header("cache-control") == "no-store"
    assert reply.header("referrer-policy") == "no-referrer"
    assert snapshot(engine) == before
    assert run_statuses(engine, "ana") == ["pending"]


def test_page_escapes_the_name_and_address(engine: Engine, site: Site) -> None:
    """User data on the page is HTML-escaped: a name with <script> stays text."""
    add_user(engine, "eve", email="tom&jerry@example.com", name='<script>alert("x")</script>')
    reply = site.request("GET", f"/u/{token_for(engine, 'eve')}")
    assert reply.status == 200
    assert "<script>" not in reply.body
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in reply.body
    assert "tom&amp;jerry@example.com" in reply.body
    assert "script-src" not in (reply.header("content-security-policy") or "")  # none allowed


# ---------------------------------------------------------------------------- bad tokens


def test_bad_tokens_get_one_identical_404_and_change_nothing(engine: Engine, site: Site) -> None:
    """Forged, cut-off, garbage and unknown-user tokens: the same 404 for GET and POST."""
    add_user(engine, "ana")
    schedule(engine)
    before = snapshot(engine)
    good = token_for(engine, "ana")
    paths = {
        "forged": f"/u/{make_token('some-other-secret', 0, 1, 0, today())}",
        "forged legacy": f"/u/{make_legacy_token('some-other-secret', 'ana')}",
        "truncated": f"/u/{good[:-4]}",
        "garbage": "/u/garbage!!",
        "unknown recipient": f"/u/{make_token(SECRET, 0, 999_999, 0, today())}",
        "unknown format 1 recipient": f"/u/{make_token_v1(SECRET, 999_999, 0, today())}",
        "unknown legacy user": f"/u/{make_legacy_token(SECRET, 'nobody')}",
        "empty": "/u/",
        "extra segment": f"/u/{good}/more",
    }
    replies = {}
    for label, path in paths.items():
        replies[f"GET {label}"] = site.request("GET", path)
        replies[f"POST {label}"] = site.request("POST", path, ONE_CLICK, URLENCODED)
        replies[f"POST cadence {label}"] = site.request("POST", path, "cadence=off", URLENCODED)
    reference = replies["GET forged"]
    assert reference.status == 404
    assert "This link does not work" in reference.body
    for label, reply in replies.items():
        assert reply == reference, label
    assert snapshot(engine) == before
    assert site.request("GET", f"/u/{good}").status == 200  # the real one still works


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ("", URLENCODED),
        ("List-Unsubscribe=Yes", URLENCODED),
        ("cadence=hourly", URLENCODED),
        ("cadence=daily&cadence=weekly", URLENCODED),
        ("List-Unsubscribe=One-Click&cadence=daily", URLENCODED),
        ("unsubscribe=1", URLENCODED),
        ('{"List-Unsubscribe": "One-Click"}', {"Content-Type": "application/json"}),
        (multipart([("List-Unsubscribe", "One-Click")], filename="x.txt"), MULTIPART),
        (b"--broken", MULTIPART),
        (b"List-Unsubscribe=One-Click\xff", URLENCODED),
        (b"cadence=\xff\xfe", URLENCODED),
        (multipart([("cadence", "daily")]).replace(b"daily", b"d\xffaily"), MULTIPART),
        ("form=categories&shown=Bad!&include=Bad!", URLENCODED),
        ("form=categories&shown=like&include=comment", URLENCODED),
        ("form=categories&shown=like&cadence=daily", URLENCODED),
        ("form=categories&form=quiet_hours&shown=like", URLENCODED),
        (
            "form=quiet_hours&quiet_start=22:00&quiet_end=07:00&List-Unsubscribe=One-Click",
            URLENCODED,
        ),
        ("form=quiet_hours&quiet_start=22:00&quiet_start=23:00&quiet_end=07:00", URLENCODED),
        ("form=colours", URLENCODED),
    ],
)
def test_other_bodies_are_400_and_change_nothing(
    engine: Engine, site: Site, body: bytes | str, headers: dict[str, str]
) -> None:
    """Only List-Unsubscribe=One-Click, cadence=daily|weekly|off, and the categories and
    quiet-hours forms as the page sends them are acted on."""
    add_user(engine, "ana")
    schedule(engine)
    before = snapshot(engine)
    reply = site.request("POST", f"/u/{token_for(engine, 'ana')}", body, headers)
    assert reply.status == 400
    assert "Nothing was changed" in reply.body
    assert snapshot(engine) == before


def test_oversized_body_is_refused(engine: Engine, site: Site) -> None:
    """A body far beyond any form's size is a 413, not read into memory."""
    add_user(engine, "ana")
    body = ONE_CLICK + "&pad=" + "x" * 100_000
    reply = site.request("POST", f"/u/{token_for(engine, 'ana')}", body, URLENCODED)
    assert reply.status == 413
    assert recipient(engine, "ana").unsubscribed_at is None


# ---------------------------------------------------------------------------- cadence


def test_cadence_off_weekly_daily_and_resubscribe(engine: Engine, site: Site) -> None:
    """The cadence buttons set the cadence; daily or weekly after an unsubscribe re-subscribes."""
    add_user(engine, "ana")
    schedule(engine)
    token = token_for(engine, "ana")

    def choose(cadence: str) -> Reply:
        return site.request("POST", f"/u/{token}", f"cadence={cadence}", URLENCODED)

    off = choose("off")
    assert off.status == 200
    assert "digests are off" in off.body
    assert (recipient(engine, "ana").cadence, run_statuses(engine, "ana")) == ("off", ["cancelled"])
    assert schedule(engine) == 0

    weekly = site.request("POST", f"/u/{token}", multipart([("cadence", "weekly")]), MULTIPART)
    assert weekly.status == 200
    assert "weekly digest" in weekly.body
    assert recipient(engine, "ana").cadence == "weekly"
    token = form_token(weekly, token)  # digests again: the page's forms get a fresh link

    assert site.one_click(token).status == 200
    assert recipient(engine, "ana").unsubscribed_at is not None
    assert choose("off").status == 200  # off keeps the unsubscribe
    assert recipient(engine, "ana").unsubscribed_at is not None

    daily = choose("daily")
    assert daily.status == 200
    assert "daily digest" in daily.body
    row = recipient(engine, "ana")
    assert (row.cadence, row.unsubscribed_at) == ("daily", None)
    assert schedule(engine) == 1  # subscribed again: the next schedule creates a run
    assert site.one_click(form_token(daily, token)).status == 200  # the page's button works
    assert recipient(engine, "ana").unsubscribed_at is not None


def test_changes_are_logged_without_the_token(
    engine: Engine, site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """One log line per change with user id and action; the token is never logged."""
    add_user(engine, "ana")
    token = token_for(engine, "ana")
    with caplog.at_level(logging.INFO, logger="digest.web.preferences"):
        site.one_click(token)
        weekly = site.request("POST", f"/u/{token}", "cadence=weekly", URLENCODED)
        fresh = form_token(weekly, token)  # subscribed again: the page's forms get a new link
        post_form(site, fresh, categories_form(["like"], []))
        post_form(site, fresh, categories_form(["like"], []))
        post_form(
            site, fresh, [("form", "quiet_hours"), ("quiet_start", "1:00"), ("quiet_end", "6:00")]
        )
    changes = [
        (r.__dict__.get("event"), logs.fields(r))
        for r in caplog.records
        if r.name == "digest.web.preferences"
    ]
    assert changes == [
        ("preferences_changed", {"user_id": "ana", "action": "unsubscribe", "changed": True}),
        ("preferences_changed", {"user_id": "ana", "action": "weekly", "changed": True}),
        ("preferences_changed", {"user_id": "ana", "action": "categories", "changed": True}),
        ("preferences_changed", {"user_id": "ana", "action": "categories", "changed": False}),
        ("preferences_changed", {"user_id": "ana", "action": "quiet_hours", "changed": True}),
    ]
    for record in caplog.records:
        for line in (logs.TextFormatter().format(record), logs.JsonFormatter().format(record)):
            assert token not in line
            assert fresh not in line


def test_cadence_button_gives_a_deferred_runs_events_to_the_next_run(
    engine: Engine, db_url: str, site: Site, tmp_path: Path
) -> None:
    """Weekly on the page while a run awaits a retry: its events wait, the weekly run sends them."""
    add_user(engine, "ana")
    schedule(engine)
    with engine.begin() as conn:  # the first attempt froze 3 events; the relay said 451
        conn.execute(
            text(
                "UPDATE digest_runs SET attempt = 1, frozen_at = now() - interval '1 minute', "
                "event_count = 3, scheduled_for = now() + interval '30 seconds', "
                "last_error = 'transient: 451 4.7.1 try again later'"
            )
        )
        conn.execute(text("UPDATE digest_events SET digest_run_id = (SELECT id FROM digest_runs)"))
    reply = site.request("POST", f"/u/{token_for(engine, 'ana')}", "cadence=weekly", URLENCODED)
    assert reply.status == 200
    assert run_statuses(engine, "ana") == ["cancelled"]
    why = CliRunner().invoke(cli, ["why", "--user", "ana"], env={"DIGEST_DATABASE_URL": db_url})
    assert "3 events are waiting for the next digest" in why.output, why.output
    assert schedule(engine) == 1
    stats = worker(engine, tmp_path / "outbox").run(drain=True)
    assert (stats.sent, stats.events) == (1, 3)
    with engine.connect() as conn:
        weekly = conn.execute(
            text("SELECT cadence, event_count FROM digest_runs WHERE status = 'sent'")
        ).one()
    assert tuple(weekly) == ("weekly", 3)


# ---------------------------------------------------------------------------- link lifetime


def stale_reference(site: Site, engine: Engine) -> Reply:
    """The out-of-date page, as a token of a version that never existed gets it."""
    with engine.connect() as conn:
        row = conn.execute(text("SELECT bucket, id FROM recipients LIMIT 1")).one()
    return site.request("GET", f"/u/{make_token(SECRET, row.bucket, row.id, 2**31 - 1, today())}")


def test_a_replayed_link_after_resubscribing_changes_nothing(engine: Engine, site: Site) -> None:
    """An old link replayed after re-subscribing gets 410 and changes nothing; newer links work."""
    add_user(engine, "ana")
    old = token_for(engine, "ana")
    assert site.one_click(old).status == 200
    back = site.request("POST", f"/u/{old}", "cadence=daily", URLENCODED)
    assert back.status == 200
    assert recipient(engine, "ana").unsubscribed_at is None
    assert recipient(engine, "ana").subscription_version == 1
    schedule(engine)
    before = snapshot(engine)
    replies = [
        site.one_click(old),
        site.request("POST", f"/u/{old}", "cadence=off", URLENCODED),
        post_form(site, old, categories_form(["like"], [])),
        post_form(site, old, [("form", "quiet_hours"), ("quiet_start", "1:00"), ("quiet_end", "")]),
        site.request("GET", f"/u/{old}"),
    ]
    reference = stale_reference(site, engine)
    assert reference.status == 410
    assert "This link is out of date" in reference.body
    assert "ana@example.com" not in reference.body
    assert all(reply == reference for reply in replies)
    assert snapshot(engine) == before
    fresh = form_token(back, old)
    assert fresh != old
    assert site.request("GET", f"/u/{token_for(engine, 'ana')}").status == 200  # newer mail
    assert site.one_click(fresh).status == 200
    assert recipient(engine, "ana").unsubscribed_at is not None


def test_resubscribing_elsewhere_retires_older_links(
    engine: Engine, site: Site, digest_cli: Callable[..., Any]
) -> None:
    """Only getting digests again (off -> daily via the CLI) retires the links issued before."""
    add_user(engine, "ana")
    old = token_for(engine, "ana")
    assert site.request("POST", f"/u/{old}", "cadence=weekly", URLENCODED).status == 200
    assert site.one_click(old).status == 200  # weekly did not retire the link
    assert site.request("POST", f"/u/{old}", "cadence=daily", URLENCODED).status == 200
    old = token_for(engine, "ana")  # the re-subscribe above retired the first one
    assert digest_cli("recipients", "set", "ana", "--cadence", "off").exit_code == 0
    assert site.request("GET", f"/u/{old}").status == 200  # going quiet retires nothing
    assert digest_cli("recipients", "set", "ana", "--cadence", "daily").exit_code == 0
    before = snapshot(engine)
    assert site.one_click(old).status == 410
    assert snapshot(engine) == before
    assert site.one_click(token_for(engine, "ana")).status == 200


def test_an_expired_link_changes_nothing(engine: Engine, site: Site) -> None:
    """A link older than MAX_AGE_DAYS gets the out-of-date page and unsubscribes no one."""
    add_user(engine, "ana")
    schedule(engine)
    before = snapshot(engine)
    expired = token_for(engine, "ana", today() - timedelta(days=MAX_AGE_DAYS + 1))
    reference = stale_reference(site, engine)
    assert site.one_click(expired) == reference
    assert site.request("GET", f"/u/{expired}") == reference
    assert snapshot(engine) == before
    last_day = token_for(engine, "ana", today() - timedelta(days=MAX_AGE_DAYS))
    assert site.request("GET", f"/u/{last_day}").status == 200


def test_links_without_a_bucket_in_mail_already_sent_still_work(engine: Engine, site: Site) -> None:
    """Format 1 links (mail sent before the bucket) find their recipient shard by shard:
    the page shows, the one-click unsubscribes and cancels the pending run."""
    add_user(engine, "ana")
    add_user(engine, "ben")
    schedule(engine)
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT id, subscription_version FROM recipients WHERE user_id = 'ana'")
        ).one()
    old = make_token_v1(SECRET, row.id, row.subscription_version, today())
    assert site.request("GET", f"/u/{old}").status == 200
    assert site.one_click(old).status == 200
    assert recipient(engine, "ana").unsubscribed_at is not None
    assert recipient(engine, "ben").unsubscribed_at is None
    assert run_statuses(engine, "ana") == ["cancelled"]


def test_legacy_links_in_mail_already_sent_still_work(engine: Engine, site: Site) -> None:
    """`base64(user_id).mac` links from before the upgrade act as version 0 links."""
    add_user(engine, "ana")
    legacy = make_legacy_token(SECRET, "ana")
    assert site.request("GET", f"/u/{legacy}").status == 200
    assert site.one_click(legacy).status == 200
    assert recipient(engine, "ana").unsubscribed_at is not None
    assert site.request("POST", f"/u/{legacy}", "cadence=weekly", URLENCODED).status == 200
    assert recipient(engine, "ana").unsubscribed_at is None
    assert site.one_click(legacy).status == 410  # re-subscribed: version 1 now


@pytest.mark.parametrize(
    "user_id", ["a" * 1000, ("日本語の利用者" * 143)[:1000]], ids=["ascii", "cjk"]
)
def test_long_user_ids_get_a_working_foldable_one_click_link(
    engine: Engine, site: Site, tmp_path: Path, user_id: str
) -> None:
    """1,000-character ids: header lines within RFC 5322's 998; the one-click POST unsubscribes."""
    add_user(engine, user_id, email="long@example.com")
    schedule(engine)
    outbox = tmp_path / "outbox"
    settings = Settings(secret_key=SECRET, outbox=outbox, unsubscribe_mailto="u@example.com")
    assert Worker(engine, settings, FileTransport(outbox)).run(drain=True).sent == 1
    [mail] = outbox.glob("*.eml")
    head = mail.read_bytes().split(b"\r\n\r\n")[0].decode("ascii")
    lines = head.split("\r\n")
    assert max(len(line) for line in lines) <= 998
    start = next(i for i, line in enumerate(lines) if line.startswith("List-Unsubscribe:"))
    folded = [lines[start], *(line for line in lines[start + 1 :] if line[:1] == " ")]
    header = "".join(folded)
    assert max(len(line) for line in folded) <= 100
    url = re.search(r"<http://localhost:8000(/u/[^>]+)>", header)
    assert url is not None, header
    assert site.one_click(url[1][3:]).status == 200
    assert recipient(engine, user_id).unsubscribed_at is not None


# ---------------------------------------------------------------------------- no more mail


def test_no_email_after_one_click(engine: Engine, site: Site, tmp_path: Path) -> None:
    """After the one-click POST, schedule + work sends that user nothing; others still get mail."""
    add_user(engine, "ana")
    add_user(engine, "ben")
    schedule(engine)
    assert site.one_click(token_for(engine, "ana")).status == 200
    schedule(engine)  # creates nothing for ana: she is unsubscribed
    outbox = tmp_path / "outbox"
    stats = worker(engine, outbox).run(drain=True)
    assert (stats.sent, stats.skipped, stats.failed) == (1, 0, 0)
    assert run_statuses(engine, "ana") == ["cancelled"]
    sent = [p.read_bytes() for p in outbox.glob("*.eml")]
    assert len(sent) == 1
    assert b"ben@example.com" in sent[0]
    assert b"ana@example.com" not in sent[0]


def test_run_already_processing_is_skipped_as_unsubscribed(
    engine: Engine, site: Site, tmp_path: Path
) -> None:
    """A run a worker held during the unsubscribe is not cancelled, but ends skipped, unsent."""
    add_user(engine, "ana")
    schedule(engine)
    with engine.begin() as conn:  # a worker claimed it, then vanished
        conn.execute(
            text(
                "UPDATE digest_runs SET status = 'processing', attempt = 1, locked_by = 'gone', "
                "lease_expires_at = now() - interval '1 minute'"
            )
        )
    assert site.one_click(token_for(engine, "ana")).status == 200
    assert run_statuses(engine, "ana") == ["processing"]  # the trigger leaves it alone
    with engine.connect() as conn:
        assert watchdog.reset_expired_once(conn, 5) == (1, 0)
    outbox = tmp_path / "outbox"
    stats = worker(engine, outbox).run(drain=True)
    assert (stats.sent, stats.skipped) == (0, 1)
    with engine.connect() as conn:
        run = conn.execute(text("SELECT status, last_error FROM digest_runs")).one()
    assert tuple(run) == ("skipped", "unsubscribed")
    assert list(outbox.glob("*.eml")) == []


# ---------------------------------------------------------------------------- health, setup


def test_healthz_says_ok_when_the_database_answers(site: Site) -> None:
    """GET /healthz is 200 `ok` while SELECT 1 works."""
    reply = site.request("GET", "/healthz")
    assert (reply.status, reply.body) == (200, "ok")


def test_healthz_is_503_without_a_database(start_site: StartSite) -> None:
    """GET /healthz is 503 when the database cannot be reached."""
    dead = make_engine("postgresql://nobody@127.0.0.1:1/none")
    try:
        reply = start_site(dead).request("GET", "/healthz")
    finally:
        dead.dispose()
    assert reply.status == 503


def test_app_needs_the_secret_key(engine: Engine) -> None:
    """Without DIGEST_SECRET_KEY the app refuses to start rather than serve unverifiable links."""
    with pytest.raises(DigestError, match=SECRET_MISSING):
        create_app(engine, Settings())


def test_serve_errors_are_one_line(db_url: str) -> None:
    """`digest serve` without a secret, or on a busy port: one clear line, exit 1."""
    runner = CliRunner()
    env = {"DIGEST_DATABASE_URL": db_url, "DIGEST_SECRET_KEY": ""}
    missing = runner.invoke(cli, ["serve"], env=env)
    assert missing.exit_code == 1
    assert missing.stderr.strip() == f"digest: error: {SECRET_MISSING}"
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        env["DIGEST_SECRET_KEY"] = SECRET
        taken = runner.invoke(cli, ["serve", "--port", str(port)], env=env)
    assert taken.exit_code == 1
    lines = taken.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"digest: error: cannot listen on 127.0.0.1:{port}:")


def test_serve_command_serves_and_stops_on_sigterm(engine: Engine, db_url: str) -> None:
    """The real `digest serve` process answers, logs no token, and exits 0 on SIGTERM."""
    add_user(engine, "ana")
    token = token_for(engine, "ana")
    env = {**os.environ, "DIGEST_DATABASE_URL": db_url, "DIGEST_SECRET_KEY": SECRET}
    proc = subprocess.Popen(
        [sys.executable, "-m", "digest", "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("serving unsubscribe pages on http://127.0.0.1:"), first
        port = int(first.split("http://127.0.0.1:")[1].split()[0])
        site = Site(port)
        deadline = time.monotonic() + 10
        while True:  # the socket listens before uvicorn's loop runs: connections queue
            try:
                health = site.request("GET", "/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert (health.status, health.body) == (200, "ok")
        assert site.one_click(token).status == 200
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert token not in stderr
    assert "preferences_changed user_id=ana action=unsubscribe" in stderr
    assert recipient(engine, "ana").unsubscribed_at is not None


def test_ses_webhook_is_served_and_refuses_unsigned_posts(engine: Engine, site: Site) -> None:
    """`digest serve` mounts /webhooks/ses; an unsigned notification gets 403 and no effect."""
    before = snapshot(engine)
    body = json.dumps({"Type": "Notification", "MessageId": "m1", "Message": "{}"})
    reply = site.request("POST", "/webhooks/ses", body, {"Content-Type": "text/plain"})
    assert reply.status == 403
    assert snapshot(engine) == before


# ---------------------------------------------------------------------------- preference centre


class PageParts(HTMLParser):
    """What a reader meets on a page: its forms' fields and buttons, its visible text, and
    the fields no label names."""

    def __init__(self, body: str) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[list[dict[str, str | None]]] = []
        self.buttons: list[tuple[dict[str, str | None], str]] = []
        self.unlabelled: list[dict[str, str | None]] = []
        self.text: list[str] = []
        self._form: list[dict[str, str | None]] | None = None
        self._labels = 0
        self._button: tuple[dict[str, str | None], list[str]] | None = None
        self._hidden_text = 0
        self.feed(body)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        field: dict[str, str | None] = {"tag": tag, **dict(attrs)}
        if tag == "form":
            self._form = []
            self.forms.append(self._form)
        elif tag == "label":
            self._labels += 1
        elif tag in ("style", "title"):
            self._hidden_text += 1
        elif tag in ("input", "button", "select", "textarea"):
            if self._form is not None:
                self._form.append(field)
            if tag == "button":
                self._button = (field, [])
            elif field.get("type") not in ("hidden", "submit") and not self._labels:
                self.unlabelled.append(field)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "label":
            self._labels -= 1
        elif tag in ("style", "title"):
            self._hidden_text -= 1
        elif tag == "button" and self._button is not None:
            self.buttons.append((self._button[0], " ".join("".join(self._button[1]).split())))
            self._button = None

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button[1].append(data)
        if not self._hidden_text:
            self.text.append(data)

    @property
    def visible(self) -> str:
        return " ".join(" ".join(self.text).split())

    def form_with(self, name: str) -> list[dict[str, str | None]]:
        """The one form that has a field called `name`."""
        [form] = [f for f in self.forms if any(field.get("name") == name for field in f)]
        return form


def post_form(site: Site, token: str, fields: list[tuple[str, str]]) -> Reply:
    return site.request("POST", f"/u/{token}", urlencode(fields), URLENCODED)


def categories_form(shown: list[str], include: list[str]) -> list[tuple[str, str]]:
    return [
        ("form", "categories"),
        *(("shown", name) for name in shown),
        *(("include", name) for name in include),
    ]


KNOWN = ["comment", "like", "mention", "follow"]


def test_the_page_offers_one_choice_per_concern(engine: Engine, site: Site) -> None:
    """One form each: how often (daily/weekly/off, Save), which categories, quiet hours, and one
    Unsubscribe-from-all button; every field has a label."""
    add_user(engine, "ana", name="Ana")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id) "
                "VALUES (digest_bucket('ana'), 'ana', 'post.shared', 'post', 'p9')"
            )
        )
    page = PageParts(site.request("GET", f"/u/{token_for(engine, 'ana')}").body)
    assert len(page.forms) == 4
    unsubscribe = page.form_with("List-Unsubscribe")
    assert [f["tag"] for f in unsubscribe] == ["input", "button"]
    cadence = page.form_with("cadence")
    radios = [(f["value"], "checked" in f) for f in cadence if f.get("type") == "radio"]
    assert radios == [("daily", True), ("weekly", False), ("off", False)]
    categories = page.form_with("include")
    boxes = [(f["value"], "checked" in f) for f in categories if f.get("type") == "checkbox"]
    assert boxes == [(name, True) for name in [*KNOWN, "post.shared"]]
    quiet = page.form_with("quiet_start")
    assert [(f["name"], f["value"]) for f in quiet if f.get("type") == "time"] == [
        ("quiet_start", ""),
        ("quiet_end", ""),
    ]
    labels = [text for _, text in page.buttons]
    assert labels == ["Save", "Save categories", "Save quiet hours", "Unsubscribe from all"]
    assert page.unlabelled == []


def test_unsubscribing_confirms_once(engine: Engine, site: Site) -> None:
    """After the one-click POST the page says it once, and offers only the way back."""
    add_user(engine, "ana")
    token = token_for(engine, "ana")
    for reply in (site.one_click(token), site.request("GET", f"/u/{token}")):
        page = PageParts(reply.body)
        assert page.visible.lower().count("unsubscribed") == 1, page.visible
        assert len(page.forms) == 1
        form = page.form_with("cadence")
        radios = [f["value"] for f in form if f.get("type") == "radio"]
        assert radios == ["daily", "weekly"]
        assert [text for _, text in page.buttons] == ["Subscribe again"]


def test_a_saved_choice_is_confirmed_once(engine: Engine, site: Site) -> None:
    """A cadence saved on the page: one notice, and the radio shows the new choice."""
    add_user(engine, "ana")
    reply = post_form(site, token_for(engine, "ana"), [("cadence", "weekly")])
    assert reply.body.count('role="status"') == 1
    page = PageParts(reply.body)
    checked = [f["value"] for f in page.form_with("cadence") if "checked" in f]
    assert checked == ["weekly"]


def test_the_categories_form_mutes_and_unmutes(engine: Engine, site: Site) -> None:
    """Unticked categories are muted, ticked ones unmuted; a category the form did not show
    keeps its setting; no run is cancelled."""
    add_user(engine, "ana")
    schedule(engine)
    token = token_for(engine, "ana")
    reply = post_form(site, token, categories_form(KNOWN, ["comment", "mention", "follow"]))
    assert reply.status == 200
    assert "Saved: your digests leave out likes." in PageParts(reply.body).visible
    assert recipient(engine, "ana").muted_categories == ["like"]
    boxes = [
        (f["value"], "checked" in f)
        for f in PageParts(reply.body).form_with("include")
        if f.get("type") == "checkbox"
    ]
    assert ("like", False) in boxes
    with engine.begin() as conn:
        conn.execute(text("UPDATE recipients SET muted_categories = '{digest.old,like}'"))
    reply = post_form(site, token, categories_form(KNOWN, KNOWN))
    assert "Saved: your digests leave out digest old." in PageParts(reply.body).visible
    assert recipient(engine, "ana").muted_categories == ["digest.old"]
    assert run_statuses(engine, "ana") == ["pending"]


def test_the_quiet_hours_form_sets_and_clears_them(engine: Engine, site: Site) -> None:
    """Start and end are saved in the recipient's zone; both empty clears them; one of
    them alone, or a time that is not one, shows the page with an error and changes nothing."""
    add_user(engine, "ana")
    with engine.begin() as conn:
        conn.execute(text("UPDATE recipients SET timezone = 'Europe/Berlin'"))
    token = token_for(engine, "ana")
    reply = post_form(
        site, token, [("form", "quiet_hours"), ("quiet_start", "22:00"), ("quiet_end", "7:00")]
    )
    assert reply.status == 200
    page = PageParts(reply.body)
    assert "Saved: quiet hours from 22:00 to 07:00 (Europe/Berlin time)." in page.visible
    times = [f["value"] for f in page.form_with("quiet_start") if f.get("type") == "time"]
    assert times == ["22:00", "07:00"]
    row = recipient(engine, "ana")
    assert (str(row.quiet_start), str(row.quiet_end)) == ("22:00:00", "07:00:00")
    before = snapshot(engine)
    for start, end in (("22:00", ""), ("25:00", "07:00"), ("07:00", "07:00"), ("soon", "later")):
        fields = [("form", "quiet_hours"), ("quiet_start", start), ("quiet_end", end)]
        bad = post_form(site, token, fields)
        assert bad.status == 400, (start, end)
        assert bad.body.count('role="alert"') == 1
        assert 'name="quiet_start"' in bad.body  # the page itself, to correct the entry
        assert snapshot(engine) == before
    cleared = post_form(
        site, token, [("form", "quiet_hours"), ("quiet_start", ""), ("quiet_end", "")]
    )
    assert "Saved: no quiet hours." in PageParts(cleared.body).visible
    assert recipient(engine, "ana").quiet_start is None


def test_quiet_hours_and_categories_cancel_no_run_but_cadence_does(
    engine: Engine, site: Site
) -> None:
    """Quiet hours and categories saved on the page leave the pending run alone (they move
    no run); a changed cadence then cancels it, in the page's own transaction."""
    add_user(engine, "ana")
    schedule(engine)
    token = token_for(engine, "ana")
    quiet = [("form", "quiet_hours"), ("quiet_start", "22:00"), ("quiet_end", "07:00")]
    assert post_form(site, token, quiet).status == 200
    assert post_form(site, token, categories_form(KNOWN, ["comment"])).status == 200
    assert run_statuses(engine, "ana") == ["pending"]
    assert post_form(site, token, [("cadence", "weekly")]).status == 200
    assert run_statuses(engine, "ana") == ["cancelled"]


BRANDED = {
    "product_name": "Acme Social",
    "logo_url": "https://cdn.acme.test/logo.png",
    "accent_color": "#aa3300",
    "postal_address": "1 Main St, Springfield",
}


def test_pages_carry_the_products_branding(engine: Engine, start_site: StartSite) -> None:
    """Name, logo, accent colour and postal address from the settings; the CSP lets in the
    logo's origin and nothing else."""
    add_user(engine, "ana")
    site = start_site(engine, Settings(secret_key=SECRET).with_(**BRANDED))
    reply = site.request("GET", f"/u/{token_for(engine, 'ana')}")
    page = PageParts(reply.body)
    assert "Acme Social" in page.visible
    assert "1 Main St, Springfield" in page.visible
    assert not re.search(r"\bDigest\b", page.visible)
    assert '<img src="https://cdn.acme.test/logo.png" alt="Acme Social"' in reply.body
    assert "#aa3300" in reply.body
    csp = reply.header("content-security-policy") or ""
    assert "img-src https://cdn.acme.test;" in csp
    assert "script-src" not in csp
    missing = site.request("GET", "/u/garbage")
    assert "Acme Social" in missing.body
    plain = start_site(engine).request("GET", f"/u/{token_for(engine, 'ana')}")
    assert "img-src" not in (plain.header("content-security-policy") or "")
    assert "Digest" in PageParts(plain.body).visible


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("accent_color", "red;}body{display:none"),
        ("accent_color", "#12345"),
        ("logo_url", "http://cdn.acme.test/logo.png"),
        ("logo_url", "https://cdn.acme.test/logo.png'; script-src *"),
    ],
)
def test_unsafe_branding_is_refused_at_start(engine: Engine, setting: str, value: str) -> None:
    """A colour or logo URL that could break out of CSS or the CSP stops the app at start."""
    with pytest.raises(DigestError, match=f"DIGEST_{setting.upper()}"):
        create_app(engine, Settings(secret_key=SECRET).with_(**{setting: value}))


def test_with_an_allow_list_the_page_offers_only_allowed_categories(
    engine: Engine, start_site: StartSite
) -> None:
    """With DIGEST_CATEGORIES set, the boxes are the allowed categories (known ones first),
    not the four every product is assumed to have."""
    add_user(engine, "ana")
    allowed = Settings(secret_key=SECRET).with_(categories=frozenset({"badge", "like", "comment"}))
    reply = start_site(engine, allowed).request("GET", f"/u/{token_for(engine, 'ana')}")
    form = PageParts(reply.body).form_with("include")
    assert [f["value"] for f in form if f.get("type") == "checkbox"] == ["comment", "like", "badge"]
