"""Enroll from a host (Blender's "Enroll…", Unreal's `enroll(...)`) without freezing its editor: an EnrollmentJob
sends the portrait files to the server on a thread of its own (its own connection), and the host reads its state
on its timer or tick, and when asked.

    job = EnrollmentJob(request=EnrollRequest(name=..., consent=..., paths=(...), connection=LiveConfig(server=...)))
    job.start()
    ... job.state  # "sending" -> "enrolled" | "refused" | "failed"
    job.describe()  # one line for the host's status: "enrolled avatar 8 'Ada' from 1 portrait(s) in 1.3 s"

The files go as they are (client/portrait_files.py: PNG or JPEG; the server decodes and finds the face). Refusals
(no consent statement, a name in use, no face) are the server's one-line messages, unchanged.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from . import client as client_module
from .live import LiveConfig, curve_keys
from .portrait_files import PortraitFileError, encoded_portrait

JOB_STATES = ("waiting", "sending", "enrolled", "refused", "failed")


@dataclass(frozen=True)
class EnrollRequest:
    name: str
    consent: str  # the person's own words, as the host's checkbox showed them
    paths: tuple[str, ...]  # PNG or JPEG portrait files
    timeout_s: float = 30.0  # the face search and the embedder take a second or two on a CPU server
    connection: LiveConfig = field(default_factory=LiveConfig)  # the server's address and CURVE key files, as the live session's


class EnrollmentJob:
    """One enrollment on a background thread; thread-safe reads of its outcome."""

    def __init__(self, *, request: EnrollRequest) -> None:
        self.request = request
        self._lock = threading.Lock()
        self._state = "waiting"
        self._message = ""
        self.result: client_module.EnrolledAvatar | None = None
        self._thread = threading.Thread(target=self._run, name=f"megalive-enroll-{request.name}", daemon=True)

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def done(self) -> bool:
        return self.state in ("enrolled", "refused", "failed")

    def start(self) -> None:
        self._set("sending", f"enrolling {self.request.name!r}: sending {len(self.request.paths)} portrait(s)")
        self._thread.start()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the job ends (tests, scripts); True when it did."""
        self._thread.join(timeout_s)
        return self.done

    def describe(self) -> str:
        with self._lock:
            return self._message

    def _set(self, state: str, message: str) -> None:
        with self._lock:
            self._state, self._message = state, message

    def _run(self) -> None:
        request = self.request
        try:
            if not request.consent.strip():
                raise client_module.ServerError("bad_request", "a consent statement is required to enroll a face")
            portraits = [encoded_portrait(path) for path in request.paths]
            keys = curve_keys(request.connection)
            with client_module.AvatarClient(
                address=request.connection.server, timeout_s=request.timeout_s, name="megalive-enroll", curve=keys
            ) as avatar_client:
                avatar_client.hello()
                enrolled = avatar_client.enroll(name=request.name, consent=request.consent, portraits=portraits)
        except (PortraitFileError, client_module.CurveKeyError) as error:
            self._set("refused", f"enroll {request.name!r}: {error}")
            return
        except client_module.ServerError as error:
            self._set("refused", f"enroll {request.name!r} refused: {error.message}")
            return
        except (client_module.ServerGoneError, OSError) as error:
            self._set("failed", f"enroll {request.name!r}: {error}")
            return
        self.result = enrolled
        notes = "".join(f"; {note}" for note in enrolled.notes)
        self._set(
            "enrolled",
            f"enrolled avatar {enrolled.avatar} {enrolled.name!r} from {enrolled.frames} portrait(s) in {enrolled.seconds:.1f} s{notes}",
        )
