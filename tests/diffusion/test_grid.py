import numpy as np
import pytest
from PIL import Image

from jaxmm.diffusion import grid


def test_grid_places_each_image_and_maps_range():
    imgs = np.stack([np.full((3, 4, 3), v, np.float32) for v in (-1.0, 0.0, 1.0)])
    g = grid.image_grid(imgs, nrow=2, pad=1, pad_value=7)
    assert g.shape == (2 * (3 + 1) + 1, 2 * (4 + 1) + 1, 3)
    assert (g[1:4, 1:5] == 0).all() and (g[1:4, 6:10] == 128).all() and (g[5:8, 1:5] == 255).all()
    assert (g[5:8, 6:10] == 7).all() and (g[0] == 7).all()  # empty slot and padding keep pad_value


def test_save_grid_writes_png_with_labels(tmp_path):
    imgs = np.zeros((4, 8, 8, 1), np.uint8)
    p = grid.save_grid(imgs, tmp_path / "a" / "g.png", labels=list("abcd"), scale=2)
    im = Image.open(p)
    assert im.size[0] == (2 * 10 + 2) * 2 and im.size[1] > (2 * 10 + 2) * 2
    assert not (tmp_path / "a" / "g.png.tmp").exists()


def test_bad_input_names_argument(tmp_path):
    with pytest.raises(ValueError, match="images"):
        grid.image_grid(np.zeros((2, 8, 8, 2)))
    with pytest.raises(ValueError, match="labels"):
        grid.save_grid(np.zeros((2, 8, 8, 3)), tmp_path / "x.png", labels=["a"])
