"""fl_app/server/stop_reason.py: a run ended by its SuperLink going away says so."""

from __future__ import annotations

import os

from fl_app.server.stop_reason import SuperLinkWatch


def test_a_serverapp_whose_superlink_exited_names_the_superlink():
    # Prepare: a "SuperLink" process whose child "ServerApp" watches it, then the SuperLink exits
    read_end, write_end = os.pipe()
    superlink = os.fork()
    if superlink == 0:
        if os.fork() == 0:  # the ServerApp
            watch = SuperLinkWatch()
            os.write(write_end, b"x")  # ready: the SuperLink may exit now
            gone_in_time = watch.gone(grace_s=30)
            os.write(write_end, f"{gone_in_time}|{watch.interrupted('train', grace_s=30)}".encode())
            os._exit(0)
        os.read(read_end, 1)
        os._exit(0)
    os.close(write_end)

    # Execute
    os.waitpid(superlink, 0)
    report = b""
    while chunk := os.read(read_end, 4096):
        report += chunk

    # Assert
    gone, error = report.decode().split("|")
    assert gone == "True"
    assert error.startswith("the SuperLink stopped during train"), error


def test_a_serverapp_whose_superlink_runs_says_a_signal_stopped_it():
    watch = SuperLinkWatch()  # this test process's parent keeps running

    assert not watch.gone()
    assert watch.interrupted("evaluate").startswith("stopped during evaluate (a signal")
    assert watch.failed(ValueError("bad"), "train") == "ValueError: bad (during train)"
