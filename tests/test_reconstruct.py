"""The reconstruction tool end to end: an official-format file and one of our model directories,
a PNG and a short mp4 made here; the pictures' sizes, grey masked patches, and visible patches
equal to the input."""
import fractions

import av
import numpy as np
import pytest
from PIL import Image

from omnimae_jax import convert, reconstruct, visualize
from test_convert import official_entries, official_state
from test_convert_torchfile import save_torch_zip

SIZE, FRAMES, PATCH = 64, 4, 16  # tiny model: 4 x 4 patches per frame, 2 temporal slices
GAP = visualize.GAP


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


def test_image_from_an_official_file(tmp_path, checkpoints, capsys):
  source, _ = checkpoints
  picture = smooth_picture(SIZE, SIZE, seed=0)
  Image.fromarray(picture).save(tmp_path / "cat.png")
  out = tmp_path / "recon" / "cat"
  assert reconstruct.main(["--checkpoint", str(source), "--img_size", str(SIZE), "--input",
                           str(tmp_path / "cat.png"), "--mask_ratio", "0.5", "--out",
                           str(out)]) == 0
  assert f"wrote {out}.png" in capsys.readouterr().out
  panels = np.asarray(Image.open(f"{out}.png"))
  assert panels.shape == (SIZE, 3 * SIZE + 2 * GAP, 3)
  original, masked, recon = (panels[:, i * (SIZE + GAP):i * (SIZE + GAP) + SIZE]
                             for i in range(3))
  assert np.abs(original.astype(int) - picture).max() <= 1  # the input, up to uint8 rounding
  is_masked = grey_patches(masked)
  assert is_masked.sum() == 8  # int(0.5 * 16)
  np.testing.assert_array_equal(patches_of(masked)[~is_masked], patches_of(original)[~is_masked])
  np.testing.assert_array_equal(patches_of(recon)[~is_masked], patches_of(original)[~is_masked])
  assert not np.array_equal(patches_of(recon)[is_masked], patches_of(original)[is_masked])


def test_larger_jpeg_is_resized_and_centre_cropped(tmp_path, checkpoints):
  _, model_dir = checkpoints
  Image.fromarray(smooth_picture(90, 150, seed=1)).save(tmp_path / "wide.jpg", quality=95)
  assert reconstruct.main(["--checkpoint", str(model_dir), "--input", str(tmp_path / "wide.jpg"),
                           "--mask_kind", "causal", "--out", str(tmp_path)]) == 0
  panels = np.asarray(Image.open(tmp_path / "wide.png"))  # OUT is a folder: <folder>/<stem>
  assert panels.shape == (SIZE, 3 * SIZE + 2 * GAP, 3)
  masked = panels[:, SIZE + GAP:2 * SIZE + GAP]
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
  assert animation.n_frames == FRAMES and animation.size == (3 * SIZE + 2 * GAP, SIZE)
  strip = np.asarray(Image.open(f"{out}_strip.png"))
  assert strip.shape == (3 * SIZE + 2 * GAP, FRAMES * SIZE + (FRAMES - 1) * GAP, 3)
  rows = [strip[r * (SIZE + GAP):r * (SIZE + GAP) + SIZE] for r in range(3)]
  frames = [[row[:, t * (SIZE + GAP):t * (SIZE + GAP) + SIZE] for t in range(FRAMES)]
            for row in rows]
  masked_tokens = []
  for t in range(FRAMES):
    original, masked, recon = frames[0][t], frames[1][t], frames[2][t]
    is_masked = grey_patches(masked)
    if t % 2:  # a token spans 2 frames: both frames of a temporal slice mask the same patches
      np.testing.assert_array_equal(is_masked, masked_tokens[-1])
    else:
      masked_tokens.append(is_masked)
    np.testing.assert_array_equal(patches_of(recon)[~is_masked], patches_of(original)[~is_masked])
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
    assert reconstruct.main(args + ["--out", str(tmp_path / "o")]) == 1
    assert message in capsys.readouterr().err
