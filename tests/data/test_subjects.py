"""Procedural subjects (jaxmm/data/subjects.py): closed-form depths, masks, views, determinism, bad input."""
import numpy as np
import pytest

from jaxmm.data import subjects as S

SPHERE = S.Subject((S.Part("sphere", (0.0, 0.0, 0.0), (1.0, 0, 0), "red", "blue"),))
BOX = S.Subject((S.Part("box", (0.0, 0.0, 0.0), (0.5, 0.7, 0.9), "green", "white", "checkered"),))
CYL = S.Subject((S.Part("cylinder", (0.0, 0.0, 0.0), (0.6, 0.8, 0), "green", "white", "striped"),))


@pytest.mark.parametrize("subject,az,el,expected", [
    (SPHERE, 0.0, 0.0, 4.0 - 1.0), (SPHERE, 123.0, 30.0, 4.0 - 1.0),   # sphere: D - r from any view
    (BOX, 0.0, 0.0, 4.0 - 0.9), (BOX, 90.0, 0.0, 4.0 - 0.5),           # box: D - half extent along the view axis
    (CYL, 0.0, 0.0, 4.0 - 0.6), (CYL, 0.0, 90.0, 4.0 - 0.8),           # cylinder side / top cap
])
def test_centre_pixel_depth_closed_form(subject, az, el, expected):
    # odd size: the centre pixel's ray is the camera axis, so the z-depth is distance - (extent along the axis)
    out = S.render(subject, S.View(azimuth=az, elevation=el, distance=4.0), size=31)
    assert out["depth"][15, 15] == pytest.approx(expected, abs=1e-5)


def test_sphere_silhouette_is_the_projected_disc():
    # pinhole camera at distance D: the sphere's silhouette is the cone of half-angle asin(r/D) around the axis
    size, fov, D, r = 41, 40.0, 4.0, 1.0
    out = S.render(SPHERE, S.View(distance=D, fov=fov), size=size)
    c = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(c, -c)
    s = np.tan(np.deg2rad(fov) / 2)
    angle = np.arctan(s * np.hypot(x, y))
    inside = angle < np.arcsin(r / D)
    border = np.abs(angle - np.arcsin(r / D)) < 0.01
    assert np.array_equal(out["mask"][~border], inside[~border])
    # depth of every hit pixel in float64: z-depth of the near intersection along the ray (1, s x, s y) scaled
    d = np.stack([s * x, s * y, -np.ones_like(x)], -1)  # camera looking down -z from (0, 0, D)
    o = np.array([0, 0, D])
    a, b, cc = (d * d).sum(-1), 2 * (d @ o), o @ o - r * r
    t = (-b - np.sqrt(np.maximum(b * b - 4 * a * cc, 0))) / (2 * a)
    np.testing.assert_allclose(out["depth"][inside], t[inside], atol=1e-5)


def test_depth_is_ordered_front_part_nearer():
    front = S.Part("sphere", (0.0, 0.0, 1.2), (0.4, 0, 0), "red", "blue")
    back = S.Part("box", (0.0, 0.0, -0.5), (1.0, 1.0, 0.3), "green", "white")
    out = S.render(S.Subject((back, front)), S.View(elevation=0.0), size=32)
    part, depth = out["part"], out["depth"]
    assert (part == 1).sum() > 10 and (part == 0).sum() > 10
    assert depth[part == 1].max() < depth[part == 0].min()   # the front sphere occludes and is nearer
    assert np.all(np.isinf(depth[~out["mask"]])) and np.all(np.isfinite(depth[out["mask"]]))
    dm = S.depth_map(depth)
    assert dm[part == 1].min() > dm[part == 0].max() and np.all(dm[~out["mask"]] == 0)


def test_mask_is_exactly_the_object_pixels():
    rng = np.random.default_rng(0)
    sub = S.random_subject(rng)
    view = S.random_view(rng)
    a = S.render(sub, view, S.Background("gradient", "blue", "white"), 32)
    b = S.render(sub, view, S.Background("checkerboard", "yellow", "black"), 32)
    assert np.array_equal(a["mask"], b["mask"]) and a["mask"].any() and (~a["mask"]).any()
    np.testing.assert_array_equal(a["image"][a["mask"]], b["image"][a["mask"]])     # object pixels: identical
    assert np.mean(np.abs(a["image"] - b["image"]).sum(-1)[~a["mask"]] > 0) > 0.9   # background: changed
    np.testing.assert_array_equal(a["image"][~a["mask"]],
                                  S.background_image(S.Background("gradient", "blue", "white"), 32)[~a["mask"]])


def test_views_differ_with_the_viewpoint_and_repeat_exactly():
    sub = S.Subject((S.Part("box", (0.0, 0.0, 0.0), (0.3, 0.6, 1.0), "red", "blue", "striped"),))
    a = S.render(sub, S.View(azimuth=0.0), size=32)
    b = S.render(sub, S.View(azimuth=90.0), size=32)
    assert a["mask"].sum() < b["mask"].sum()                       # the long z side faces the camera at 90°
    assert np.abs(a["image"] - b["image"]).mean() > 0.02
    np.testing.assert_array_equal(a["image"], S.render(sub, S.View(azimuth=0.0), size=32)["image"])
    # a plain sphere lit from the camera side is the same picture from every azimuth (only geometry moves)
    sph = S.Subject((S.Part("sphere", (0.0, 0.0, 0.0), (1.0, 0, 0), "red", "blue"),))
    v = dict(elevation=0.0, light=(0.0, 1.0, 0.0))
    np.testing.assert_allclose(S.render(sph, S.View(azimuth=0.0, **v))["image"],
                               S.render(sph, S.View(azimuth=77.0, **v))["image"], atol=1e-5)


def test_dataset_and_captions():
    d = S.subject_images(3, 4, seed=0, size=16)
    assert d["image"].shape == (12, 16, 16, 3) and d["image"].dtype == np.float32
    assert 0 <= d["image"].min() and d["image"].max() <= 1
    assert list(d["subject"]) == [0] * 4 + [1] * 4 + [2] * 4
    for cap, i in zip(d["caption"], d["subject"]):
        assert cap.startswith(d["subjects"][i].caption)
    assert S.Subject((S.Part("box", (0, 0, 0), (1, 1, 1), "red", "blue", "striped"),
                      S.Part("sphere", (0, 2, 0), (0.5, 0, 0), "green", "white"))).caption == \
        "a red striped box with a green sphere on top"
    e = S.subject_images(3, 4, seed=0, size=16)
    np.testing.assert_array_equal(d["image"], e["image"])


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="Part.shape"):
        S.Part("cone", (0, 0, 0), (1, 1, 1), "red", "blue")
    with pytest.raises(ValueError, match="Part.colour2"):
        S.Part("box", (0, 0, 0), (1, 1, 1), "red", "teal")
    with pytest.raises(ValueError, match="Background.kind"):
        S.background_image(S.Background("sky"), 8)
    with pytest.raises(ValueError, match="subject"):
        S.render(S.Subject(()), S.View())
