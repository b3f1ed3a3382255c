"""Figures for people: saliency overlays, the explanation panel (PNG) and the interpolation sweep (GIF)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from medxgan_monai.io.atomic import atomic_output

__all__ = ["saliency_overlay", "write_panel", "write_panel_rows", "write_sweep_gif"]


def _colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def _gray(image: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(image, dtype=np.float32), 0, 1) * 255).astype(np.uint8)


def saliency_overlay(image: np.ndarray, saliency: np.ndarray, opacity: float = 0.5, colormap: str = "jet"):
    """Blend a [0, 1] saliency map (coloured) over a [0, 1] grayscale image; returns uint8 (H, W, 3).

    The colour's opacity grows with the saliency, so unimportant regions show the image unchanged.
    """
    base = np.repeat(np.clip(np.asarray(image, np.float32), 0, 1)[..., None], 3, axis=-1)
    saliency = np.clip(np.asarray(saliency, np.float32), 0, 1)
    colour = _colormap(colormap)(saliency)[..., :3].astype(np.float32)
    weight = opacity * saliency[..., None]
    return (255 * ((1 - weight) * base + weight * colour)).astype(np.uint8)


def _tile(array: np.ndarray, scale: int) -> Image.Image:
    tile = Image.fromarray(array)
    return tile.resize((tile.width * scale, tile.height * scale), Image.Resampling.NEAREST)


def write_panel(
    path: str | os.PathLike,
    image: np.ndarray,
    counterfactual: np.ndarray,
    maps: Mapping[str, np.ndarray],
    captions: Mapping[str, str],
    scale: int = 3,
    overwrite: bool = False,
) -> None:
    """One row: the image, its counterfactual, then each saliency map over the image, each with a caption.

    Args:
        image, counterfactual: (H, W) in [0, 1], in the model's grid.
        maps: method name -> (H, W) saliency in [0, 1], in display order.
        captions: text under each tile, keyed by ``"image"``, ``"counterfactual"`` or the method name.
    """
    write_panel_rows(path, [(image, counterfactual, maps, captions)], scale, overwrite)


def write_panel_rows(
    path: str | os.PathLike,
    rows: Sequence[tuple[np.ndarray, np.ndarray, Mapping[str, np.ndarray], Mapping[str, str]]],
    scale: int = 3,
    overwrite: bool = False,
) -> None:
    """Several :func:`write_panel` rows, one under the other (e.g. a volume's slices with the strongest evidence);
    each row is ``(image, counterfactual, maps, captions)`` as there, all rows of one size and the same maps."""
    pictures = [_panel_row(*row, scale=scale) for row in rows]
    panel = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures)), "white")
    top = 0
    for picture in pictures:
        panel.paste(picture, (0, top))
        top += picture.height
    with atomic_output(path, overwrite=overwrite) as tmp:
        panel.save(tmp, format="PNG")


def _panel_row(image, counterfactual, maps, captions, scale: int) -> Image.Image:
    tiles = [("image", _gray(image)), ("counterfactual", _gray(counterfactual))]
    tiles += [(name, saliency_overlay(image, saliency, opacity=0.7)) for name, saliency in maps.items()]
    rendered = [_tile(np.repeat(t[..., None], 3, -1) if t.ndim == 2 else t, scale) for _, t in tiles]
    width, height, caption_height = rendered[0].width, rendered[0].height, 28
    panel = Image.new("RGB", (width * len(tiles), height + caption_height), "white")
    draw = ImageDraw.Draw(panel)
    for index, ((name, _), tile) in enumerate(zip(tiles, rendered, strict=True)):
        panel.paste(tile, (index * width, 0))
        draw.multiline_text((index * width + 3, height + 2), captions.get(name, name), fill="black", spacing=1)
    return panel


def write_sweep_gif(
    path: str | os.PathLike,
    frames: np.ndarray,
    probabilities: Sequence[float],
    alphas: Sequence[float],
    scale: int = 3,
    frame_ms: int = 150,
    overwrite: bool = False,
) -> None:
    """An animated GIF of G(z_a, a z_p) from a = 0 (counterfactual) to 1 (reconstruction), probability on each frame.

    Args:
        frames: (K, H, W) in [0, 1].
        probabilities: target-class probability of each frame.
        alphas: the interpolation coefficient of each frame.
    """
    images = []
    for frame, probability, alpha in zip(frames, probabilities, alphas, strict=True):
        tile = _tile(np.repeat(_gray(frame)[..., None], 3, -1), scale)
        ImageDraw.Draw(tile).text((3, 2), f"a={float(alpha):.2f} p={float(probability):.2f}", fill=(255, 255, 0))
        images.append(tile)
    # forth and back, so the loop does not jump
    sequence = images + images[-2:0:-1]
    with atomic_output(path, overwrite=overwrite) as tmp:
        sequence[0].save(tmp, format="GIF", save_all=True, append_images=sequence[1:], duration=frame_ms, loop=0)
