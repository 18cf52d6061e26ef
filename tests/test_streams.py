"""Streamed tfds input pipelines (`ubnas_tf.data.streams`, `ubnas_tf.data.inputs`) on
`tfds.testing.mock_data`: shapes, preprocessing, the search split, and resume exactness."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tool_runs import REPO

from ubnas_tf import data
from ubnas_tf.data import inputs, streams, views
from ubnas_tf.experiments.search_throughput import PRESETS

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("dill", reason="tfds.testing.mock_data needs the `dill` package")


def _batches(ds):
    return [tf.nest.map_structure(lambda t: t.numpy(), element) for element in ds]


def _equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b),
                                                    strict=True))


def test_center_crop_keeps_the_middle_of_a_resized_image():
    # A 300x600 image whose left and right quarters are black, the middle white: the shorter
    # side goes to 256 (512 wide), and the central 224 columns are all white.
    image = np.zeros((300, 600, 3), np.uint8)
    image[:, 150:450] = 255
    out = views.center_crop(tf.constant(image), 224).numpy()
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert out.min() == 255


def test_random_resized_crop_is_seeded_and_sized():
    image = tf.random.stateless_uniform([50, 80, 3], [1, 2], 0, 255)
    a = streams.random_resized_crop(image, tf.constant([3, 4], tf.int64), 32)
    b = streams.random_resized_crop(image, tf.constant([3, 4], tf.int64), 32)
    c = streams.random_resized_crop(image, tf.constant([3, 5], tf.int64), 32)
    assert a.shape == (32, 32, 3)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), c.numpy())


def test_streams_data_follows_the_flag_and_the_registry():
    assert inputs.streams_data("imagenet2012", "auto")
    assert not inputs.streams_data("cifar10", "auto")
    assert inputs.streams_data("cifar10", "stream")
    assert not inputs.streams_data("imagenet2012", "memory")
    with pytest.raises(ValueError, match="input_pipeline"):
        inputs.streams_data("cifar10", "disk")


def test_streamed_imagenet_search_resumes_exactly_mid_run():
    with tfds.testing.mock_data(num_examples=24):
        search = inputs.search_inputs("imagenet2012", None, None, None, 4, seed=3, epochs=3,
                                      augment=True)
        assert search.streamed and search.steps_per_epoch == search.train_examples // 4
        full = _batches(search.dataset(0, 0))
        assert len(full) == 3 * search.steps_per_epoch
        (x_t, y_t), (x_v, y_v) = full[0]
        assert x_t.shape == (4, 224, 224, 3) and x_t.dtype == np.float32
        assert y_t.dtype == np.int32 and 0 <= y_t.min() and y_t.max() < 1000
        # Each epoch reshuffles and re-augments.
        assert not _equal(full[0], full[search.steps_per_epoch])
        # Resuming 2 steps into epoch 2 yields the rest of the uninterrupted sequence.
        start = search.steps_per_epoch + 2
        assert all(_equal(a, b) for a, b in zip(_batches(search.dataset(1, 2)), full[start:],
                                                strict=True))
        again = _batches(search.dataset(0, 0))
        assert _equal(again[0], full[0])


def test_streamed_cifar_training_resumes_and_evaluates_in_order():
    with tfds.testing.mock_data(num_examples=20):
        train = inputs.train_inputs("cifar10", None, 20, 5, 4, 0, "stream")
        assert train.streamed and (train.validation_examples, train.train_examples) == (2, 18)
        full = _batches(train.train(1, 2, True, 4, 0, 0))
        assert len(full) == 2 * (train.train_examples // 4)
        assert full[0][0].shape == (4, 32, 32, 3)
        resumed = _batches(train.train(1, 2, True, 4, 1, 1))
        assert all(_equal(a, b) for a, b in zip(resumed, full[len(full) - len(resumed):],
                                                strict=True))
        # Evaluation: standardised, stored order, last batch kept.
        test = _batches(train.test)
        assert sum(len(y) for _, y in test) == train.test_examples
        info = data.get_info("cifar10")
        x_raw, _ = data.load_arrays("cifar10", "test")
        np.testing.assert_allclose(test[0][0], data.normalize(x_raw, info).numpy()[:len(test[0][0])],
                                   atol=1e-6)


def test_streamed_imagenet_evaluation_is_the_centre_crop_of_each_record_in_order():
    info = data.get_info("imagenet2012")
    with tfds.testing.mock_data(num_examples=6):
        source = streams.stream_source("imagenet2012", "test")
        images, labels = _batches(streams.streamed_eval_dataset(source, info, 8))[0]
        records = list(streams._read(source, None))
    assert images.shape == (6, 224, 224, 3)
    for image, label, (encoded, expected_label) in zip(images, labels, records, strict=True):
        crop = views.center_crop(streams.decode(encoded, info), 224)
        np.testing.assert_allclose(image, data.normalize(crop[tf.newaxis], info)[0], atol=1e-6)
        assert label == expected_label


def test_a_smaller_heldout_half_cycles_and_resumes_in_memory():
    info = data.get_info("cifar10")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 40).astype(np.int32)
    (x_t, y_t), (x_v, y_v) = data.split_search(x, y, seed=1, heldout=8)
    assert len(x_t) == 32 and len(x_v) == 8
    assert len({*map(bytes, x_t), *map(bytes, x_v)}) == 40  # disjoint
    full = _batches(data.search_dataset(x_t, y_t, x_v, y_v, info, 4, 0).take(24))
    heldout_labels = [v[1].tolist() for _, v in full]
    assert sorted(sum(heldout_labels[:2], [])) == sorted(y_v.tolist())  # one pass: 2 batches
    resumed = _batches(data.search_dataset(x_t, y_t, x_v, y_v, info, 4, 0, start_epoch=1,
                                           start_step=3).take(24 - 11))
    assert all(_equal(a, b) for a, b in zip(resumed, full[11:], strict=True))
    with pytest.raises(ValueError, match="heldout"):
        data.split_search(x, y, seed=1, heldout=40)


def test_the_throughput_presets_are_the_shipped_search_flagfiles():
    for preset, flagfile, dataset in (("cifar10", "cifar10.flags", "cifar10"),
                                      ("imagenet_proxy", "imagenet_search.flags", "imagenet2012")):
        values = dict(line.lstrip("-").split("=", 1)
                      for line in (REPO / "flags" / flagfile).read_text().splitlines()
                      if line.startswith("--") and "=" in line)
        info = data.get_info(dataset)
        expected = dict(channels=int(values["init_channels"]), cells=int(values["layers"]),
                        batch=int(values["batch_size"]), image=info.image_shape[0],
                        image_channels=info.image_shape[2],
                        stem_strides=int(values.get("stem_strides", 1)),
                        num_classes=info.num_classes, k_normal=int(values["k_normal"]),
                        k_reduce=int(values["k_reduce"]))
        if preset == "cifar10":  # measured at the PyTorch EBNAS code's batch of 64
            expected["batch"] = 64
        assert PRESETS[preset] == expected, preset
