import pytest

from host_gpu.device import NoGpuError, detect_gpu, require_gpu


@pytest.mark.skipif(detect_gpu() is not None, reason="this machine has a GPU")
def test_the_gpu_host_refuses_to_start_without_a_gpu_and_says_why() -> None:
    with pytest.raises(NoGpuError, match="needs a CUDA or MPS device"):
        require_gpu()
