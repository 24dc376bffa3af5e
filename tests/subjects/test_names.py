import pytest

from subjects import names


@pytest.mark.parametrize("bad", ["", "a.b", "a*", "a>", "has space", "x" * 65, "ops.>", "é"])
def test_ids_that_would_break_a_subject_are_refused(bad: str) -> None:
    with pytest.raises(names.InvalidToken):
        names.ops_progress(bad, "local")
    with pytest.raises(names.InvalidToken):
        names.ops_events("op-1", bad)


def test_subjects_are_built_from_validated_ids() -> None:
    assert names.ops_progress("op-1", "box1") == "ops.op-1.progress.box1"
    assert names.ops_events("op_1", names.ANY_HOST) == "ops.op_1.events.*"
    assert names.ops_cancel("A1") == "ops.A1.cancel"
    assert names.jobs_subject("training.gpu") == "jobs.training.gpu"
    assert names.op_id_from_subject("ops.op-1.cancel") == "op-1"
    assert names.op_id_from_subject("ops.op-1.events.box1") == "op-1"
    assert names.host_from_subject("ops.op-1.events.box1") == "box1"
    assert names.worker_register("box1") == "worker.register.box1"


def test_a_lease_lives_under_its_host() -> None:
    assert names.lease_key("box1", "w1") == "box1.w1"
    assert names.split_lease_key("box1.w1") == ("box1", "w1")
    for bad in ("w1", "box1.", ".w1", "box1.w.1"):
        with pytest.raises(names.InvalidToken):
            names.split_lease_key(bad)


def test_unknown_capabilities_are_refused() -> None:
    with pytest.raises(names.InvalidToken):
        names.jobs_subject("training.tpu")


def test_gpu_and_cpu_offers_of_one_attempt_have_distinct_message_ids() -> None:
    gpu = names.job_msg_id("op1", 1, names.CAP_TRAINING_GPU)
    cpu = names.job_msg_id("op1", 1, names.CAP_TRAINING_CPU)
    retry = names.job_msg_id("op1", 2, names.CAP_TRAINING_GPU)
    assert len({gpu, cpu, retry}) == 3


def test_the_ops_stream_never_captures_cancel_requests() -> None:
    assert names.OPS_CANCEL_ALL not in (names.OPS_PROGRESS_ALL, names.OPS_EVENTS_ALL)
