"""The reconstruction tool end to end: an official-format file, one of our model directories and
a training workdir, a PNG and a short mp4 made here; the pictures' layouts, grey masked patches,
visible patches equal to the input, a prediction panel that shows the model and not the input,
and the loss scored for the target kind the run was trained on. Also the pictures a short
training run draws (the last step included)."""
import fractions
import io
import json
import os
import re

import av
import jax
import numpy as np
import pytest
from PIL import Image

from omnimae_jax import convert, pretrained, reconstruct, visualize
from omnimae_jax.models import mae
from omnimae_jax.train import loop
from omnimae_jax.train import metrics as metrics_lib
from test_convert import official_entries, official_state
from test_convert_torchfile import save_torch_zip
from test_train import demo_data_dir, small_config  # noqa: F401  (a fixture)

SIZE, FRAMES, PATCH = 64, 4, 16  # tiny model: 4 x 4 patches per frame, 2 temporal slices
FACTOR = 4  # panels are upscaled (nearest) from 64 to 256 px
PANEL = (SIZE * FACTOR, SIZE * FACTOR)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """(an official-format tiny pretrain file, the model directory converted from it)."""
  root = tmp_path_factory.mktemp("checkpoints")
  source = save_torch_zip(root / "tiny_pretrain.torch",
                          official_state(official_entries("tiny", 32)))  # 2 x 4 x 4 positions
  model_dir = root / "model"
  assert convert.main(["--input", str(source), "--output", str(model_dir),
                       "--img_size", str(SIZE)]) == 0
  return source, model_dir


