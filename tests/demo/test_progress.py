"""The live lines `make demo` shows while training and evaluating."""

from __future__ import annotations

import sys

from mooer.demo.run import progress_status, run, training_status


def test_training_line_has_step_loss_val_error_elapsed_and_eta(tmp_path):
    log, run_dir = tmp_path / "train.log", tmp_path / "run"
    status = training_status(log, run_dir, 2800)
    assert status(5) == "training: starting (0:05 elapsed)"
    log.write_text("[x][mooer.training.module][INFO] - Training Epoch: 5/1000, step 700 lr 1e-3 "
                   "completed (loss: 0.42, acc: 0.91)\n")
    (run_dir / "csv" / "version_0").mkdir(parents=True)
    (run_dir / "csv" / "version_0" / "metrics.csv").write_text(
        "epoch,step,val/error_rate\n4,599,12.5\n")
    assert status(200) == ("training: step 700 of 2800, loss 0.42, val error 12.5 %, 3:20 elapsed,"
                           " ETA 10:00")


def test_evaluation_line_shows_the_last_bar(tmp_path):
    log = tmp_path / "evaluate.log"
    log.write_text("starting\ndemo_test:  10%|#   | 4/40 [00:01<00:09, 3.9utt/s]\r"
                   "demo_test:  20%|##  | 8/40 [00:02<00:08, 4.0utt/s]")
    assert progress_status(log, "evaluating")(2) == (
        "evaluating: demo_test:  20%|##  | 8/40 [00:02<00:08, 4.0utt/s] (0:02 elapsed)")


def test_run_prints_the_live_line_while_the_step_runs(tmp_path, capsys):
    seen = []

    def status(elapsed: float) -> str:
        seen.append(elapsed)
        return "working"

    run([sys.executable, "-c", "import time; time.sleep(0.5)"], tmp_path / "step.log", status,
        every=0.1)
    assert len(seen) >= 3  # polled while the step ran
    assert "  working" in capsys.readouterr().out  # not a terminal: printed once, then each 60 s
