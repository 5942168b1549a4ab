import pytest

from fl_app.data import TWO_D_FLAGS, task_info


def test_two_d_flags_exclude_volumes():
    # Assert
    assert "pathmnist" in TWO_D_FLAGS and "chestmnist" in TWO_D_FLAGS
    assert len(TWO_D_FLAGS) == 12
    assert not any(flag.endswith("3d") for flag in TWO_D_FLAGS)


def test_task_info_reads_medmnist_info():
    # Execute
    chest, derma, retina = task_info("chestmnist"), task_info("dermamnist"), task_info("retinamnist")

    # Assert
    assert chest.multi_label and chest.n_outputs == 14 and chest.n_channels == 1
    assert chest.label_names[0] == "atelectasis" and chest.label_names[-1] == "hernia"
    assert not derma.multi_label and derma.n_outputs == 7 and derma.n_channels == 3
    assert retina.task_type == "ordinal-regression" and retina.n_outputs == 5


@pytest.mark.parametrize("flag", ["organmnist3d", "mnist", ""])
def test_task_info_rejects_unknown_and_3d_flags(flag):
    # Execute / Assert
    with pytest.raises(ValueError, match=r"unknown 2D MedMNIST flag.*valid flags: pathmnist"):
        task_info(flag)
