"""Ask every node once for its probe, write the answers (node id -> metrics) to `results-file`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    deadline = time.time() + 120
    while len(nodes := list(grid.get_node_ids())) < 2 and time.time() < deadline:
        time.sleep(1)
    messages = [Message(RecordDict(), dst_node_id=node, message_type="query") for node in nodes]
    answers = {}
    for reply in grid.send_and_receive(messages, timeout=300):
        answers[reply.metadata.src_node_id] = (
            {"error": reply.error.reason} if reply.has_error() else dict(reply.content["probe"])
        )
    Path(str(context.run_config["results-file"])).write_text(json.dumps(answers))
