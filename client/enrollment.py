"""Enroll from a host (Blender's "Enroll…", Unreal's `enroll(...)`) without freezing its editor: an EnrollmentJob
sends the portrait files to the server on a thread of its own (its own connection), and the host reads its state
on its timer or tick, and when asked.

    job = EnrollmentJob(request=EnrollRequest(name=..., consent=..., paths=(...), connection=LiveConfig(server=...)))
    job.start()
    ... job.state  # "sending" -> ("refining" ->) "enrolled" | "refused" | "failed"
    job.describe()  # one line for the host's status: "enrolled avatar 8 'Ada' from 1 portrait(s) in 1.3 s"

The one-shot avatar exists from "refining" on (``job.result``: usable in `open` at once); while the server refines it
in the background the job follows its progress ("refining: step 40 of 120") until the refined one replaces it, and
``job.cancel()`` stops the refinement (the one-shot avatar stays).

The files go as they are (client/portrait_files.py: PNG or JPEG; the server decodes and finds the face). Refusals
(no consent statement, a name in use, no face) are the server's one-line messages, unchanged.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from . import client as client_module
from .live import LiveConfig, curve_keys
from .portrait_files import PortraitFileError, encoded_portrait

JOB_STATES = ("waiting", "sending", "refining", "enrolled", "refused", "failed")
REFINEMENT_POLL_S = 1.0  # how often a refining job asks the server for its progress


@dataclass(frozen=True)
class EnrollRequest:
    name: str
    consent: str  # the person's own words, as the host's checkbox showed them
    paths: tuple[str, ...]  # PNG or JPEG portrait files
    timeout_s: float = 30.0  # the face search and the embedder take a second or two on a CPU server
    refine_steps: int | None = None  # few-shot refinement after the one-shot avatar: None the server's default, 0 none
    connection: LiveConfig = field(default_factory=LiveConfig)  # the server's address and CURVE key files, as the live session's


class EnrollmentJob:
    """One enrollment on a background thread; thread-safe reads of its outcome."""

    def __init__(self, *, request: EnrollRequest) -> None:
        self.request = request
        self._lock = threading.Lock()
        self._state = "waiting"
        self._message = ""
        self.result: client_module.EnrolledAvatar | None = None  # the one-shot avatar, from "refining" on
        self._cancel = threading.Event()
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

    def cancel(self) -> None:
        """Stop following and cancel the server's refinement of the avatar (the one-shot avatar stays)."""
        self._cancel.set()

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
                enrolled = avatar_client.enroll(
                    name=request.name, consent=request.consent, portraits=portraits, refine_steps=request.refine_steps
                )
                self.result = enrolled
                summary = self._enrolled_line(enrolled)
                if enrolled.refinement_job is not None:
                    summary = self._follow(avatar_client, enrolled.refinement_job, summary)
        except (PortraitFileError, client_module.CurveKeyError) as error:
            self._set("refused", f"enroll {request.name!r}: {error}")
            return
        except client_module.ServerError as error:
            self._set("refused", f"enroll {request.name!r} refused: {error.message}")
            return
        except (client_module.ServerGoneError, OSError) as error:
            if self.result is not None:  # the avatar was made; only following its refinement broke
                self._set("enrolled", f"{self._enrolled_line(self.result)}; refinement not followed: {error}")
            else:
                self._set("failed", f"enroll {request.name!r}: {error}")
            return
        self._set("enrolled", summary)

    @staticmethod
    def _enrolled_line(enrolled: client_module.EnrolledAvatar) -> str:
        notes = "".join(f"; {note}" for note in enrolled.notes)
        if enrolled.refinement_unavailable:
            notes += f"; not refined: {enrolled.refinement_unavailable}"
        return f"enrolled avatar {enrolled.avatar} {enrolled.name!r} from {enrolled.frames} portrait(s) in {enrolled.seconds:.1f} s{notes}"

    def _follow(self, avatar_client: client_module.AvatarClient, job_id: int, summary: str) -> str:
        """Report the server's refinement of the avatar until it ends (or is cancelled here); the final line."""
        self._set("refining", f"{summary}; refining")
        job: dict = {}
        for job in avatar_client.follow_refinement(job_id, poll_s=REFINEMENT_POLL_S, stop=self._cancel):
            if job.get("state") in ("queued", "running"):
                progress = "waiting for another refinement" if job["state"] == "queued" else f"step {job.get('step')} of {job.get('steps')}"
                self._set("refining", f"{summary}; refining: {progress}")
        state = job.get("state")
        if state in ("queued", "running"):  # left on cancel()
            cancelled = avatar_client.cancel_refinement(job_id)
            return f"{summary}; refinement {'cancelled' if cancelled else 'had ended'}: the one-shot avatar stays"
        if state == "done":
            return f"{summary}; refined in {float(job.get('seconds') or 0):.0f} s ({job.get('steps')} steps)"
        return f"{summary}; refinement {state}: {job.get('error') or 'no reason given'} (the one-shot avatar stays)"
