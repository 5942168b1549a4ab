"""Flower ClientApp: a hospital. Thin: decode the message, call `hospital_steps`, reply.

The hospital's steps (torch, PEFT, transformers) are imported on the first message, not with
this module: Flower's simulation loads the ClientApp once before it starts Ray, in the process
that is importing the ServerApp; a light ClientApp lets Ray and its workers start meanwhile.
"""

from __future__ import annotations

import importlib
import os
import time
from types import ModuleType

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

app = ClientApp()

ERROR_CODE_HOSPITAL = 1001
CRASH_EXIT_CODE = 70


def _steps() -> ModuleType:
    return importlib.import_module("fl_app.hospital_steps")


def _protocol() -> ModuleType:
    return importlib.import_module("fl_app.protocol")


def _private(experiment: dict) -> bool:
    return bool((experiment.get("privacy") or {}).get("enabled", False))


def _fail(msg: Message, context: Context, error: Exception) -> Message:
    """Reply with an error that names the hospital, so the server can report who failed."""
    reason = f"hospital-id={_steps().hospital_id_of(context.node_config)}: {type(error).__name__}: {error}"
    return Message(Error(code=ERROR_CODE_HOSPITAL, reason=reason), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Fine-tune this hospital's adapter and send it back with its metrics."""
    try:
        steps = _steps()
        started = time.perf_counter()  # after the first message's imports: those are the worker's start-up
        experiment = steps.experiment_of(msg.content)
        hospital = steps.hospital_for(experiment, context.node_config)
        if hospital.id in experiment.get("fail_hospitals", []):
            raise RuntimeError("simulated failure (simulation.fail_hospitals)")
        if hospital.id in experiment.get("crash_hospitals", []):
            os._exit(CRASH_EXIT_CODE)  # rehearse a hospital process dying mid-round (simulation.crash_hospitals)
        time.sleep(float(experiment.get("slow_hospitals", {}).get(str(hospital.id), 0)))  # a straggler
        server_round = int(msg.content["config"].get("server-round", 1))
        start = msg.content[steps.ARRAYS] if steps.ARRAYS in msg.content else None
        # The DP ledger: on the site's disk keyed by its data (a simulation: per job, in the context state).
        ledger = steps.open_ledger(hospital, experiment, context.node_config, context.state)
        try:
            protocol = _protocol()
            content = hospital.train(
                start,
                server_round,
                protocol.calibration_request(msg.content),
                ledger,
                stats=protocol.stats_request(msg.content),
            )
        finally:  # every release recorded is kept, before any reply leaves (a refusal too: it may have spent)
            steps.keep_ledger(ledger, experiment, context.state)
        if not _private(experiment):  # under DP the hospital's timing is not released (it depends on its data)
            # The hospital's own work (data, training, validation): what a run's framework overhead is measured against.
            content[steps.METRICS]["step-seconds"] = time.perf_counter() - started
        return Message(content, reply_to=msg)
    except Exception as error:  # reported to the server, which leaves this hospital out
        return _fail(msg, context, error)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate every model version in the message on this hospital's test split."""
    try:
        steps = _steps()
        started = time.perf_counter()  # after the first message's imports: those are the worker's start-up
        experiment = steps.experiment_of(msg.content)
        hospital = steps.hospital_for(experiment, context.node_config)
        if _private(experiment):  # the hospital record names the released (noised) training-set size
            ledger = steps.open_ledger(hospital, experiment, context.node_config, context.state)
            try:
                content = hospital.evaluate(msg.content, ledger)
            finally:
                steps.keep_ledger(ledger, experiment, context.state)
        else:
            content = hospital.evaluate(msg.content)
            content[steps.METRICS]["step-seconds"] = time.perf_counter() - started
        return Message(content, reply_to=msg)
    except Exception as error:
        return _fail(msg, context, error)


@app.evaluate("search")
def search(msg: Message, context: Context) -> Message:
    """MedForge's federated search: score candidate merges on this hospital's validation split;
    only one loss per candidate goes back (noised and accounted in the ledger with dp_noise)."""
    try:
        steps = _steps()
        started = time.perf_counter()
        experiment = steps.experiment_of(msg.content)
        hospital = steps.hospital_for(experiment, context.node_config)
        peers = steps.search_peers(msg.content, context.state, f"medforge-search/{experiment.get('job', '')}")
        ledger = steps.open_ledger(hospital, experiment, context.node_config, context.state)
        try:
            content = hospital.search_losses(msg.content, peers, ledger)
        finally:  # kept before the reply leaves
            steps.keep_ledger(ledger, experiment, context.state)
        if not _private(experiment):
            content[steps.METRICS]["step-seconds"] = time.perf_counter() - started
        return Message(content, reply_to=msg)
    except Exception as error:
        return _fail(msg, context, error)
