"""Case 2: a full disk while writing a checkpoint, a store, fine-tuning's best/ or a converted
model gives one line naming the path and "no space left on device"; temporary files are removed;
what was written before stays intact (a checkpoint still resumes)."""

from __future__ import annotations

import pytest

from blankfill.model import GLM
from blankfill.pretrained import load_pretrained, save_pretrained
from blankfill.safeio import DiskFullError
from blankfill.testing import SyntheticBatches, tiny_config
from blankfill.train import checkpoint as ck
from blankfill.train.loop import train

from .conftest import error_line, run_config


def test_checkpoint_disk_full_keeps_previous_and_resumes(small_disk):
    run = small_disk.path / "run"
    cfg = run_config(run, train={"max_steps": 4, "save_every": 2})

    class FillAfterFirstCheckpoint(SyntheticBatches):
        def __next__(self):
            if self.index == 3:  # step 2's checkpoint is written; the disk fills up now
                small_disk.fill()
            return super().__next__()

    with pytest.raises(DiskFullError) as e:
        train(cfg, GLM(cfg.model), FillAfterFirstCheckpoint(4))
    msg = str(e.value)
    assert "\n" not in msg and "step-00000004: no space left on device" in msg, msg
    assert "step-00000002 is intact" in msg and "--resume auto" in msg
    assert small_disk.temporaries() == []  # no .tmp-step-* left filling the disk
    small_disk.free_up()
    ck.read_trainer_json(ck.list_checkpoints(run)[0])  # sizes and sha256 verify
    result = train(cfg, GLM(cfg.model), SyntheticBatches(4), resume="auto")
    assert result.step == 4 and result.checkpoint.name == "step-00000004"


def test_prepare_disk_full_is_one_line(small_disk, corpus, run_cli):
    small_disk.fill(leave=4096)
    rc, _, err = run_cli("prepare", "--input", corpus, "--out", small_disk.path / "store",
                         "--train-tokenizer", "--vocab-size", "300", "--no-progress")  # fmt: skip
    line = error_line(err)
    assert rc == 2 and f"{small_disk.path / 'store'}: no space left on device" in line, line
    assert small_disk.temporaries() == [] and not (small_disk.path / "store").exists()


def test_model_folder_disk_full_keeps_previous(small_disk):
    """save_pretrained (fine-tuning's best/ and convert write model folders the same way)."""
    from blankfill.finetune.loop import save_finetuned

    def glm_state(m: GLM) -> dict:
        return {f"glm.{k}": v.detach().clone() for k, v in m.state_dict().items()}

    model = GLM(tiny_config())
    best = small_disk.path / "best"
    save_finetuned(glm_state(model), model.config, best, None, {"epoch": 1})
    before = {k: v.clone() for k, v in load_pretrained(best).state_dict().items()}
    small_disk.fill()
    with pytest.raises(DiskFullError, match=f"{best}: no space left on device .*; the previous"):
        other = GLM(tiny_config(hidden_size=64))
        save_finetuned(glm_state(other), other.config, best, None, {"epoch": 2})
    with pytest.raises(DiskFullError, match="model.safetensors: no space left on device"):
        save_pretrained(model, small_disk.path / "converted")
    assert small_disk.temporaries() == []
    small_disk.free_up()
    after = load_pretrained(best).state_dict()
    assert all((after[k] == v).all() for k, v in before.items())
