"""Per-message cost at a deployed SuperNode: Flower's fresh ClientApp process per message against
scripts/deploy/warm_superexec.py (each message forked from a process that imported torch, PEFT and
transformers once).

For each mode, in the same invocation: a loopback federation started the way the deployment tests
start it (tests/e2e/federation.py: TLS, SuperNode authentication, scripts/deploy/start_superlink.sh
and start_supernode.sh), H hospitals with small synthetic sites, then `flwr run` of FedAvg for R
rounds with the tests' tiny ViT; every process is stopped by PID before the next mode starts.

Per message (train of each round, then the final evaluation):
  node       seconds at the SuperNode, from its "Receiving:" log line (the message reached the
             node) to its "Sending:" line (the reply leaves); lines are timestamped as they reach
             the log (read every 20 ms)
  step       the hospital's own seconds (`step-seconds` in its reply; results.json
             timeline.messages): data, model, training or evaluation
  overhead   node - step: waiting for the SuperExec's next poll, starting the process, imports,
             installing and loading the app bundle, handing the reply to the SuperNode
  server     seconds from the ServerApp's send to its receipt of the reply; it adds the
             SuperNode's own poll of the SuperLink (Flower sleeps 3 s between empty polls) and
             the ServerApp's polling

Modes: `fresh` = Flower's defaults (`--isolation subprocess`, SuperExec poll 1 s), the baseline;
`fresh-poll` = the same with the SuperExec polling every 0.2 s; `warm` = start_supernode.sh's
default (warm_superexec.py, poll 0.2 s). Ratios are against `fresh` of the same invocation.

    nice -n 19 .venv/bin/python scripts/bench_deploy.py                  # 2 hospitals, 3 rounds
    nice -n 19 .venv/bin/python scripts/bench_deploy.py --modes fresh warm --rounds 2 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fl_app.data.demo_sites import write_demo_npz  # noqa: E402
from fl_app.server.results import read_results  # noqa: E402
from fl_app.server.status import COMPLETED  # noqa: E402
from tests.conftest import TINY_SITE  # noqa: E402
from tests.e2e.federation import LoopbackFederation  # noqa: E402

MODES = {  # name -> (fresh ClientApp process per message, SuperExec poll seconds)
    "fresh": (True, "1.0"),
    "fresh-poll": (True, "0.2"),
    "warm": (False, "0.2"),
}
TASKS = ("breastmnist", "pneumoniamnist")


class LogClock:
    """Follows a growing log file from a thread; each line with the time it was first seen."""

    def __init__(self, path: Path, every: float = 0.02) -> None:
        self.path, self.every = path, every
        self.lines: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        offset, partial = 0, ""
        while True:
            stopping = self._stop.is_set()
            if self.path.exists():
                with open(self.path, errors="replace") as log:
                    log.seek(offset)
                    chunk = log.read()
                    offset = log.tell()
                now = time.time()
                *complete, partial = (partial + chunk).split("\n")
                self.lines.extend((now, line) for line in complete)
            if stopping:
                return
            self._stop.wait(self.every)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def node_messages(lines: list[tuple[float, str]]) -> list[tuple[str, float, float]]:
    """(message type, received at, reply sent at) for each message a SuperNode handled, in order."""
    handled, received = [], None
    for at, line in lines:
        if "Receiving: " in line:
            received = (line.split("Receiving: ")[1].split()[0], at)
        elif "Sending: " in line and received is not None:
            handled.append((received[0], received[1], at))
            received = None
    return handled


def run_mode(name: str, root: Path, hospitals: int, rounds: int) -> list[dict]:
    """One loopback federation in this mode, one FedAvg run; a row per message."""
    fresh, poll = MODES[name]
    data = root / "sites"
    names = [f"hospital-{i}" for i in range(hospitals)]
    fed = LoopbackFederation(root)
    fed.env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = poll
    clocks: dict[int, LogClock] = {}
    try:
        fed.make_keys(names)
        fed.start_superlink()
        node_of = {}
        for i, hospital in enumerate(names):
            task = TASKS[i % len(TASKS)]
            path = write_demo_npz(data / f"{hospital}.npz", task, n_train=64, n_eval=32, seed=i)
            node_of[i] = fed.register(hospital)
            clocks[i] = LogClock(root / f"supernode-{hospital}.log")
            fed.start_supernode(hospital, f'hospital-id={i} task="{task}" data-path="{path}"', fresh_clientapp=fresh)
        fed.wait_online(hospitals, timeout=120)
        results_dir = root / "fedavg"
        overrides = [
            *TINY_SITE,
            "train.local_epochs=1",
            "strategy=fedavg",
            f"strategy.rounds={rounds}",
            f"strategy.min_hospitals={hospitals}",
            f"simulation.num_hospitals={max(hospitals, 3)}",
        ]
        started = time.time()
        done = fed.flwr_run(f"data='site' results-dir='{results_dir}' overrides='{' '.join(overrides)}'", timeout=1800)
        wall = time.time() - started
        results = read_results(results_dir)
        if results is None or results.get("status") != COMPLETED:
            raise RuntimeError(f"{name}: the run did not complete; logs in {root}\n{done.stdout[-3000:]}")
    finally:
        fed.close()
        for clock in clocks.values():
            clock.close()
    rows = []
    for i, node in node_of.items():
        sent = sorted((m for m in results["timeline"]["messages"] if m["node_id"] == node), key=lambda m: m["sent_at"])
        handled = node_messages(clocks[i].lines)
        if [m["phase"] for m in sent] != [kind for kind, _, _ in handled]:
            raise RuntimeError(f"{name}: hospital {i}'s log and results.json disagree on its messages; see {root}")
        for message, (_, received_at, sent_at) in zip(sent, handled, strict=True):
            node_seconds = sent_at - received_at
            step = float(message["step_seconds"] or 0.0)
            rows.append(
                {
                    "mode": name,
                    "hospital": i,
                    "phase": message["phase"],
                    "round": message["round"],
                    "server_s": message["replied_at"] - message["sent_at"],
                    "node_s": node_seconds,
                    "step_s": step,
                    "overhead_s": node_seconds - step,
                }
            )
    print(f"{name}: flwr run took {wall:.1f} s ({len(rows)} messages)", flush=True)
    return rows


def report(rows: list[dict], baseline: str) -> None:
    print(
        f"\n{'mode':<11}{'hosp':>5} {'phase':<9}{'round':>6}{'server s':>10}{'node s':>9}{'step s':>9}{'overhead s':>12}"
    )
    for r in rows:
        print(
            f"{r['mode']:<11}{r['hospital']:>5} {r['phase']:<9}{r['round']:>6}"
            f"{r['server_s']:>10.2f}{r['node_s']:>9.2f}{r['step_s']:>9.2f}{r['overhead_s']:>12.2f}"
        )
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    base = statistics.median(r["overhead_s"] for r in rows if r["mode"] == baseline) if baseline in modes else None
    print(f"\n{'mode':<11}{'messages':>9}{'overhead median':>17}{'max':>7}{'server median':>15}{'vs ' + baseline:>14}")
    for mode in modes:
        own = [r for r in rows if r["mode"] == mode]
        median = statistics.median(r["overhead_s"] for r in own)
        ratio = f"{median / base:.2f}x" if base else "-"
        print(
            f"{mode:<11}{len(own):>9}{median:>17.2f}{max(r['overhead_s'] for r in own):>7.2f}"
            f"{statistics.median(r['server_s'] for r in own):>15.2f}{ratio:>14}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--hospitals", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--keep", type=Path, help="keep each mode's keys, logs and results under this folder")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        for mode in args.modes:
            root = (args.keep or Path(tmp)) / mode
            root.mkdir(parents=True, exist_ok=True)
            rows += run_mode(mode, root, args.hospitals, args.rounds)
    report(rows, baseline=args.modes[0])
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
