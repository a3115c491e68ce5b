"""A scripted OpenAI-compatible server on 127.0.0.1 for the synth fault tests: GET
/v1/models and POST /v1/chat/completions, where `respond(prompt, n)` (n = the request's
number, from 0) returns the answer text, or an int HTTP status to fail with, or a
`("sleep", seconds, text)` to answer late, a `("cut", text)` to answer with finish_reason
"length", a `("raw", body)` to answer 200 with a body that is not JSON. With
`refuse_json_mode` a request carrying `response_format` gets HTTP 400 naming it (as some
llama.cpp and TGI builds answer). Every prompt it was asked is kept in `prompts`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = str | int | tuple


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (a timeout test, a killed run): nothing to report


class FakeLLM:
    def __init__(
        self,
        respond: Callable[[str, int], Answer],
        model: str = "fake-model",
        port: int = 0,
        refuse_json_mode: bool = False,
        lists_models: bool = True,
    ):
        self.respond = respond
        self.refuse_json_mode = refuse_json_mode
        self.lists_models = lists_models  # False: GET /v1/models is a 404
        self.model = model
        self.prompts: list[str] = []
        self.arrivals: list[float] = []  # when each request came in (time.monotonic)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.rstrip("/").endswith("/models") and server.lists_models:
                    self._send(200, {"object": "list", "data": [
                        {"id": server.model, "object": "model", "owned_by": "test"}
                    ]})  # fmt: skip
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                prompt = body["messages"][-1]["content"]
                if server.refuse_json_mode and "response_format" in body:
                    self._send(400, {"error": {"message": "response_format is not supported"}})
                    return
                with server.lock:
                    n = len(server.prompts)
                    server.prompts.append(prompt)
                    server.arrivals.append(time.monotonic())
                answer = server.respond(prompt, n)
                finish_reason = "stop"
                if isinstance(answer, tuple) and answer[0] == "sleep":
                    _, seconds, answer = answer
                    time.sleep(seconds)
                elif isinstance(answer, tuple) and answer[0] == "cut":
                    finish_reason, answer = "length", answer[1]
                elif isinstance(answer, tuple) and answer[0] == "raw":
                    data = answer[1].encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if isinstance(answer, int):
                    self._send(answer, {"error": {"message": f"scripted {answer}"}})
                    return
                self._send(200, {
                    "id": f"c{n}", "object": "chat.completion", "created": 0,
                    "model": server.model,
                    "choices": [{"index": 0, "finish_reason": finish_reason,
                                 "message": {"role": "assistant", "content": answer}}],
                    "usage": {"prompt_tokens": len(prompt.split()),
                              "completion_tokens": len(answer.split()),
                              "total_tokens": len(prompt.split()) + len(answer.split())},
                })  # fmt: skip

        self.httpd = _QuietServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
