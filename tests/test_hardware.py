import torch

from blankfill import hardware


def test_describe_names_the_machine():
    info = hardware.describe()
    assert info["cpu"] and isinstance(info["cpu"], str)
    assert info["threads"] == torch.get_num_threads()
    assert info["cpu_native_bf16"] == any(
        f in hardware.cpu_flags() for f in hardware.NATIVE_BF16_FLAGS
    )


def test_cpu_without_native_bf16_trains_in_fp32():
    choice = hardware.choose_precision(torch.device("cpu"), flags=frozenset({"avx2", "fma"}))
    assert choice.precision == "fp32"
    assert "no native bf16" in choice.reason


def test_cpu_with_native_bf16_unmeasured_picks_bf16():
    choice = hardware.choose_precision(
        torch.device("cpu"), measure=False, flags=frozenset({"amx_bf16"})
    )
    assert choice.precision == "bf16"
    assert "amx_bf16" in choice.reason


def test_measured_choice_follows_the_ratio():
    choice = hardware.choose_precision(torch.device("cpu"), flags=frozenset({"avx512_bf16"}))
    ratio = float(choice.reason.split("(")[1].split("x")[0])
    assert choice.precision == ("bf16" if ratio >= hardware.CPU_BF16_MIN_SPEEDUP else "fp32")


def test_matmul_flops_is_positive():
    assert hardware.matmul_flops(torch.float32, n=64, seconds=0.01) > 0
