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


def test_measured_choice_follows_the_ratio_at_the_models_width():
    choice = hardware.choose_precision(
        torch.device("cpu"), flags=frozenset({"avx512_bf16"}), width=256
    )
    assert "width 256" in choice.reason
    ratio = float(choice.reason.split(" trains ")[1].split("x")[0])
    assert choice.precision == ("bf16" if ratio >= hardware.CPU_BF16_MIN_MLP_SPEEDUP else "fp32")


def test_narrow_models_train_in_fp32_even_with_native_bf16():
    for measure in (True, False):
        choice = hardware.choose_precision(
            torch.device("cpu"), measure=measure, flags=frozenset({"amx_bf16"}), width=64
        )
        assert choice.precision == "fp32"
        assert "width 64 is below" in choice.reason


def test_mlp_speedup_caps_the_measured_width():
    ratio, width = hardware.mlp_speedup(4096, seconds=0.0)
    assert width == hardware.MAX_MEASURED_WIDTH and ratio > 0


def test_matmul_flops_is_positive():
    assert hardware.matmul_flops(torch.float32, n=64, seconds=0.01) > 0


def test_info_hardware_shows_the_machine_and_the_choice(capsys):
    import json

    from blankfill.cli import main

    assert main(["info", "--hardware"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cpu"] == hardware.cpu_model()
    assert out["device"] == "cpu" or out["device"].startswith("cuda")
    assert out["precision"]["auto"] in ("fp32", "bf16") and out["precision"]["reason"]
    dec = out["decoding_precision"]  # what `fill` / `serve` / `BlankFiller` use by default
    assert dec["auto"] in ("fp32", "bf16") and dec["reason"]
    assert "oneDNN" in out["decoding_matmuls"] or "MKL" in out["decoding_matmuls"]
    if out["device"] == "cpu":  # what the trainers do with the freed memory
        assert "malloc" in out["training_memory"]
    assert main(["info", "tiny", "--hardware"]) == 0  # the choice at that model's width
    reason = json.loads(capsys.readouterr().out)["precision"]["reason"]
    assert "64" in reason or "no native bf16" in reason


def test_info_without_a_model_is_a_one_line_error(capsys):
    from blankfill.cli import main

    try:
        rc = main(["info"])
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    assert "pass --hardware" in capsys.readouterr().err
