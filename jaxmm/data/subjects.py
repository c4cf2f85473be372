"""Procedural subjects for Toffee (issue 21): small textured 3D objects, ray-cast with NumPy from any viewpoint
and light onto varied backgrounds, with the object's mask and depth, and captions.

    from jaxmm.data import subjects
    rng = np.random.default_rng(0)
    s = subjects.random_subject(rng)                          # parts + caption ("a red striped box ...")
    out = subjects.render(s, subjects.View(azimuth=30, elevation=20), subjects.random_background(rng), size=32)
    out["image"] [H, W, 3] float32 in [0, 1]; out["mask"] [H, W] bool; out["depth"] [H, W] float32 (inf off-object)

A subject is 1-3 axis-aligned primitives (box, vertical cylinder, sphere) in object space, each painted with a
solid 3D texture (stripes along y, checks, dots or plain) in two colours, so the paint is attached to the object
and consistent across views. The camera orbits the origin (azimuth about +y, elevation above the xz plane) at
`distance`, looking at (0, target_y, 0), pinhole with field of view `fov` degrees. Every pixel's ray is
intersected with every primitive in closed form (sphere and cylinder quadratics, box slabs, cylinder caps); the
nearest hit wins. `depth` is the z-depth along the camera axis (the ray direction has unit forward component, so
the ray parameter is the z-depth). Shading: ambient + Lambert with a directional light (its direction and
colour are part of the view). The mask is exactly the set of pixels whose ray hit the object (no antialiasing),
so compositing the same view on two backgrounds changes only the pixels outside the mask.

This is a stand-in for the paper's subject photographs (DreamBench-like): small (32 px by default), CPU-cheap,
with ground-truth masks and depth replacing Grounded-SAM and a depth estimator.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxmm.checks import check_positive, fail

COLOURS = {"red": (0.85, 0.15, 0.12), "orange": (0.95, 0.55, 0.1), "yellow": (0.95, 0.85, 0.15),
           "green": (0.2, 0.7, 0.25), "blue": (0.15, 0.3, 0.85), "purple": (0.55, 0.2, 0.7),
           "white": (0.92, 0.92, 0.9), "black": (0.08, 0.08, 0.1), "pink": (0.95, 0.5, 0.7),
           "brown": (0.5, 0.3, 0.15)}
SHAPES = ("box", "cylinder", "sphere")
PATTERNS = ("plain", "striped", "checkered", "dotted")
BACKGROUNDS = ("gradient", "checkerboard", "stripes", "noise", "floor")
BACKGROUND_WORDS = {"gradient": "in front of a {c} gradient", "checkerboard": "in front of a {c} checkerboard",
                    "stripes": "in front of a {c} striped wall", "noise": "in front of {c} clouds",
                    "floor": "on a {c} floor"}


@dataclasses.dataclass(frozen=True)
class Part:
    shape: str                      # one of SHAPES
    centre: tuple                   # (x, y, z) object space
    size: tuple                     # box: half extents (x, y, z); cylinder: (radius, half height, -); sphere: (r, -, -)
    colour: str                     # COLOURS key (pattern's first colour)
    colour2: str                    # second colour of the pattern
    pattern: str = "plain"          # one of PATTERNS
    frequency: float = 6.0          # pattern cycles per unit length

    def __post_init__(self):
        if self.shape not in SHAPES:
            fail("Part.shape", f"one of {SHAPES}", repr(self.shape))
        if self.pattern not in PATTERNS:
            fail("Part.pattern", f"one of {PATTERNS}", repr(self.pattern))
        for name in ("colour", "colour2"):
            if getattr(self, name) not in COLOURS:
                fail(f"Part.{name}", f"one of {tuple(COLOURS)}", repr(getattr(self, name)))


@dataclasses.dataclass(frozen=True)
class Subject:
    parts: tuple                    # tuple of Part; parts[0] is the body
    name: str = "object"

    @property
    def caption(self) -> str:
        """'a red striped box with a blue sphere on top' (body, then the other parts)."""
        def words(p):
            return f"{p.colour} {'' if p.pattern == 'plain' else p.pattern + ' '}{p.shape}"
        text = f"a {words(self.parts[0])}"
        for p in self.parts[1:]:
            where = "on top" if p.centre[1] > self.parts[0].centre[1] else "beside it"
            text += f" with a {words(p)} {where}"
        return text


@dataclasses.dataclass(frozen=True)
class View:
    azimuth: float = 0.0            # degrees about +y; 0 looks from +z towards the origin
    elevation: float = 15.0         # degrees above the xz plane
    distance: float = 4.0
    fov: float = 40.0               # degrees
    target_y: float = 0.0
    light: tuple = (0.4, 0.8, 0.6)  # direction towards the light (world space; normalised when used)
    light_colour: tuple = (1.0, 1.0, 1.0)
    ambient: float = 0.35


@dataclasses.dataclass(frozen=True)
class Background:
    kind: str = "gradient"          # one of BACKGROUNDS
    colour: str = "blue"
    colour2: str = "white"
    seed: int = 0                   # for "noise" and the pattern's phase

    @property
    def caption(self) -> str:
        return BACKGROUND_WORDS[self.kind].format(c=self.colour)


# ----------------------------------------------------------------------------------------------- random draws
def random_subject(rng: np.random.Generator, max_parts: int = 3) -> Subject:
    """1..max_parts primitives: a body on the ground plane region and smaller parts on top / beside it."""
    names = list(COLOURS)
    n = int(rng.integers(1, max_parts + 1))
    parts = []
    for k in range(n):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        scale = 0.8 if k == 0 else 0.45
        if shape == "box":
            size = tuple(float(v) for v in rng.uniform(0.5, 1.0, 3) * scale)
        elif shape == "cylinder":
            size = (float(rng.uniform(0.5, 0.9) * scale), float(rng.uniform(0.6, 1.1) * scale), 0.0)
        else:
            size = (float(rng.uniform(0.7, 1.0) * scale), 0.0, 0.0)
        half_h = size[0] if shape == "sphere" else size[1]
        if k == 0:
            centre = (0.0, -0.3 + half_h * 0.3, 0.0)
        elif k == 1:
            top = parts[0].centre[1] + (parts[0].size[0] if parts[0].shape == "sphere" else parts[0].size[1])
            centre = (float(rng.uniform(-0.15, 0.15)), top + half_h * 0.9, float(rng.uniform(-0.15, 0.15)))
        else:
            side = float(rng.choice([-1.0, 1.0]))
            centre = (side * 1.0, parts[0].centre[1] - 0.2, float(rng.uniform(-0.3, 0.3)))
        c1, c2 = rng.choice(len(names), 2, replace=False)
        parts.append(Part(shape, centre, size, names[c1], names[c2], PATTERNS[int(rng.integers(len(PATTERNS)))],
                          float(rng.uniform(4.0, 8.0))))
    return Subject(tuple(parts))


def random_view(rng: np.random.Generator, *, azimuth=None, elevation=None) -> View:
    az = float(rng.uniform(0, 360)) if azimuth is None else float(azimuth)
    el = float(rng.uniform(0, 35)) if elevation is None else float(elevation)
    light = rng.normal(size=3)
    light[1] = abs(light[1]) + 0.5
    tint = 1.0 - 0.25 * rng.uniform(size=3)
    return View(az, el, float(rng.uniform(3.6, 4.4)), 40.0, 0.0, tuple(light / np.linalg.norm(light)),
                tuple(float(v) for v in tint / tint.max()), float(rng.uniform(0.25, 0.45)))


def random_background(rng: np.random.Generator) -> Background:
    names = list(COLOURS)
    c1, c2 = rng.choice(len(names), 2, replace=False)
    return Background(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], names[c1], names[c2],
                      int(rng.integers(1 << 30)))


# ----------------------------------------------------------------------------------------------- ray casting
def camera_rays(view: View, size: int):
    """(origin [3], directions [size*size, 3], forward [3]); each direction has forward component exactly 1, so the
    ray parameter t at a hit is the z-depth. Pixel (i, j): row i from the top, column j from the left."""
    check_positive("size", size)
    az, el = np.deg2rad(view.azimuth), np.deg2rad(view.elevation)
    target = np.array([0.0, view.target_y, 0.0])
    origin = target + view.distance * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
    fwd = (target - origin) / np.linalg.norm(target - origin)
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    s = np.tan(np.deg2rad(view.fov) / 2)
    c = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = np.meshgrid(c, -c)
    dirs = fwd + s * (x.reshape(-1, 1) * right + y.reshape(-1, 1) * up)
    return origin, dirs, fwd


def _solve(a, b, c):
    """Smallest positive root of a t² + b t + c (inf if none), for arrays."""
    disc = b * b - 4 * a * c
    sq = np.sqrt(np.maximum(disc, 0))
    t0, t1 = (-b - sq) / (2 * a), (-b + sq) / (2 * a)
    t = np.where(t0 > 1e-6, t0, np.where(t1 > 1e-6, t1, np.inf))
    return np.where(disc >= 0, t, np.inf)


def _intersect(part: Part, o, d):
    """(t [N], normal [N, 3]) of rays o + t d with one primitive (t = inf where missed)."""
    oc = o - np.asarray(part.centre)
    n = d.shape[0]
    normal = np.zeros((n, 3))
    if part.shape == "sphere":
        r = part.size[0]
        t = _solve((d * d).sum(1), 2 * (d @ oc), oc @ oc - r * r)
        normal = (oc + np.where(np.isfinite(t), t, 0.0)[:, None] * d) / r   # a missed ray's normal is unused
    elif part.shape == "box":
        h = np.asarray(part.size)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / d
            t1, t2 = (-h - oc) * inv, (h - oc) * inv
        tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
        tmin = np.where(np.isnan(tmin), -np.inf, tmin)
        tmax = np.where(np.isnan(tmax), np.inf, tmax)
        near, far = tmin.max(1), tmax.min(1)
        hit = (near <= far) & (near > 1e-6)
        t = np.where(hit, near, np.inf)
        axis = tmin.argmax(1)
        normal[np.arange(n), axis] = -np.sign(d[np.arange(n), axis])
    else:  # vertical cylinder: side + two caps
        r, hh = part.size[0], part.size[1]
        dx, dz, ox, oz = d[:, 0], d[:, 2], oc[0], oc[2]
        with np.errstate(divide="ignore", invalid="ignore"):  # rays parallel to the axis / the caps
            ts = _solve(dx * dx + dz * dz, 2 * (dx * ox + dz * oz), ox * ox + oz * oz - r * r)
            ys = oc[1] + ts * d[:, 1]
            ts = np.where(np.abs(ys) <= hh, ts, np.inf)
            tc = np.stack([(hh - oc[1]) / d[:, 1], (-hh - oc[1]) / d[:, 1]], 1)
            pc = oc[None, None, [0, 2]] + tc[..., None] * d[:, None, [0, 2]]
            ok = (tc > 1e-6) & ((pc ** 2).sum(-1) <= r * r)
        tc = np.where(ok, tc, np.inf).min(1)
        t = np.minimum(ts, tc)
        p = oc + np.where(np.isfinite(t), t, 0)[:, None] * d
        side = ts <= tc
        normal = np.where(side[:, None], np.stack([p[:, 0] / r, np.zeros(n), p[:, 2] / r], 1),
                          np.stack([np.zeros(n), np.sign(p[:, 1]), np.zeros(n)], 1))
    return t, normal


def _paint(part: Part, p_local):
    """Solid 3D texture: [N, 3] albedo at object-space offsets from the part's centre."""
    f = part.frequency
    if part.pattern == "striped":
        sel = np.floor(f * p_local[:, 1]) % 2 == 0
    elif part.pattern == "checkered":
        sel = np.floor(f * p_local).sum(1) % 2 == 0
    elif part.pattern == "dotted":
        sel = np.linalg.norm(np.mod(f * p_local, 1.0) - 0.5, axis=1) > 0.3
    else:
        sel = np.ones(len(p_local), bool)
    return np.where(sel[:, None], np.asarray(COLOURS[part.colour]), np.asarray(COLOURS[part.colour2]))


