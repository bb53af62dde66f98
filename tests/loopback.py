"""Test helpers: a quiet HTTP server on 127.0.0.1, dead URLs, tone files and an RSS feed.

Tests that exercise downloads talk only to these loopback servers, never to the network.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import soundfile as sf


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request seen


class _CountingHandler(_QuietHandler):
    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok:
            self.server.requests.append((self.command, self.path))
        return ok


class ServedDir(str):
    """The base URL (a str, no trailing slash) plus the served folder and a request log."""

    directory: Path
    requests: list[tuple[str, str]]


@contextlib.contextmanager
def serve_dir(path: str | os.PathLike) -> Iterator[ServedDir]:
    """Serve ``path`` over HTTP on 127.0.0.1 (ephemeral port); yields the base URL.

    The yielded value is a str; ``directory`` is the served folder and ``requests`` lists
    (method, path) of every request received, so tests can check that a cache avoided
    a download.
    """
    handler = functools.partial(_CountingHandler, directory=str(path))
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = ServedDir(f"http://127.0.0.1:{server.server_address[1]}")
    base.directory = Path(path)
    base.requests = server.requests
    try:
        yield base
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def free_port_url(path: str = "/nothing.mp3") -> str:
    """A URL on 127.0.0.1 whose port has nothing listening (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The socket is closed without listen(): the port stays free, so connecting is refused.
    return f"http://127.0.0.1:{port}{path}"


def make_tone(
    path: str | os.PathLike,
    seconds: float,
    sample_rate: int = 44100,
    channels: int = 2,
    freq: float = 440.0,
    amplitude: float = 0.3,
) -> Path:
    """Write a sine tone; the format follows the extension (wav/flac direct, others via ffmpeg)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    tone = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    data = np.repeat(tone[:, None], channels, axis=1)
    ext = path.suffix.lower()
    if ext in (".wav", ".flac"):
        sf.write(path, data, sample_rate, subtype="PCM_16")
        return path
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "tone.wav"
        sf.write(wav, data, sample_rate, subtype="PCM_16")
        codec = {".mp3": ["-c:a", "libmp3lame"], ".ogg": ["-c:a", "libvorbis"]}.get(ext, [])
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav), *codec, str(path)],
            check=True,
        )
    return path


def write_rss(path: str | os.PathLike, base_url: str, files: list[str]) -> Path:
    """Write a podcast RSS feed with one <enclosure> item per file (served under base_url)."""
    items = []
    for i, name in enumerate(files, 1):
        url = escape(f"{base_url}/{name}", {'"': "&quot;"})
        items.append(
            f"    <item>\n"
            f"      <title>Episode {i}</title>\n"
            f"      <guid>{url}</guid>\n"
            f'      <enclosure url="{url}" type="audio/mpeg" length="0"/>\n'
            f"    </item>\n"
        )
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<rss version="2.0">\n'
        "  <channel>\n"
        "    <title>Loopback podcast</title>\n"
        f"    <link>{escape(base_url)}/</link>\n"
        "    <description>test feed</description>\n"
        f"{''.join(items)}"
        "  </channel>\n"
        "</rss>\n"
    )
    path = Path(path)
    path.write_text(xml)
    return path


class Hub:
    """What a loopback Hugging Face Hub received: requests (method, path, Authorization,
    JSON body or None) and the files of each commit, {repo_id: {path: bytes}}."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None, dict | None]] = []
        self.files: dict[str, dict[str, bytes]] = {}


@contextlib.contextmanager
def serve_hub() -> Iterator[tuple[str, Hub]]:
    """A Hugging Face Hub on 127.0.0.1 that answers the calls ``create_repo`` and
    ``upload_folder`` make (the model card's front matter checked as the Hub would reject
    it: not YAML, or no licence; every file uploaded as a regular git blob, in the commit
    itself); yields (endpoint for HF_ENDPOINT, what it received)."""
    import base64
    import json

    import yaml

    hub = Hub()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format, *args):
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            path = self.path.split("?")[0]
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            hub.requests.append((self.command, path, self.headers.get("Authorization"),
                                 lines[0] if len(lines) == 1 else None))
            if path == "/api/repos/create":
                repo = f"{lines[0]['organization']}/{lines[0]['name']}"
                return self.reply({"url": f"{endpoint}/{repo}", "name": repo})
            if path == "/api/validate-yaml":
                front = yaml.safe_load(lines[0]["content"].split("---")[1])
                ok = isinstance(front, dict) and "license" in front
                return self.reply({"errors": [] if ok else [{"message": "no license"}],
                                   "warnings": []}, 200 if ok else 400)
            repo, _, action = path.removeprefix("/api/models/").rpartition("/")[0] \
                .rpartition("/")
            if action == "preupload":
                return self.reply({"files": [{"path": f["path"], "uploadMode": "regular",
                                              "shouldIgnore": False}
                                             for f in lines[0]["files"]]})
            if action == "commit":
                files = hub.files.setdefault(repo, {})
                for line in lines:
                    if line["key"] == "file":
                        files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                return self.reply({"commitUrl": f"{endpoint}/{repo}/commit/{'0' * 40}",
                                   "commitOid": "0" * 40})
            self.reply({"error": f"not served here: {path}"}, 404)

        def do_GET(self) -> None:
            self.reply({"error": f"not served here: {self.path}"}, 404)

        def reply(self, obj: dict, code: int = 200) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield endpoint, hub
    finally:
        server.shutdown()
        server.server_close()
