"""Capture segments sent to the control plane (``--capture-url``), for gateways that share no
folder with it: the replicas of a Kubernetes Deployment, say.

The gateway's spool (rollout.capture) writes closed segments into its own folder as always; a
thread of this module sends each one, oldest first, as the body of ``POST <url>`` with the
gateway token (``Authorization: Bearer``) and the segment's name (``Lastmile-Segment``), and
deletes it once the manager has answered 2xx. The manager puts it in its own capture folder,
where its summariser reads it like the segments of its own gateway.

Nothing is lost while the manager is away: segments wait in the gateway's folder and go at the
next pass. The spool's bound on that folder (``--capture-max-bytes``) still holds, so a manager
that stays away makes the gateway drop new captures (counted), never grow without bound. A
failure is logged once per kind, not at every pass.
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from pathlib import Path

from rollout.capture import closed_segments
from rollout.routes_pull import control_plane_failure

logger = logging.getLogger(__name__)

SEGMENT_HEADER = "Lastmile-Segment"


class SegmentShipper:
    """Sends closed segments of ``directory`` to ``url`` every ``interval_s``."""

    def __init__(
        self,
        directory: Path,
        url: str,
        token: str | None,
        *,
        interval_s: float = 1.0,
        timeout_s: float = 30.0,
    ) -> None:
        self.directory = directory
        self.url = url
        self.token = token
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.sent = 0  # segments the manager took
        self.failures = 0  # passes that stopped on an error
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="capture-ship", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """One last pass (what the spool closed as it stopped), then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self.interval_s)
            self.ship_once()
            if stopping:
                return

    def ship_once(self) -> int:
        """Send every closed segment now; how many went. Stops at the first failure (the
        rest wait for the next pass, in order)."""
        sent = 0
        for path in closed_segments(self.directory):
            try:
                self._send(path)
            except FileNotFoundError:
                continue
            except ValueError as exc:
                self.failures += 1
                if str(exc) != self.last_error:
                    logger.warning("capture segments wait in %s: %s", self.directory, exc)
                self.last_error = str(exc)
                return sent
            path.unlink(missing_ok=True)
            sent += 1
            self.sent += 1
        if sent and self.last_error is not None:
            logger.info("capture segments reach %s again", self.url)
            self.last_error = None
        return sent

    def _send(self, path: Path) -> None:
        body = path.read_bytes()
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/octet-stream", SEGMENT_HEADER: path.name},
        )
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except OSError as exc:  # HTTPError and URLError are OSErrors
            raise control_plane_failure(self.url, exc) from None
