"""TensorBoard: event files read back with tensorboard's EventAccumulator."""

from __future__ import annotations

import json

import pytest
import torch

from clkernel_loggers import TensorBoardLogger


def _accumulator(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_event_files_hold_scalars_images_config_and_hparams(tiny, tmp_path):
    config = {"benchmark": "split-mnist", "model": {"name": "simple-mlp", "hidden_size": 64}, "seed": 3,
              "plugins": ["replay"]}
    (tmp_path / "tensorboard").mkdir()
    earlier = tmp_path / "tensorboard" / "events.out.tfevents.0.earlier-run"
    earlier.write_bytes(b"")  # an earlier run's file in the same folder: not this logger's
    logger = TensorBoardLogger(tmp_path, config=config)
    run = tiny.make_run(logger)
    files = tiny.run_all(run)
    assert len(files) == 1 and files[0].parent == tmp_path / "tensorboard" and files[0] != earlier
    earlier.unlink()

    acc = _accumulator(tmp_path / "tensorboard")
    tags = acc.Tags()
    expected: dict[str, list[tuple[int, float]]] = {}
    for step, name, value in run.metrics.logged:
        if isinstance(value, float) or (isinstance(value, torch.Tensor) and value.numel() == 1):
            expected.setdefault(name, []).append((step, float(value)))
    assert "loss_running_epoch/train/train" in expected
    assert set(tags["scalars"]) == set(expected)
    for name, points in expected.items():
        events = acc.Scalars(name)
        assert [e.step for e in events] == [s for s, _ in points]
        assert [e.value for e in events] == pytest.approx([v for _, v in points], rel=1e-6)

    assert "confusion_matrix_stream/eval/test" in tags["images"]
    assert "accuracy_matrix_stream/eval/test" in tags["images"]
    image = acc.Images("confusion_matrix_stream/eval/test")[-1]
    assert (image.width, image.height) == (640, 480)

    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(config_text.strip("`\n")) == config

    hparams = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    params = start.session_start_info.hparams
    assert params["model.hidden_size"].number_value == 64 and params["benchmark"].string_value == "split-mnist"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"])
    metric_tags = {m.name.tag for m in experiment.experiment.metric_infos}
    assert metric_tags == {"acc_stream/eval/test"}


def test_values_after_after_run_open_a_new_writer(tiny, tmp_path):
    logger = TensorBoardLogger(tmp_path, subdir="tb")
    run = tiny.make_run(logger, n_exps=1)
    assert len(tiny.run_all(run)) == 1
    run.strategy.eval(run.test)  # after strategy.close(): a new event file
    logger.after_run(run.strategy.state)
    files = logger.output_files(run.strategy.state)
    assert len(files) == 2 and all(p.stat().st_size > 0 for p in files)
    acc = _accumulator(tmp_path / "tb")
    assert "acc_stream/eval/test" in acc.Tags()["scalars"]
