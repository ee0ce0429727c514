"""First use and options: --dry-run's step time and ETA (case 13), --model RUN (14), a tokenizer of
the same size that is not the model's (6), --overwrite and the fine-tuning bar (16), the sample
length explained (17), and the option audit (11): bounds, options a task would ignore, file:line."""

from __future__ import annotations

from pathlib import Path

from blankfill.config import RunConfig, load_config
from blankfill.model import GLM
from blankfill.tokenizer import load_tokenizer, train_tokenizer
from blankfill.train import checkpoint as ck

from .conftest import error_line, write_jsonl

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "pretrain" / "tiny.toml"
CB_ROW = {"premise": "It rains.", "hypothesis": "The ground is wet", "label": "entailment"}


def test_dry_run_reports_step_time_and_eta(store, tmp_path, run_cli):
    rc, out, err = run_cli("pretrain", "--config", TINY, f"--data.store={store}",
                           f"--train.out_dir={tmp_path / 'run'}", "--train.max_steps=500",
                           "--dry-run")  # fmt: skip
    assert rc == 0, err
    line = next(x for x in out.splitlines() if x.startswith("step time"))
    assert "measured on a second step" in line and "500 steps to train.max_steps=500: ETA" in line
    assert not (tmp_path / "run" / "checkpoints").exists()
    cpu = load_config(RunConfig, REPO / "configs" / "pretrain" / "cpu.toml")  # the CPU config
    assert sum(p.numel() for p in GLM(cpu.model).parameters()) < 3_000_000
    assert "GPU" in (REPO / "configs" / "pretrain" / "glm-small.toml").read_text().splitlines()[0]


def test_fill_accepts_a_run_folder(store, tmp_path, run_cli):
    run = tmp_path / "run"
    rc, _, err = run_cli("pretrain", "--config", TINY, f"--data.store={store}",
                         f"--train.out_dir={run}", "--train.max_steps=2", "--train.save_every=1",
                         "--log.progress=false")  # fmt: skip
    assert rc == 0, err
    newest = ck.list_checkpoints(run)[0]
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # damaged in place: the run's newest *good* checkpoint is used
    (newest / "model.safetensors").write_bytes(bytes(data))
    rc, out, err = run_cli("fill", "--model", run, "--decoding.max_new_tokens=3",
                           "The cat [MASK] on the mat.")  # fmt: skip
    assert rc == 0, err
    assert "using its newest checkpoint step-00000001" in err  # (cli.main logs to stderr)
    assert out.strip().startswith("The cat") and out.strip().endswith("on the mat.")


def test_fill_with_another_tokenizer_of_the_same_size(model_dir, tmp_path, run_cli):
    other = train_tokenizer(["Completely different words: zebra, quartz, fjord."] * 50,
                            vocab_size=300)  # fmt: skip
    assert other.padded_vocab_size == load_tokenizer(model_dir).padded_vocab_size
    other.save(tmp_path / "other")
    rc, _, err = run_cli(
        "fill", "--model", model_dir, "--tokenizer", tmp_path / "other", "a [MASK]"
    )
    line = error_line(err)
    assert rc == 2 and "it is not the tokenizer saved with the model (fingerprints" in line, line


