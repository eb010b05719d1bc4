"""The email channel: MIME messages (`mime`) and the transports that send them: `ses`
(Amazon SES v2), `smtp`, `file` (.eml files, for demos) and `null` (benchmarks)."""
