"""The one inference path: maps made where the model runs, bf16 within its stated tolerance."""

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from raymae import heatmap
from raymae.anomaly_map import COMBINATIONS, make_anomaly_map
from raymae.inference import BF16_SCORE_TOLERANCE, PRECISIONS, resolve_precision


def _bf16_works_here() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    except RuntimeError:
        return False


needs_bf16 = pytest.mark.skipif(not _bf16_works_here(), reason="no bf16 autocast on this CPU")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def test_set(trained_artifact, synthetic_dataset):
    from raymae import data

    return data.load_images(data.list_test(synthetic_dataset), trained_artifact.config.model.image_size)


def test_auto_precision_is_bf16_on_a_gpu_and_fp32_elsewhere():
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))
    from raymae import cli, scoring
    assert scoring.PRECISIONS == cli.PRECISIONS == PRECISIONS  # copies kept where torch must not load


def test_predictions_on_the_cpu_are_the_raw_maps_combined_whatever_the_batch_size(trained_artifact, test_set):
    predictor = trained_artifact.predictor("cpu")
    assert predictor.precision == "fp32"
    raw = predictor.raw_maps(test_set.images, 5)
    for combination in COMBINATIONS:
        cfg = dataclasses.replace(trained_artifact.config.anomaly_map, combination=combination)
        maps, scores = make_anomaly_map(raw.recon_error, raw.prob, cfg)
        for batch_size in (3, 64):
            pred = predictor.predict(test_set.images, batch_size, map_cfg=cfg)
            assert np.array_equal(pred.maps, maps.numpy()), (combination, batch_size)
            assert np.array_equal(pred.scores, scores.numpy()), (combination, batch_size)