def smooth_picture(height, width, seed):
  """A gradient with noise: not flat, so no patch of it can be mistaken for a grey one."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack([x * 200 / width, y * 200 / height, (x + y) * 100 / (height + width)], -1)
  return np.clip(base + rng.integers(0, 50, (height, width, 3)), 0, 255).astype(np.uint8)


def patches_of(picture):
  """uint8 [H, W, 3] -> [H/16 * W/16, 16, 16, 3] in raster order."""
  rows, cols = picture.shape[0] // PATCH, picture.shape[1] // PATCH
  return picture.reshape(rows, PATCH, cols, PATCH, 3).swapaxes(1, 2).reshape(-1, PATCH, PATCH, 3)


def grey_patches(picture):
  return np.all(patches_of(picture) == 128, axis=(1, 2, 3))


def panel(picture, column, row=0):
  """Panel `column` of sample `row` of a picture, back at the model's size (every FACTOR-th
  pixel of the upscaled panel)."""
  return picture[visualize.panel_box(row, column, PANEL)][::FACTOR, ::FACTOR]


def grey_correlation(a, b):
  a, b = np.asarray(a, float).mean(-1).ravel(), np.asarray(b, float).mean(-1).ravel()
  return 0.0 if a.std() == 0 or b.std() == 0 else float(np.corrcoef(a, b)[0, 1])


def printed_loss(text):
  return float(re.search(r"masked-patch loss (\d+\.\d+)", text).group(1))


def test_image_from_an_official_file(tmp_path, checkpoints, capsys):
  """An official file does not say what its targets are: the paper's per-patch normalised ones
  are assumed, with a note. Its weights here are random (an untrained model): the prediction
  panel must not show the input, while the MAE papers' view (the prediction un-normalised with
  the true patch mean and std, the only view before) still does, under a label that says so."""
  source, _ = checkpoints
  picture = smooth_picture(SIZE, SIZE, seed=0)
  Image.fromarray(picture).save(tmp_path / "cat.png")
  out = tmp_path / "recon" / "cat"
  assert reconstruct.main(["--checkpoint", str(source), "--img_size", str(SIZE), "--input",
                           str(tmp_path / "cat.png"), "--mask_ratio", "0.5", "--out",
                           str(out)]) == 0
  printed = capsys.readouterr().out
  assert f"wrote {out}.png" in printed and "note:" in printed and "--no-norm_pix" in printed
  assert "per-patch normalised targets (loss.norm_pix=True assumed)" in printed
  drawn = np.asarray(Image.open(f"{out}.png"))
  assert drawn.shape == visualize.picture_shape(1, 5, PANEL)
  masked, prediction, _, true_stats, original = (panel(drawn, i) for i in range(5))
  assert np.abs(original.astype(int) - picture).max() <= 1  # the input, up to uint8 rounding
  is_masked = grey_patches(masked)
  assert is_masked.sum() == 8  # int(0.5 * 16)
  np.testing.assert_array_equal(patches_of(masked)[~is_masked], patches_of(original)[~is_masked])
  np.testing.assert_array_equal(patches_of(true_stats)[~is_masked],
                                patches_of(original)[~is_masked])
  assert np.all(patches_of(prediction)[~is_masked] == 0)  # not scored: black
  hidden = patches_of(original)[is_masked]
  assert abs(grey_correlation(patches_of(prediction)[is_masked], hidden)) < 0.3
  assert grey_correlation(patches_of(true_stats)[is_masked], hidden) > 0.8


def test_larger_jpeg_is_resized_and_centre_cropped(tmp_path, checkpoints):
  _, model_dir = checkpoints
  Image.fromarray(smooth_picture(90, 150, seed=1)).save(tmp_path / "wide.jpg", quality=95)
  assert reconstruct.main(["--checkpoint", str(model_dir), "--input", str(tmp_path / "wide.jpg"),
                           "--mask_kind", "causal", "--out", str(tmp_path)]) == 0
  drawn = np.asarray(Image.open(tmp_path / "wide.png"))  # OUT is a folder: <folder>/<stem>
  assert drawn.shape == visualize.picture_shape(1, 5, PANEL)
  masked = panel(drawn, 0)
  # causal at the default image ratio 0.9: the last int(0.9 * 16) = 14 tokens are masked
  np.testing.assert_array_equal(grey_patches(masked), np.arange(16) >= 2)


def write_mp4(path, frames, fps=8):
  with av.open(str(path), mode="w") as container:
    stream = container.add_stream("libx264", rate=fractions.Fraction(fps))
    stream.height, stream.width = frames.shape[1], frames.shape[2]
    stream.pix_fmt = "yuv420p"
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode(None))


def test_video_from_a_model_directory(tmp_path, checkpoints, capsys):
  _, model_dir = checkpoints
  clip = np.stack([np.roll(smooth_picture(SIZE, 80, seed=2), 3 * t, axis=1) for t in range(12)])
  write_mp4(tmp_path / "clip.mp4", clip)
  out = tmp_path / "clip_recon"
  assert reconstruct.main(["--checkpoint", str(model_dir), "--input", str(tmp_path / "clip.mp4"),
                           "--mask_ratio", "0.5", "--out", str(out), "--seed", "3"]) == 0
  printed = capsys.readouterr().out
  assert "16/32 tokens" in printed and f"wrote {out}.gif" in printed
  animation = Image.open(f"{out}.gif")
  height, width, _ = visualize.picture_shape(1, 5, PANEL)
  assert animation.n_frames == FRAMES and animation.size == (width, height)
  strip = np.asarray(Image.open(f"{out}_strip.png"))
  # Rows of the strip: the panels; columns: the frames.
  frames = [[strip[visualize.strip_box(row, t, PANEL)][::FACTOR, ::FACTOR] for t in range(FRAMES)]
            for row in range(5)]
  masked_tokens = []
  for t in range(FRAMES):
    masked, pasted, original = frames[0][t], frames[3][t], frames[4][t]
    is_masked = grey_patches(masked)
    if t % 2:  # a token spans 2 frames: both frames of a temporal slice mask the same patches
      np.testing.assert_array_equal(is_masked, masked_tokens[-1])
    else:
      masked_tokens.append(is_masked)
    np.testing.assert_array_equal(patches_of(pasted)[~is_masked], patches_of(original)[~is_masked])
  assert sum(int(m.sum()) for m in masked_tokens) == 16


def test_bad_inputs_are_clear_errors(tmp_path, checkpoints, capsys):
  source, model_dir = checkpoints
  classifier = save_torch_zip(tmp_path / "ft.torch", official_state(
      official_entries("tiny", 32, kind="classifier", num_classes=5)))
  (tmp_path / "notes.txt").write_text("hi")
  (tmp_path / "broken.mp4").write_bytes(b"not a video")
  cases = [
      (["--checkpoint", str(classifier), "--img_size", "64", "--input", "x.png"],
       "has no decoder"),
      (["--checkpoint", str(model_dir), "--input", str(tmp_path / "notes.txt")],
       "unknown suffix '.txt'"),
      (["--checkpoint", str(model_dir), "--input", str(tmp_path / "broken.mp4")],
       "cannot decode the video"),
      (["--checkpoint", str(model_dir), "--input", str(tmp_path / "absent.png")], "no such file"),
      (["--checkpoint", str(tmp_path), "--input", "x.png"], "neither a model directory"),
      (["--checkpoint", str(tmp_path / "absent.torch"), "--input", "x.png"],
       "absent.torch: no such file or directory"),
      (["--checkpoint", str(tmp_path / "notes.txt"), "--input", "x.png"],
       "not a PyTorch checkpoint"),
  ]
  for args, message in cases:
    assert reconstruct.main(args + ["--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# A short training run on plain-pixel targets (the demo's loss.norm_pix=False)


@pytest.fixture(scope="module")
def plain_pixel_run(demo_data_dir, tmp_path_factory):
  """3 steps on one device, pictures every 2 steps: at step 2, and at the last step (3)."""
  workdir = tmp_path_factory.mktemp("plain_pixels")
  config = small_config(demo_data_dir, total_steps=3, sharding="dp", recon_every_steps=2, **{
      "loss.norm_pix": False, "model.num_heads": 4, "model.decoder_heads": 4, "model.depth": 1,
      "model.decoder_depth": 1})
  loop.train(config, str(workdir), stream=io.StringIO(), devices=jax.devices()[:1])
  return workdir


def test_a_workdir_is_scored_for_the_targets_it_was_trained_on(plain_pixel_run, tmp_path,
                                                                 capsys):
  """The workdir's config.json says plain pixels: the reported loss is the plain-pixel loss of
  these predictions (it used to be the per-patch normalised one, ~10x larger), and the
  picture has the plain-pixel panels. --norm_pix still overrides."""
  Image.fromarray(smooth_picture(SIZE, SIZE, seed=4)).save(tmp_path / "shape.png")
  args = ["--checkpoint", str(plain_pixel_run), "--input", str(tmp_path / "shape.png"),
          "--mask_ratio", "0.75", "--out", str(tmp_path / "recon")]
  assert reconstruct.main(args) == 0
  printed = capsys.readouterr().out
  assert "note:" not in printed
  assert f"plain-pixel targets (loss.norm_pix=False from {plain_pixel_run}" in printed
  drawn = np.asarray(Image.open(tmp_path / "recon.png"))
  assert drawn.shape == visualize.picture_shape(1, 4, PANEL)
  model, variables = pretrained.load(str(plain_pixel_run), expect="pretrain")
  frames = reconstruct.read_input(str(tmp_path / "shape.png"), model.config)
  pixels, mask, pred = reconstruct.predict(model, variables, frames, "random", 0.75, 0)
  cfg = model.config
  losses = {norm_pix: float(mae.reconstruction_loss(pred, pixels, mask, cfg.patch_size, norm_pix,
                                                    cfg.pad_type)) for norm_pix in (False, True)}
  assert printed_loss(printed) == pytest.approx(losses[False], abs=1e-4)
  assert abs(losses[True] - losses[False]) > 0.1  # so the wrong target kind could not pass
  assert reconstruct.main(args + ["--norm_pix"]) == 0
  printed = capsys.readouterr().out
  assert "loss.norm_pix=True from --norm_pix" in printed
  assert printed_loss(printed) == pytest.approx(losses[True], abs=1e-4)


def tensorboard_pictures(workdir):
  """{(step, tag): encoded bytes} of the image summaries in a workdir's event files."""
  from tensorboard.compat.proto import event_pb2  # noqa: PLC0415

  tf = metrics_lib._tf_module()
  found = {}
  for path in (workdir / "tensorboard").iterdir():
    for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "images":
          found[(event.step, value.tag)] = value.tensor.string_val[2]
  return found


