"""Stand-ins for the services digest talks to over HTTP, served on loopback sockets: Slack's
Web API (`slack`), a Standard Webhooks receiver (`webhooks`), and the serving helpers
(`server`). Tests use them, and the chaos harness, the demo and the bench can too (put
`tests/` on `sys.path`)."""
