"""Following the service: history once, then the event stream; on any failure, say why and try again.

Runs in the app's connection worker thread. It blocks on the socket, so it must never run on the
event loop; it talks to the app only by posting messages.
"""

from __future__ import annotations

from collections.abc import Callable

from textual.message import Message

from appliance.control.client import ControlClient, ControlError
from tui.messages import ServiceConnected, ServiceDisconnected, SnapshotReceived, TaskProgress

FIRST_RETRY_S = 0.5  # a restart (systemd's RestartSec=5) is caught within a few tries
MAX_RETRY_S = 2.0  # connecting to a local socket costs nothing: come back quickly after a restart
HISTORY_S = 900  # what the graphs can show: the service keeps 15 minutes


def follow(client: ControlClient, post: Callable[[Message], object], cancelled: Callable[[], bool],
           sleep: Callable[[float], object]) -> None:
    """Until `cancelled()`: post ServiceConnected, then SnapshotReceived / TaskProgress as they come.

    When the service is unreachable, refuses us or ends the stream, post ServiceDisconnected and try
    again after a back-off that doubles up to MAX_RETRY_S (reset by every successful connection).
    `sleep` must return early when the app shuts down.
    """
    delay = FIRST_RETRY_S
    while not cancelled():
        try:
            post(ServiceConnected(client.history(seconds=HISTORY_S)))
            delay = FIRST_RETRY_S
            for event, data in client.events():
                if cancelled():
                    return
                if event == "snapshot":
                    post(SnapshotReceived(data))
                elif event == "progress":
                    post(TaskProgress(data))
            reason = "the service closed the event stream (it may be restarting)"
        except ControlError as e:  # unreachable, access refused, or an HTTP error: all say what to do
            reason = e.message
        except ValueError as e:  # a malformed event: a service of another version?
            reason = f"the service sent something this TUI cannot read ({e}); is the TUI the same version as the service?"
        if cancelled():
            return
        post(ServiceDisconnected(reason, delay))
        sleep(delay)
        delay = min(delay * 2, MAX_RETRY_S)
