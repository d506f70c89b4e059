"""The HTTP API (docs/interfaces.md §4, §5): the audit log, its page, HL7 over HTTP, CDS Hooks, operators.

    GET /health                       open: {"status": "up"} or {"status": "down"} (503), nothing else
    GET /health/details               operator: broker and database, with their detail
    GET /metrics                      open: Prometheus metrics (workers/metrics.py, docs/metrics.md)
    GET /audit/messages               auditor (+ access-log row): filters patient, since, until, outcome, rule,
                                      control_id + limit, offset
    GET /audit/messages/{id}          auditor (+ access-log row): one record
    GET /audit/stats, /head, /verify  auditor: counts per day, the chain's head, the chain recomputed
    POST /hl7                         submit (Bearer or Basic): one HL7 v2 message -> its answer (workers/http/hl7.py)
    GET/POST /operator/deadletters…   operator: dead letters (workers/http/operators.py)
    GET /cds-services, POST …         CDS Hooks order-sign (its own JWT; workers/http/cds.py)
    GET /openapi.json, /docs          any role: the OpenAPI description
    GET /login, POST /login           open: the login form (CSRF token); a person's own token -> a server-side session
    POST /logout                      open: ends the session on the server, clears the cookie
    GET /, /ui, /ui/messages/{id}     auditor (+ access-log row): the server-rendered page
    GET /static/style.css             open: the page's CSS

Credentials (workers/http/auth.py): `Authorization: Bearer <token>` whose SHA-256 is a `users` row made by
`rxgate users add` (or RXGATE_AUDIT_TOKEN_SHA256, one auditor named `audit-token`), or the session cookie.
None or a wrong one: 401; a good one without the route's role: 403; 10 failures from one address in
60 s: 429 for 60 s. Bodies are capped on every route, answers carry no-store and nosniff
(workers/http/limits.py). Query strings (which may hold a patient id) are removed from uvicorn's access log.

Modules: `app` (create_app, the uvicorn factory settings_app), `auth` (credentials, roles, sessions, the
failure limit), `phi_access` (the access-log row of a patient-data read), `limits` (body caps, headers),
`api` (the JSON routes), `hl7` (HL7 over HTTP), `operators`, `cds`/`cds_auth` (CDS Hooks), `schemas`
(pydantic models), `pages` (the page routes, rendering `templates/*.html` with `static/style.css`),
`segments` (a stored message read with validator.er7, findings placed on its fields), `chart` (the outcome
chart's geometry, drawn by templates/chart.svg), `access_log` (uvicorn's query-string filter).
"""

from workers.http.app import create_app, settings_app

__all__ = ["create_app", "settings_app"]
