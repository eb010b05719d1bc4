"""The web side, as a Starlette app (`app.create_app`): the unsubscribe link's page, a small
preference centre (RFC 8058 one-click, `preferences`, `pages`), the SES feedback webhook and
a health check.

Routes:
- `GET /u/{token}`: the preferences page, branded from the settings (product name, logo,
  accent colour, postal address), naming the address, with one form per concern: how often
  (daily / weekly / off, and Save), which categories the digests include (the known ones and
  those the recipient got in the last 90 days), quiet hours, and one Unsubscribe-from-all
  button. An unsubscribed recipient gets only the way back (daily or weekly, Subscribe
  again). A GET never changes anything: link scanners follow GETs.
- `POST /u/{token}`: the body `List-Unsubscribe=One-Click` unsubscribes at once (what mail
  clients send, and what the page's button sends); `cadence=daily|weekly|off` sets the
  cadence, and daily or weekly also re-subscribes; `form=categories` with `shown=` and
  `include=` names mutes the shown categories not included (others keep their setting);
  `form=quiet_hours` with `quiet_start` and `quiet_end` (`HH:MM`, both empty for none) sets
  quiet hours, and a mistake in them answers 400 with the page and the reason, changing
  nothing. urlencoded or multipart/form-data; any other body, or fields of two forms at
  once, is a 400. The answer is a 200 page with one sentence confirming the change, never a
  redirect; repeating it is harmless.
- `GET /healthz`: `ok` (200) when the database answers `SELECT 1`, else 503.

A forged, cut-off or garbage token, or a valid one whose user has no recipient row, gets one
and the same 404 (body and headers), as does any other unknown path, `/u/{token}/` included
(nothing ever redirects); nothing changes. An authentic token that is out of date (older
than `unsubscribe.MAX_AGE_DAYS`, or issued for an older subscription version: the user
subscribed again since) gets one and the same 410 page saying so, for GET and POST, and
changes nothing. The body of a POST is looked at only after its token's MAC checks out.
Tokens never reach a log line; the page's forms post back to the page's own URL so the token
is not in the page, except after a POST that subscribed the user again: that retired the
page's token, so its forms post to a fresh one. Each route has its own body limit: 16 KB for
the form, 256 KB for the SNS webhook. Pages load nothing but their inline CSS and the logo's
origin (the CSP); no script.
"""