def background_image(bg: Background, size: int) -> np.ndarray:
    """[size, size, 3] float32 in [0, 1]."""
    if bg.kind not in BACKGROUNDS:
        fail("Background.kind", f"one of {BACKGROUNDS}", repr(bg.kind))
    c1, c2 = np.asarray(COLOURS[bg.colour]), np.asarray(COLOURS[bg.colour2])
    rng = np.random.default_rng(bg.seed)
    y, x = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    phase = rng.uniform(0, 1)
    if bg.kind == "gradient":
        w = y
    elif bg.kind == "checkerboard":
        k = int(rng.integers(3, 7))
        w = (np.floor(k * x + phase) + np.floor(k * y + phase)) % 2
    elif bg.kind == "stripes":
        w = (np.floor(int(rng.integers(4, 9)) * (x + y) / 2 + phase) % 2)
    elif bg.kind == "noise":
        coarse = rng.uniform(size=(5, 5))
        idx = np.linspace(0, 4, size)
        i0 = np.floor(idx).astype(int).clip(0, 3)
        fr = idx - i0
        rows = coarse[i0] * (1 - fr)[:, None] + coarse[i0 + 1] * fr[:, None]
        w = rows[:, i0] * (1 - fr)[None] + rows[:, i0 + 1] * fr[None]
    else:  # floor: c2 sky above the horizon, c1 floor fading below
        horizon = 0.45 + 0.1 * phase
        w = np.where(y > horizon, 0.2 + 0.8 * (y - horizon) / (1 - horizon), 1.0)
        return (w[..., None] * c2 * (y <= horizon)[..., None] + c1 * (1 - 0.3 * (1 - w))[..., None]
                * (y > horizon)[..., None]).astype(np.float32)
    return ((1 - w)[..., None] * c1 + w[..., None] * c2).astype(np.float32)


