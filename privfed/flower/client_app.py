"""The site's Flower ``ClientApp``: a relay from its SuperNode to the site's own long-lived process.

It holds no secret and no state: it forwards the privfed message it received (a signed, versioned message in the
``privfed`` ConfigRecord and the ``arrays`` ArrayRecord) to ``<site-dir>/site.sock`` and returns the site's signed
reply. The site directory comes from the SuperNode's ``--node-config 'site-dir="..."'``. Imports: Flower, numpy and
the wire codec only (no torch), because Flower starts this process afresh for every message.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from privfed.flower import MESSAGE_TYPES, SOCKET_NAME
from privfed.flower.records import from_record, to_record
from privfed.flower.wire import call

app = ClientApp()

RELAY_TIMEOUT_S = 3600.0     # local training can be long; the server's own timeout decides a dropout


def _relay(msg: Message, context: Context) -> Message:
    site_dir = Path(str(context.node_config["site-dir"]))
    config, arrays = from_record(msg.content)
    reply_config, reply_arrays = call(site_dir / SOCKET_NAME, config, arrays, timeout_s=RELAY_TIMEOUT_S)
    return Message(to_record(reply_config, reply_arrays), reply_to=msg)


def _register(message_type: str) -> None:
    category, action = message_type.split(".")
    getattr(app, category)(action)(_relay)


for _t in MESSAGE_TYPES:
    _register(_t)