def test_training_draws_labelled_pictures_up_to_its_last_step(plain_pixel_run):
  with open(plain_pixel_run / "metrics.jsonl") as f:
    modality_of_step = {r["step"]: r["modality"] for r in map(json.loads, f) if "eval" not in r}
  names = set(os.listdir(plain_pixel_run / "reconstructions"))
  pictures = tensorboard_pictures(plain_pixel_run)
  for step in (2, 3):  # 3 is no multiple of recon_every_steps: the last step's picture
    for modality in {m for s, m in modality_of_step.items() if s <= step}:
      suffix = ".png" if modality == "images" else ".gif"
      assert f"step{step:08d}_{modality}{suffix}" in names, sorted(names)
      drawn = Image.open(plain_pixel_run / "reconstructions" / f"step{step:08d}_{modality}{suffix}")
      assert drawn.size[0] == visualize.picture_shape(1, 4, PANEL)[1]  # 4 plain-pixel panels
      rows = (drawn.size[1] - visualize.LABEL_HEIGHT) / (PANEL[0] + visualize.GAP)
      assert rows in (1, 2, 3, 4)
      first = np.asarray(drawn.convert("RGB"))
      for column, label in enumerate(visualize.PIXEL_LABELS):  # the run's own target kind
        cell = first[:visualize.LABEL_HEIGHT, column * (PANEL[1] + visualize.GAP):][:, :PANEL[1]]
        if suffix == ".png":  # (a GIF's palette may move colours a little)
          np.testing.assert_array_equal(cell, visualize.label_tile(label, PANEL[1]))
      encoded = pictures[(step, f"reconstruction/{modality}")]
      frames = getattr(Image.open(io.BytesIO(encoded)), "n_frames", 1)
      assert frames == (1 if modality == "images" else 8)  # a video animates in TensorBoard