def render(subject: Subject, view: View, background: Background | None = None, size: int = 32) -> dict:
    """{"image" [size, size, 3] float32 in [0,1], "mask" [size, size] bool, "depth" [size, size] float32 (z-depth,
    inf off the object), "part" [size, size] int32 (index of the visible part, -1 off the object)}."""
    if not isinstance(subject, Subject) or not subject.parts:
        fail("subject", "a Subject with at least one Part", subject)
    o, d, _ = camera_rays(view, size)
    best_t = np.full(len(d), np.inf)
    best_n = np.zeros((len(d), 3))
    best_k = np.full(len(d), -1)
    for k, part in enumerate(subject.parts):
        t, nrm = _intersect(part, o, d)
        closer = t < best_t
        best_t = np.where(closer, t, best_t)
        best_n = np.where(closer[:, None], nrm, best_n)
        best_k = np.where(closer, k, best_k)
    hit = np.isfinite(best_t)
    p = o + np.where(hit, best_t, 0)[:, None] * d
    albedo = np.zeros((len(d), 3))
    for k, part in enumerate(subject.parts):
        sel = best_k == k
        if sel.any():
            albedo[sel] = _paint(part, p[sel] - np.asarray(part.centre))
    light = np.asarray(view.light, float)
    light = light / np.linalg.norm(light)
    lambert = np.clip(best_n @ light, 0, None)
    shade = view.ambient + (1 - view.ambient) * lambert[:, None] * np.asarray(view.light_colour)
    colour = np.clip(albedo * shade, 0, 1)
    bg = background_image(background or Background(), size).reshape(-1, 3)
    image = np.where(hit[:, None], colour, bg).astype(np.float32)
    return {"image": image.reshape(size, size, 3), "mask": hit.reshape(size, size),
            "depth": best_t.astype(np.float32).reshape(size, size), "part": best_k.astype(np.int32).reshape(size, size)}


