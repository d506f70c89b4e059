"""The auditors' HTTP API and web page (read-only), docs/interfaces.md §4.

    GET /health                       open: {"status": "ok"} (503 when the database is unreachable)
    GET /metrics                      open: Prometheus metrics (workers/metrics.py, docs/metrics.md)
    GET /audit/messages               filters patient, since, until, outcome, rule, control_id + limit, offset
    GET /audit/messages/{id}          one record: findings, raw message, response, computed values, chain link
    GET /audit/stats                  per local day: counts by outcome and by rule (same filters)
    GET /audit/head                   latest sequence number and hash (anchor it elsewhere)
    GET /audit/verify                 recompute the hash chain
    GET /openapi.json, /docs          the OpenAPI description (behind the token too)
    GET /login, POST /login           open: the login form; checks the token, sets an HttpOnly session cookie
    POST /logout                      open: clears the session cookie
    GET /, /ui, /ui/messages/{id}     the server-rendered auditor page (filter form, table, detail, chart)
    GET /static/style.css             open: the page's CSS

Every route not marked open needs `Authorization: Bearer <token>` where SHA-256(token) equals
RXGATE_AUDIT_TOKEN_SHA256, or the session cookie; otherwise 401. With no hash configured every
protected route is 401 (closed by default). Bad filter values are 422 with a readable `message`.
Query strings (which may hold a patient id) are removed from uvicorn's access log.

Modules: `app` (create_app, the uvicorn factory settings_app), `auth` (token and session checks),
`api` (the JSON routes), `schemas` (their pydantic models), `pages` (the page routes, rendering
`templates/*.html` with `static/style.css`), `segments` (a stored message read with validator.er7,
findings placed on its fields), `chart` (the outcome chart's geometry, drawn by templates/chart.svg),
`access_log` (the query-string filter).
"""

from workers.http.app import create_app, settings_app

__all__ = ["create_app", "settings_app"]