def test_maps_made_batch_by_batch_as_on_a_gpu_agree_with_maps_made_at_once(trained_artifact, test_set):
    predictor = trained_artifact.predictor("cpu")
    at_once = predictor.predict(test_set.images, 5, map_size=16)
    for batch_size in (3, 64):  # the path a GPU takes, run here on the CPU
        by_batch = predictor._predict_by_batch(test_set.images, batch_size, predictor.cfg.anomaly_map, 16)
        np.testing.assert_allclose(by_batch.maps, at_once.maps, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(by_batch.scores, at_once.scores, rtol=1e-5, atol=1e-7)


def test_maps_come_back_downsampled_as_the_heatmaps_are(trained_artifact, test_set):
    predictor = trained_artifact.predictor("cpu")
    full = predictor.predict(test_set.images, 8)
    small = predictor.predict(test_set.images, 8, map_size=16)
    assert small.maps.shape == (len(test_set.images), 16, 16)
    assert np.array_equal(small.maps, heatmap.downsample(full.maps, 16))
    assert np.array_equal(small.scores, full.scores)  # scored on the full map
    assert predictor.predict(test_set.images, 8, map_size=512).maps.shape[1:] == full.maps.shape[1:]  # never up


@needs_bf16
def test_bf16_scores_stay_within_the_stated_tolerance_of_fp32(trained_artifact, test_set):
    fp32 = trained_artifact.predictor("cpu", "fp32").predict(test_set.images, 16)
    bf16 = trained_artifact.predictor("cpu", "bf16").predict(test_set.images, 16)
    spread = fp32.scores.max() - fp32.scores.min()
    change = np.abs(bf16.scores - fp32.scores).max() / spread
    assert 0 < change <= BF16_SCORE_TOLERANCE  # bf16 really ran, and moved scores this little
    assert np.abs(bf16.maps - fp32.maps).max() <= BF16_SCORE_TOLERANCE * fp32.maps.max()


@needs_bf16
def test_bf16_leaves_the_evaluation_metrics_unchanged_to_three_decimals(trained_artifact, synthetic_dataset,
                                                                       test_set):
    from raymae.evaluate import evaluate

    fp32, _, _ = evaluate(trained_artifact, synthetic_dataset, test=test_set, precision="fp32")
    bf16, _, _ = evaluate(trained_artifact, synthetic_dataset, test=test_set, precision="bf16")
    for name, value in fp32.metrics.items():
        assert abs(bf16.metrics[name] - value) < 5e-4, name


@needs_cuda
def test_on_a_gpu_the_predictor_agrees_with_the_cpu(trained_artifact, test_set):
    cpu = trained_artifact.predictor("cpu").predict(test_set.images, 8, map_size=16)
    for precision, tolerance in (("fp32", 1e-3), ("bf16", BF16_SCORE_TOLERANCE)):
        gpu = trained_artifact.predictor("cuda", precision)
        pred = gpu.predict(test_set.images, 8, map_size=16)  # pinned buffers, reused across batches
        spread = cpu.scores.max() - cpu.scores.min()
        assert np.abs(pred.scores - cpu.scores).max() <= tolerance * spread, precision
        on_device = torch.as_tensor(test_set.images, device="cuda")
        assert np.array_equal(gpu.predict(on_device, 8, map_size=16).scores, pred.scores)


def test_images_of_the_wrong_shape_or_type_are_refused(trained_artifact, test_set):
    predictor = trained_artifact.predictor("cpu")
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict(test_set.images.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict(torch.as_tensor(test_set.images[:, :32]))
    tensor = predictor.predict(torch.as_tensor(test_set.images), 8)  # a tensor of the right shape is fine
    assert np.array_equal(tensor.scores, predictor.predict(test_set.images, 8).scores)


# ------------------------------------------------------------------ JPEG decoding on the device
def _jpeg(width: int, height: int, seed: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 120 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 6, (height, width))
    pixels = np.clip(np.stack([base, base * 0.9, base * 1.1], -1), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _batch(datas):
    uris = [f"file:///night/{i}" for i in range(len(datas))]
    return {"image_uri": uris, "source_uri": uris, "data": datas, "error": [None] * len(datas)}


def test_jpegs_decoded_by_torchvision_match_pillow_within_a_grey_level_on_average():
    from raymae.jpeg import decode_on_device
    from raymae.scoring import decode_images

    png = io.BytesIO()
    Image.new("RGB", (90, 70), (10, 200, 30)).save(png, format="PNG")
    datas = [_jpeg(300, 200, 0), _jpeg(640, 480, 1, "L"), _jpeg(96, 96, 2), _jpeg(1000, 700, 3),
             png.getvalue(), _jpeg(300, 200, 4)[:2000], b"\xff\xd8\xffnot a jpeg at all"]
    pillow = decode_images(_batch(datas), 96)
    device = decode_on_device(_batch(datas), 96, "cpu")
    assert isinstance(device["image"], torch.Tensor) and device["image"].dtype == torch.uint8
    assert list(device["error"]) == list(pillow["error"])  # the same files fail, for the same reasons
    assert [bool(e) for e in device["error"]] == [False] * 5 + [True, True]
    assert np.array_equal(device["height"], pillow["height"]) and np.array_equal(device["width"], pillow["width"])
    diff = np.abs(device["image"].numpy().astype(int) - pillow["image"].astype(int))
    assert diff[:4].mean() < 1.0 and diff[:4].reshape(4, -1).mean(axis=1).max() < 3.0
    assert np.array_equal(device["image"][4].numpy(), pillow["image"][4])  # the PNG went through Pillow


def test_an_actor_decoding_jpegs_itself_scores_like_one_fed_by_decode_tasks(model_dir, trained_artifact):
    from raymae.scoring import ScoreImages

    datas = [_jpeg(200, 150, s) for s in range(6)] + [b"broken"]
    decode = {"image_size": trained_artifact.config.model.image_size}
    common = dict(model_uri=model_dir, model_id=trained_artifact.model_id, heatmap_size=16, batch_size=4)
    pillow = ScoreImages(**common, decode=decode)(_batch(datas))
    device = ScoreImages(**common, decode=decode, jpeg_on_device=True)(_batch(datas))
    assert list(device["error"]) == list(pillow["error"]) and device["error"][-1]
    assert device["heatmap"].shape == pillow["heatmap"].shape == (7, 16, 16)
    # the pixels differ by about a grey level (test above), the scores by little more than that
    np.testing.assert_allclose(device["score"][:-1], pillow["score"][:-1], rtol=0.03)
    assert np.isnan(device["score"][-1])