def depth_map(depth) -> np.ndarray:
    """z-depth [.., H, W] (inf off-object) -> [0, 1] near-is-bright map per image (0 off-object): the depth input
    ToffeeNet takes (the paper's depth estimator's output, normalised)."""
    depth = np.asarray(depth, np.float32)
    finite = np.isfinite(depth)
    d = np.where(finite, depth, np.nan)
    axes = (-2, -1)
    lo = np.nanmin(np.where(finite, d, np.inf), axis=axes, keepdims=True)
    hi = np.nanmax(np.where(finite, d, -np.inf), axis=axes, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.where(finite, 1.0 - 0.8 * (d - lo) / span, 0.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------- data sets
def subject_views(subject: Subject, n: int, rng: np.random.Generator, size: int = 32,
                  same_background: bool = False) -> list[dict]:
    """n renders of one subject from random views, lights and (unless same_background) backgrounds; each dict has
    image, mask, depth, view, background and caption ("<subject caption> <background words>")."""
    bg = random_background(rng)
    out = []
    for _ in range(n):
        view = random_view(rng)
        b = bg if same_background else random_background(rng)
        r = render(subject, view, b, size)
        r.update(view=view, background=b, caption=f"{subject.caption} {b.caption}")
        out.append(r)
    return out


def subject_images(num_subjects: int, views_per_subject: int, seed: int = 0, size: int = 32) -> dict:
    """Arrays for self-supervised training and tests: {"image" [S*V, H, W, 3], "mask", "depth", "subject" [S*V]
    (subject index), "caption" (list), "azimuth"/"elevation" [S*V] degrees}, plus "subjects" (the Subject list)."""
    rng = np.random.default_rng(seed)
    subs = [random_subject(rng) for _ in range(num_subjects)]
    recs = [(i, r) for i, s in enumerate(subs) for r in subject_views(s, views_per_subject, rng, size)]
    return {"image": np.stack([r["image"] for _, r in recs]), "mask": np.stack([r["mask"] for _, r in recs]),
            "depth": np.stack([r["depth"] for _, r in recs]), "subject": np.array([i for i, _ in recs], np.int32),
            "caption": [r["caption"] for _, r in recs],
            "azimuth": np.array([r["view"].azimuth for _, r in recs], np.float32),
            "elevation": np.array([r["view"].elevation for _, r in recs], np.float32), "subjects": subs}


# ----------------------------------------------------------------------------------------------- captions -> ids
VOCAB = ("<pad>", "<unk>", "a", "with", "on", "top", "beside", "it", "in", "front", "of", "wall", "clouds", "floor",
         *COLOURS, *SHAPES, *PATTERNS[1:], *BACKGROUNDS[:2], "striped")
VOCAB = tuple(dict.fromkeys(VOCAB))   # unique, order kept
_IDS = {w: i for i, w in enumerate(VOCAB)}


def encode_caption(caption: str, length: int = 24) -> np.ndarray:
    """Word ids [length] int32 over VOCAB (0 pads, 1 = unknown word), truncated to `length`."""
    ids = [_IDS.get(w, 1) for w in caption.lower().split()][:length]
    return np.array(ids + [0] * (length - len(ids)), np.int32)


# ----------------------------------------------------------------------------------------------- Toffee's pairs
def plain(subject: Subject) -> Subject:
    """The subject with every part unpainted (first colour only): the shapes a text prompt pins down, without the
    painted detail a text-to-image draft loses (the Refiner's input stand-in)."""
    return Subject(tuple(dataclasses.replace(p, pattern="plain") for p in subject.parts), subject.name)


def blur(image: np.ndarray, passes: int = 2) -> np.ndarray:
    """3x3 box blur applied `passes` times (edge pixels replicated), [.., H, W, C]."""
    x = np.asarray(image, np.float32)
    for _ in range(passes):
        p = np.pad(x, [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)], mode="edge")
        x = sum(p[..., i:i + x.shape[-3], j:j + x.shape[-2], :] for i in range(3) for j in range(3)) / 9.0
    return x


def dilate(mask: np.ndarray, r: int = 1) -> np.ndarray:
    """Binary dilation of [.., H, W] by a (2r+1)² square."""
    m = np.asarray(mask, bool)
    p = np.pad(m, [(0, 0)] * (m.ndim - 2) + [(r, r), (r, r)])
    h, w = m.shape[-2:]
    return np.any([p[..., i:i + h, j:j + w] for i in range(2 * r + 1) for j in range(2 * r + 1)], axis=0)


def draft(subject: Subject, view: View, background: Background, size: int = 32) -> dict:
    """The text-to-image draft stand-in: the plain-painted subject, blurred, at `view` on `background` (text-aligned
    layout and colours, detail lost). Returns render()'s dict with the blurred image."""
    r = render(plain(subject), view, background, size)
    r["image"] = blur(r["image"])
    return r


def editing_source(target, truth: dict, other: dict) -> tuple[np.ndarray, np.ndarray]:
    """An editing pair's (source [H, W, 3], mask [H, W] float {0, 1}) for a target image of the subject at the view and
    background of `truth` (its render) and `other` (another object's render at the same view and background): the
    mask is the dilated union of both silhouettes (the renderer's segmentation, the Grounded-SAM stand-in) and the
    source is the target with the masked region replaced by the other object, so that source and target agree outside
    the mask **[reconstruction]**: how the paper obtains its editing sources is not public."""
    m = dilate(truth["mask"] | other["mask"]).astype(np.float32)
    return (target * (1 - m[..., None]) + other["image"] * m[..., None]).astype(np.float32), m


def toffee_example(subject: Subject, other: Subject, rng: np.random.Generator, size: int = 32, *,
                   kind: str = "generation", reconstruction: bool = False) -> dict:
    """One ToffeeNet training pair, rendered: {"target" [H,W,3], "reference" [H,W,3] (the subject image whose DINO
    tokens condition the model), "source" [H,W,3], "mask" [H,W], "depth" [H,W] (depth_map of the target),
    "caption"}. generation: source and mask are zero. editing: source is `other` rendered at the same view and
    background (the object to replace), mask = dilate(target mask | other's mask). reconstruction: the reference is
    the target itself (same view and background) instead of another view on another background."""
    if kind not in ("generation", "editing"):
        fail("kind", "'generation' or 'editing'", repr(kind))
    view, bg = random_view(rng), random_background(rng)
    tgt = render(subject, view, bg, size)
    ref = tgt if reconstruction else render(subject, random_view(rng), random_background(rng), size)
    out = {"target": tgt["image"], "reference": ref["image"], "depth": depth_map(tgt["depth"]),
           "caption": f"{subject.caption} {bg.caption}"}
    if kind == "editing":
        # the other object's render is its own composite: outside the dilated union it shows the same background
        out["source"], out["mask"] = editing_source(tgt["image"], tgt, render(other, view, bg, size))
    else:
        out["source"], out["mask"] = np.zeros_like(tgt["image"]), np.zeros((size, size), np.float32)
    return out
