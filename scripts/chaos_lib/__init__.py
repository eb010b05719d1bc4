"""The chaos harness behind scripts/chaos.py (whose docstring says what a run does).

settings: files, worker settings, options. records: the plain data it gathers.
providers: the SMTP and SES stand-ins and their Mailbag. cluster: its PostgreSQL.
processes, supervisor: the `digest` processes, kept running. backlog: the work.
faults/: one module per kind of fault. sql: what it reads. logs: what it reads in the
processes' output. audit: the verdict (pure). report: the tables. run: the whole run.
"""
