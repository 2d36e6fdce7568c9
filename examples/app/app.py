"""The example app: a small web service that answers with a row of its environment's Postgres
and a key of its Redis.

Everything it needs to connect comes from the secret files the platform mounts under
/run/secrets (`invoke app.deploy` fills them in): postgres_host, postgres_port, postgres_db,
postgres_user, postgres_password, redis_host, redis_port, redis_password. No connection
detail is a variable of its environment.

GET /        {"environment": ..., "row": <the newest example_message.message>,
              "key": <the value of the Redis key example:message>}
GET /health  200 once the process serves (the container's health check)
"""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import redis

SECRETS = Path(os.environ.get("APP_SECRETS_DIR", "/run/secrets"))
PORT = int(os.environ.get("APP_PORT", "8000"))
ROW_QUERY = "SELECT message FROM example_message ORDER BY id DESC LIMIT 1"
REDIS_KEY = "example:message"


def secret(name: str) -> str:
    return (SECRETS / name).read_text(encoding="utf-8").strip()


def read_row() -> str | None:
    with psycopg.connect(
        host=secret("postgres_host"),
        port=int(secret("postgres_port")),
        dbname=secret("postgres_db"),
        user=secret("postgres_user"),
        password=secret("postgres_password"),
        connect_timeout=5,
    ) as connection:
        row = connection.execute(ROW_QUERY).fetchone()
    return None if row is None else row[0]


def read_key() -> str | None:
    client = redis.Redis(
        host=secret("redis_host"),
        port=int(secret("redis_port")),
        password=secret("redis_password"),
        socket_timeout=5,
        decode_responses=True,
    )
    try:
        return client.get(REDIS_KEY)
    finally:
        client.close()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if self.path == "/health":
            self._answer(200, {"status": "ok"})
            return
        if self.path != "/":
            self._answer(404, {"error": "not found"})
            return
        try:
            body = {"row": read_row(), "key": read_key()}
        except (OSError, psycopg.Error, redis.RedisError) as exc:
            # The kind of error only: a message could carry a connection detail.
            self._answer(503, {"error": f"a database did not answer ({type(exc).__name__})"})
            return
        self._answer(200, {"environment": os.environ.get("APP_ENVIRONMENT", ""), **body})

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's name
        if self.path != "/health":  # the health check asks every few seconds
            print(f"{self.address_string()} {format % args}", flush=True)


def main() -> None:
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)  # noqa: S104 - inside its task
    print(f"example app listening on port {PORT}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
