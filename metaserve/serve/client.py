"""A small Python client for `metaserve serve` (standard library only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class ServeError(RuntimeError):
    """The service refused a request: `status` and its one-sentence `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Client:
    """`Client("http://127.0.0.1:8000").predict(support_x, support_y, query_x)`."""

    def __init__(self, url: str = "http://127.0.0.1:8000", timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def predict(
        self, support_x: Any, support_y: Any, query_x: Any, *, steps: int | None = None, model: str | None = None
    ) -> dict[str, Any]:
        """Adapt the served model to the support set and predict the queries (nested lists, arrays or tensors)."""
        body: dict[str, Any] = {
            "support_x": _plain(support_x),
            "support_y": _plain(support_y),
            "query_x": _plain(query_x),
        }
        if steps is not None:
            body["steps"] = steps
        if model is not None:
            body["model"] = model
        return self.request("POST", "/predict", json.dumps(body).encode())

    def models(self) -> list[dict[str, Any]]:
        return self.request("GET", "/models")["models"]

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health")

    def request(self, method: str, path: str, data: bytes | None = None) -> dict[str, Any]:
        """One HTTP call; a 4xx/5xx becomes a ServeError carrying the service's message."""
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            text = err.read().decode(errors="replace")
            try:
                message = json.loads(text).get("error", text)
            except (json.JSONDecodeError, AttributeError):
                message = text
            raise ServeError(err.code, message) from None


def _plain(value: Any) -> Any:
    """Nested lists from tensors and numpy arrays (lists and strings pass through)."""
    return value.tolist() if hasattr(value, "tolist") else value
