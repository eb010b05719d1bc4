"""The web side, as a Starlette app (`app.create_app`): the unsubscribe pages (RFC 8058
one-click, `preferences`, `pages`), the SES feedback webhook and a health check.

Routes:
- `GET /u/{token}`: a page naming the address, with an Unsubscribe button and
  daily / weekly / off choices. A GET never changes anything: link scanners follow GETs.
- `POST /u/{token}`: the body `List-Unsubscribe=One-Click` unsubscribes at once (what mail
  clients send, and what the page's button sends); `cadence=daily|weekly|off` sets the
  cadence, and daily or weekly also re-subscribes. urlencoded or multipart/form-data; any
  other body is a 400. The answer is a 200 page, never a redirect; repeating it is harmless.
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
the form, 256 KB for the SNS webhook.
"""