def test_existing_outputs_need_overwrite_and_the_bar_has_a_total(model_dir, tmp_path, run_cli):
    rc, _, err = run_cli("convert", "--from", model_dir, "--to", tmp_path / "conv")
    assert rc == 0, err
    rc, _, err = run_cli("convert", "--from", model_dir, "--to", tmp_path / "conv")
    assert rc == 2 and "conv already exists; pass --overwrite" in error_line(err)
    assert run_cli("convert", "--from", model_dir, "--to", tmp_path / "conv", "--overwrite")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv"]  # no temporary folder left

    data = write_jsonl(tmp_path / "cb.jsonl", [CB_ROW] * 4)
    args = ("finetune", "--task", "cb", "--train", data, "--valid", data, "--model", model_dir,
            "--out", tmp_path / "ft", "--finetune.epochs=2", "--finetune.batch_size=2")  # fmt: skip
    rc, _, err = run_cli(*args)
    assert rc == 0, err
    assert "finetune cb: 4/4 step (100%)" in err  # total known: 2 epochs x 2 steps
    rc, _, err = run_cli(*args)
    assert rc == 2 and "ft already exists; pass --overwrite" in error_line(err)
    rc, _, err = run_cli(*args, "--overwrite")
    assert rc == 0, err
    assert len((tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()) == 2  # this run's


def test_inspect_explains_the_length(store, run_cli):
    rc, out, err = run_cli("inspect", store, "--index", "0", "--seq-len", "64")
    assert rc == 0, err
    head, why = out.splitlines()[:2]
    length = int(head.split("length ")[1].split(",")[0])
    spans = int(why.split(" x ")[1].split(" span")[0])
    n = int(why.split(" = ")[1].split(" sample")[0])
    assert why.startswith(f"length {length} = ") and length == n + 2 * spans and n <= 64


def test_option_audit(store, model_dir, tmp_path, run_cli):
    data = write_jsonl(tmp_path / "cb.jsonl", [CB_ROW] * 2)
    (tmp_path / "latin1.jsonl").write_bytes(
        b'{"text": "fine words here"}\n{"text": "caf\xe9 ok"}\n'
    )
    (tmp_path / "p.txt").write_text("a [MASK] b\n")
    m = ("--model", model_dir)
    cases = [  # (argv, what the one error line says)
        (("evaluate", "--task", "ppl", "--data", data, *m, "--stride", "0"), "must be >= 1"),
        (("evaluate", "--task", "cb", "--data", data, *m, "--batch-size", "0"), "must be >= 1"),
        (("evaluate", "--task", "cb", "--data", data, *m, "--length-penalty", "nan"), "must be"),
        (("evaluate", "--task", "cb", "--data", data, *m, "--stride", "8"),
         "--stride applies to --task ppl only"),
        (("evaluate", "--task", "cb", "--data", data, *m, "--decoding.num_beams=2"),
         "--decoding.* applies to --task seq2seq only"),
        (("evaluate", "--task", "lambada", "--data", tmp_path / "latin1.jsonl", *m),
         f"{tmp_path / 'latin1.jsonl'}:2: not UTF-8 text"),
        (("finetune", "--task", "cb", "--train", data, "--valid", data, *m, "--out",
          tmp_path / "ft", "--finetune.max_target_len=20"), "finetune.max_target_len applies to"),
        (("finetune", "--task", "cb", "--train", data, "--valid", data, *m, "--limit", "0"),
         "must be >= 1"),
        (("prepare", "--input", tmp_path / "p.txt", "--out", tmp_path / "s", "--tokenizer",
          store / "tokenizer", "--vocab-size", "500"), "--vocab-size applies with"),
        (("prepare", "--input", tmp_path / "p.txt", "--out", tmp_path / "s", "--tokenizer",
          store / "tokenizer", "--text-field", "body"), "--text-field applies to .jsonl"),
        (("inspect", store, "--index", "-1"), "must be >= 0"),
        (("inspect", store, "--tokenizer", store / "tokenizer"), "--tokenizer applies with --text"),
        (("fill", *m, "--file", tmp_path / "p.txt", "x [MASK]"), "not both"),
        (("demo", "--minutes", "0"), "must be >= 0.01"),
        (("lm-eval", *m, "--tasks", "x", "--limit", "0"), "--limit must be > 0"),
        (("lm-eval", *m, "--tasks", "x", "--num-fewshot", "-1"), "--num-fewshot must be >= 0"),
        (("serve", *m, "--max-batch", "0"), "--max-batch must be"),
    ]  # fmt: skip
    for argv, want in cases:
        rc, _, err = run_cli(*argv)
        assert rc == 2, (argv, err)
        assert want in error_line(err), (argv, err)
    assert not (tmp_path / "ft").exists() and not (tmp_path / "s").exists()
