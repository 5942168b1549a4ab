"""Flower ClientApp: a hospital. Thin: decode the message, call `hospital_steps`, reply."""

from __future__ import annotations

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from fl_app.hospital_steps import experiment_of, hospital_for, hospital_id_of
from fl_app.protocol import ARRAYS, calibration_request

app = ClientApp()

ERROR_CODE_HOSPITAL = 1001


def _fail(msg: Message, context: Context, error: Exception) -> Message:
    """Reply with an error that names the hospital, so the server can report who failed."""
    reason = f"hospital-id={hospital_id_of(context.node_config)}: {type(error).__name__}: {error}"
    return Message(Error(code=ERROR_CODE_HOSPITAL, reason=reason), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Fine-tune this hospital's adapter and send it back with its metrics."""
    try:
        experiment = experiment_of(msg.content)
        hospital = hospital_for(experiment, context.node_config)
        if hospital.id in experiment.get("fail_hospitals", []):
            raise RuntimeError("simulated failure (simulation.fail_hospitals)")
        server_round = int(msg.content["config"].get("server-round", 1))
        start = msg.content[ARRAYS] if ARRAYS in msg.content else None
        return Message(hospital.train(start, server_round, calibration_request(msg.content)), reply_to=msg)
    except Exception as error:  # reported to the server, which leaves this hospital out
        return _fail(msg, context, error)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate every model version in the message on this hospital's test split."""
    try:
        hospital = hospital_for(experiment_of(msg.content), context.node_config)
        return Message(hospital.evaluate(msg.content), reply_to=msg)
    except Exception as error:
        return _fail(msg, context, error)
