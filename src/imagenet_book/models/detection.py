"""A small single-stage detector on a ResNet backbone: anchors, box coding, L = L_cls + L_reg.

The whole algorithm, as chapter 08 builds it::

    C4, C5 = backbone(X)                        # ResNet stages 3 and 4: strides 16 and 32
    P4 = conv3x3(lat4(C4) + up2(lat5(C5)))      # one stride-16 map (a two-level FPN, top-down)
    cls_logits, box_deltas = head(P4)           # per anchor: C class logits and 4 box deltas
    # training: match anchors to objects by IoU (>= 0.5 object, < 0.4 background, ignore between)
    L = focal(cls_logits, one-hot targets) / num_pos + smooth_l1(box_deltas, encode(gt, anchor)) / num_pos
    # inference: sigmoid scores > threshold, top-k, decode, per-class NMS, back to original pixels

The pieces, one small function or module each: :func:`make_anchors` (a few sizes and aspect
ratios at every cell of the feature map), :func:`encode_boxes` / :func:`decode_boxes`
(torchvision's ``BoxCoder`` convention: ``dx, dy, dw, dh`` with weights), :func:`match_anchors`
(RetinaNet's IoU rule, torchvision's ``Matcher`` semantics), the backbone
(:class:`imagenet_book.finetune.ResNetBackbone`) + :class:`FeatureMerge` + :class:`DetectionHead`
(the network), :func:`detection_loss`
(``L = L_cls + L_reg`` with :func:`imagenet_book.losses.sigmoid_focal_loss` and
:func:`imagenet_book.losses.box_regression_loss`), :meth:`Detector.predict` (post-processing with
``torchvision.ops.batched_nms``). This module holds the network and these pure functions only:
:func:`imagenet_book.finetune.finetune_detector` trains it on the profile's PASCAL VOC with the
book's one loop (:func:`imagenet_book.engine.fit` and :class:`imagenet_book.tasks.Detection`)
and measures VOC mAP@0.5 (:func:`imagenet_book.metrics.voc_detection_map`).

Coordinates. Boxes are XYXY in continuous pixel coordinates, as
:class:`~imagenet_book.data.voc.VOCDetection` gives them. The network sees every image resized
to a square of ``img_size`` pixels (training and inference alike); :meth:`Detector.predict`
takes images of any size and returns boxes in each image's ORIGINAL pixels.

Anchor sizes are fractions of ``img_size`` (:data:`ANCHOR_SIZES`), so the same detector
covers the same object sizes at every profile's image size.

Taught in: chapters/08_detection_voc.ipynb.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import ops
from torchvision.transforms import v2

from .. import losses
from ..errors import BookError
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ANCHOR_SIZES", "ASPECT_RATIOS", "BOX_WEIGHTS", "DetectionHead", "Detector", "DetectorError",
           "FeatureMerge", "check_losses", "decode_boxes", "detection_loss", "encode_boxes", "make_anchors",
           "match_anchors"]

# The detector's numbers. They live here and nowhere else (chapter 08 explains each one).
ANCHOR_SIZES = (0.1, 0.2, 0.4, 0.8)  # sqrt(anchor area) as a fraction of img_size: one per octave
ASPECT_RATIOS = (0.5, 1.0, 2.0)      # anchor height / width
BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)   # (wx, wy, ww, wh) of the box coder, RetinaNet's
FG_IOU, BG_IOU = 0.5, 0.4            # anchor matching: object >= FG_IOU, background < BG_IOU
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0  # RetinaNet's focal loss
SMOOTH_L1_BETA = 1.0 / 9             # Detectron's RetinaNet
PRIOR_PROB = 0.01                    # initial object probability of every anchor (RetinaNet)
HEAD_CHANNELS, HEAD_CONVS = 128, 2   # width and depth of the head's two branches
SCORE_THRESH, NMS_IOU = 0.05, 0.5    # post-processing
TOPK_CANDIDATES, MAX_DETECTIONS = 1000, 100
BBOX_CLIP = math.log(1000.0 / 16)    # largest dw, dh decoded (torchvision's bbox_xform_clip)



class DetectorError(BookError, ValueError):
    """A detector request cannot be honoured: an unknown mode or loss, a checkpoint of another
    architecture, a file that is not a detector. The message says what to do.

    Taught in: chapters/08_detection_voc.ipynb.
    """


# ------------------------------------------------------------------------------- anchors and boxes


def make_anchors(feature_size: tuple[int, int], stride: float, sizes: Sequence[float],
                 aspect_ratios: Sequence[float] = ASPECT_RATIOS) -> Tensor:
    """Anchor boxes at every cell of a feature map.

    Cell ``(i, j)`` covers the input pixels ``[j * stride, (j + 1) * stride)`` across and
    ``[i * stride, (i + 1) * stride)`` down; its anchors are centred on the cell's centre
    ``((j + 0.5) * stride, (i + 0.5) * stride)``. For each size ``s`` (in pixels, the square root
    of the anchor's area) and each aspect ratio ``r = h / w``: ``w = s / sqrt(r)``, ``h = s * sqrt(r)``.

    Args:
        feature_size: ``(H_f, W_f)`` of the feature map.
        stride: input pixels per feature-map cell.
        sizes: anchor sizes in pixels.
        aspect_ratios: height / width ratios.

    Returns:
        float32 ``(H_f * W_f * A, 4)`` XYXY boxes, ``A = len(sizes) * len(aspect_ratios)``, in the
        order (row ``i``, column ``j``, size, ratio): the order of :class:`DetectionHead`'s outputs.

    Taught in: chapters/08_detection_voc.ipynb.
    """
    h_f, w_f = feature_size
    sizes_t = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    ws = (sizes_t[:, None] / ratios.sqrt()[None, :]).flatten()  # (A,): size-major, then ratio
    hs = (sizes_t[:, None] * ratios.sqrt()[None, :]).flatten()
    base = torch.stack([-ws, -hs, ws, hs], dim=1) / 2  # (A, 4), centred on 0
    cy, cx = torch.meshgrid((torch.arange(h_f, dtype=torch.float32) + 0.5) * stride,
                            (torch.arange(w_f, dtype=torch.float32) + 0.5) * stride, indexing="ij")
    centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)  # (H_f * W_f, 1, 4)
    return (centres + base).reshape(-1, 4)


def encode_boxes(boxes: Tensor, anchors: Tensor, weights: Sequence[float] = BOX_WEIGHTS) -> Tensor:
    """Boxes as offsets from their anchors: what the network learns to predict.

    With centres ``x, y``, widths ``w`` and heights ``h`` (``a``: anchor, no index: box)::

        dx = wx * (x - x_a) / w_a      dy = wy * (y - y_a) / h_a
        dw = ww * log(w / w_a)         dh = wh * log(h / h_a)

    Offsets are relative to the anchor's size, so a 5-pixel shift means more for a small box
    than for a large one, and ``log`` makes a box twice as wide as its anchor as far from 0 as
    one half as wide. torchvision's ``BoxCoder(weights).encode_single(boxes, anchors)``.

    Args:
        boxes: float ``(..., 4)`` XYXY, positive width and height.
        anchors: float ``(..., 4)`` XYXY, broadcastable to ``boxes``.
        weights: ``(wx, wy, ww, wh)``.

    Returns:
        float ``(..., 4)`` deltas ``(dx, dy, dw, dh)``.

    Taught in: chapters/08_detection_voc.ipynb.
    """
    wx, wy, ww, wh = weights
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
    bw, bh = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    bx, by = boxes[..., 0] + 0.5 * bw, boxes[..., 1] + 0.5 * bh
    return torch.stack([wx * (bx - ax) / aw, wy * (by - ay) / ah,
                        ww * torch.log(bw / aw), wh * torch.log(bh / ah)], dim=-1)


def decode_boxes(deltas: Tensor, anchors: Tensor, weights: Sequence[float] = BOX_WEIGHTS,
                 clip: float = BBOX_CLIP) -> Tensor:
    """The inverse of :func:`encode_boxes`: deltas and anchors back to XYXY boxes.

    ``x = x_a + dx / wx * w_a``, ``w = w_a * exp(dw / ww)`` (and so for ``y``, ``h``); ``dw`` and
    ``dh`` are clamped at ``clip`` first so that an untrained network's ``exp`` cannot overflow.
    torchvision's ``BoxCoder(weights).decode_single(deltas, anchors)``.

    Args:
        deltas: float ``(..., 4)``.
        anchors: float ``(..., 4)`` XYXY, broadcastable to ``deltas``.
        weights: ``(wx, wy, ww, wh)``, as given to :func:`encode_boxes`.
        clip: largest ``dw`` / ``dh`` used (default ``log(1000 / 16)``, torchvision's).

    Returns:
        float ``(..., 4)`` XYXY boxes.

    Taught in: chapters/08_detection_voc.ipynb.
    """
    wx, wy, ww, wh = weights
    anchors = anchors.to(deltas.dtype)
    aw, ah = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    ax, ay = anchors[..., 0] + 0.5 * aw, anchors[..., 1] + 0.5 * ah
    x = ax + deltas[..., 0] / wx * aw
    y = ay + deltas[..., 1] / wy * ah
    w = aw * torch.exp((deltas[..., 2] / ww).clamp(max=clip))
    h = ah * torch.exp((deltas[..., 3] / wh).clamp(max=clip))
    return torch.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], dim=-1)


def match_anchors(anchors: Tensor, gt_boxes: Tensor, *, fg_iou: float = FG_IOU, bg_iou: float = BG_IOU,
                  allow_low_quality: bool = True) -> Tensor:
    """Which object each anchor must predict (RetinaNet's rule).

    Each anchor takes the object it overlaps most. Its IoU with that object decides:
    ``>= fg_iou``: a positive, it learns that object's class and box; ``< bg_iou``: background;
    in between: ignored (it is neither clearly right nor clearly wrong). With
    ``allow_low_quality``, each object's best anchor(s) (ties included) are made positive even
    below ``fg_iou``, so no object goes unlearned. The same semantics as torchvision's
    ``Matcher(fg_iou, bg_iou, allow_low_quality_matches)``.

    Args:
        anchors: float ``(N, 4)`` XYXY.
        gt_boxes: float ``(M, 4)`` XYXY; ``M`` may be 0 (then every anchor is background).

    Returns:
        int64 ``(N,)``: the matched object's index in ``0 .. M-1``, ``-1`` background, ``-2`` ignored.

    Taught in: chapters/08_detection_voc.ipynb.
    """
    if gt_boxes.numel() == 0:
        return torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
    iou = ops.box_iou(gt_boxes, anchors)  # (M, N)
    best_iou, matches = iou.max(dim=0)
    low_quality = matches.clone()
    matches[best_iou < bg_iou] = -1
    matches[(best_iou >= bg_iou) & (best_iou < fg_iou)] = -2
    if allow_low_quality:
        best_per_gt = iou.max(dim=1, keepdim=True).values
        _, anchor_idx = torch.nonzero(iou == best_per_gt, as_tuple=True)
        matches[anchor_idx] = low_quality[anchor_idx]
    return matches


# ------------------------------------------------------------------------------- the network


class FeatureMerge(nn.Module):
    """One stride-16 map from two stages: a two-level feature pyramid, top-down.

    ``P4 = smooth(lat4(C4) + upsample(lat5(C5)))``: ``C5`` (stride 32) has seen more of the image
    and is more semantic; ``C4`` (stride 16) is sharper. 1x1 "lateral" convolutions bring both
    to ``channels``, nearest-neighbour upsampling doubles ``C5``'s side, and a 3x3 convolution
    smooths the sum (Lin et al., 2017, feature pyramid networks, with one level kept).

    Shapes: ``(B, c4, h, w)``, ``(B, c5, ceil(h/2), ceil(w/2))`` -> ``(B, channels, h, w)``.

    Taught in: chapters/08_detection_voc.ipynb.
    """

    def __init__(self, in_channels: tuple[int, int], channels: int = HEAD_CHANNELS) -> None:
        super().__init__()
        self.lat4 = nn.Conv2d(in_channels[0], channels, 1)
        self.lat5 = nn.Conv2d(in_channels[1], channels, 1)
        self.smooth = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, c4: Tensor, c5: Tensor) -> Tensor:
        top = F.interpolate(self.lat5(c5), size=c4.shape[-2:], mode="nearest")
        return self.smooth(self.lat4(c4) + top)


def _branch(channels: int, num_convs: int, out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(32, channels), nn.ReLU(inplace=True)]
    layers.append(nn.Conv2d(channels, out, 3, padding=1))
    return nn.Sequential(*layers)


class DetectionHead(nn.Module):
    """Two small convolutional branches over the feature map: class logits and box deltas.

    Each branch: ``num_convs`` x (3x3 convolution, GroupNorm, ReLU), then a 3x3 convolution with
    ``A * num_classes`` (classification) or ``A * 4`` (regression) outputs per cell. GroupNorm,
    not BatchNorm: detection batches are small. The classification bias starts at
    ``-log((1 - prior) / prior)``, so every anchor starts out predicting "object" with
    probability ``prior`` (0.01): without it, the first focal-loss steps would be swamped by
    the thousands of background anchors (RetinaNet's initialisation).

    Shapes: ``(B, channels, H_f, W_f)`` -> ``(cls_logits (B, H_f*W_f*A, num_classes),
    box_deltas (B, H_f*W_f*A, 4))``, in :func:`make_anchors`' order.

    Taught in: chapters/08_detection_voc.ipynb.
    """

    def __init__(self, channels: int, num_anchors: int, num_classes: int, num_convs: int = HEAD_CONVS,
                 prior: float = PRIOR_PROB) -> None:
        super().__init__()
        self.num_anchors, self.num_classes = num_anchors, num_classes
        self.cls = _branch(channels, num_convs, num_anchors * num_classes)
        self.reg = _branch(channels, num_convs, num_anchors * 4)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls[-1].bias, -math.log((1 - prior) / prior))

    def forward(self, p: Tensor) -> tuple[Tensor, Tensor]:
        b = p.shape[0]
        # (B, A*K, H, W) -> (B, H, W, A*K) -> (B, H*W*A, K): cells row-major, then anchors
        cls = self.cls(p).permute(0, 2, 3, 1).reshape(b, -1, self.num_classes)
        reg = self.reg(p).permute(0, 2, 3, 1).reshape(b, -1, 4)
        return cls, reg


class Detector(nn.Module):
    """A single-stage, anchor-based detector (RetinaNet's design, one feature level).

    ``backbone`` -> ``neck`` (:class:`FeatureMerge`) -> ``head`` (:class:`DetectionHead`).
    ``backbone`` is the (pretrained) ResNet without its classifier; ``neck`` and ``head`` are
    new: :func:`finetune_detector` gives them the full learning rate and the backbone a tenth.

    Args:
        backbone: anything with the interface of :class:`imagenet_book.finetune.ResNetBackbone`:
            ``features(x) -> {"layer3": stride-16 map, "layer4": stride-32 map, ...}``,
            ``channels`` (a dict with the channels of those maps), ``arch``, ``small_input``.
        num_classes: object classes (20 for VOC); no background class: each class is a sigmoid.
        img_size: side of the square the network sees; anchors are sized from it.
        anchor_sizes: anchor sizes as fractions of ``img_size``; aspect_ratios: ``h / w``.
        channels, num_convs: neck and head width; convolutions per head branch.
        box_weights: of the box coder (:func:`encode_boxes`).
        mean, std: input normalisation (ImageNet's, as the backbone was pretrained with).
        score_thresh, nms_iou, topk_candidates, max_detections: post-processing (:meth:`postprocess`).

    Shapes: :meth:`forward` float32 ``(B, 3, S, S)`` normalised -> ``(cls_logits (B, N, C),
    box_deltas (B, N, 4))`` with ``N`` anchors (:meth:`anchors`); :meth:`predict` a list of
    uint8 ``(3, H_b, W_b)`` images -> a list of dicts with boxes in original pixels.

    Taught in: chapters/08_detection_voc.ipynb.
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 20, *, img_size: int = 128,
                 anchor_sizes: Sequence[float] = ANCHOR_SIZES, aspect_ratios: Sequence[float] = ASPECT_RATIOS,
                 channels: int = HEAD_CHANNELS, num_convs: int = HEAD_CONVS,
                 box_weights: Sequence[float] = BOX_WEIGHTS,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 score_thresh: float = SCORE_THRESH, nms_iou: float = NMS_IOU,
                 topk_candidates: int = TOPK_CANDIDATES, max_detections: int = MAX_DETECTIONS) -> None:
        super().__init__()
        if not (hasattr(backbone, "features") and {"layer3", "layer4"} <= set(getattr(backbone, "channels", {}))):
            raise DetectorError(
                f"{type(backbone).__name__} is not a detection backbone: it needs features(x) with "
                "'layer3' and 'layer4' maps and their channels (use "
                "imagenet_book.finetune.backbone_from_checkpoint or ResNetBackbone(resnet)).")
        self.backbone = backbone
        self.neck = FeatureMerge((backbone.channels["layer3"], backbone.channels["layer4"]), channels)
        self.head = DetectionHead(channels, len(anchor_sizes) * len(aspect_ratios), num_classes, num_convs)
        self.num_classes, self.img_size = num_classes, img_size
        self.anchor_sizes, self.aspect_ratios = tuple(anchor_sizes), tuple(aspect_ratios)
        self.channels, self.num_convs = channels, num_convs
        self.box_weights = tuple(box_weights)
        self.score_thresh, self.nms_iou = score_thresh, nms_iou
        self.topk_candidates, self.max_detections = topk_candidates, max_detections
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.stride = 4 if getattr(backbone, "small_input", False) else 16  # of layer3

    def config(self) -> dict[str, Any]:
        """Everything that defines the network but its weights (plain values; :func:`load_detector`)."""
        return {"arch": getattr(self.backbone, "arch", "resnet18"),
                "small_input": bool(getattr(self.backbone, "small_input", False)),
                "num_classes": self.num_classes, "img_size": self.img_size,
                "anchor_sizes": list(self.anchor_sizes), "aspect_ratios": list(self.aspect_ratios),
                "channels": self.channels, "num_convs": self.num_convs, "box_weights": list(self.box_weights),
                "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist(),
                "score_thresh": self.score_thresh, "nms_iou": self.nms_iou,
                "topk_candidates": self.topk_candidates, "max_detections": self.max_detections}

    def forward(self, X: Tensor) -> tuple[Tensor, Tensor]:
        f = self.backbone.features(X)
        return self.head(self.neck(f["layer3"], f["layer4"]))

    def anchors(self, image_size: tuple[int, int] | None = None, device: Any = None) -> Tensor:
        """The anchors of an input of ``image_size`` ``(H, W)`` (default ``(img_size, img_size)``):
        float32 ``(N, 4)`` XYXY, in the order of :meth:`forward`'s outputs.
        """
        h, w = image_size or (self.img_size, self.img_size)
        s = self.stride
        sizes = [f * self.img_size for f in self.anchor_sizes]
        return make_anchors((math.ceil(h / s), math.ceil(w / s)), s, sizes, self.aspect_ratios).to(device)

    def normalize(self, X: Tensor) -> Tensor:
        """uint8 ``(B, 3, H, W)`` in 0..255 (or float in [0, 1]) -> float32 normalised with mean/std."""
        X = X.to(self.mean.device)
        X = X.float() / 255 if X.dtype == torch.uint8 else X.float()
        return (X - self.mean) / self.std

    def preprocess(self, images: Sequence[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Resize each image to ``(img_size, img_size)`` (as training does) and normalise.

        Args:
            images: ``B`` tensors ``(3, H_b, W_b)``, uint8 (or float in [0, 1]), any sizes.

        Returns:
            ``(X, sizes)``: float32 ``(B, 3, S, S)`` on the detector's device, and the original
            ``(H_b, W_b)`` of each image.
        """
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        S = self.img_size
        X = torch.stack([v2.functional.resize(torch.as_tensor(im), [S, S], antialias=True) for im in images])
        return self.normalize(X), sizes

    @torch.no_grad()
    def postprocess(self, cls_logits: Tensor, box_deltas: Tensor, sizes: Sequence[tuple[int, int]],
                    input_size: tuple[int, int] | None = None) -> list[dict[str, Tensor]]:
        """Network outputs -> detections in each image's original pixels.

        Per image: sigmoid scores of every (anchor, class) pair; keep those above
        ``score_thresh``; the ``topk_candidates`` best; decode their boxes; clip them to the
        input; per-class NMS (``torchvision.ops.batched_nms`` at ``nms_iou``); the
        ``max_detections`` best; finally scale ``x`` by ``W_b / S_w`` and ``y`` by ``H_b / S_h``.

        Args:
            cls_logits: float ``(B, N, C)``; box_deltas: float ``(B, N, 4)``.
            sizes: the original ``(H_b, W_b)`` of each image.
            input_size: ``(S_h, S_w)`` the network saw (default ``(img_size, img_size)``).

        Returns:
            ``B`` dicts: ``"boxes"`` float32 ``(K, 4)`` XYXY in original pixels, ``"scores"``
            float32 ``(K,)`` in (0, 1) sorted high to low, ``"labels"`` int64 ``(K,)`` in
            ``0 .. C-1``.
        """
        sh, sw = input_size or (self.img_size, self.img_size)
        anchors = self.anchors((sh, sw), cls_logits.device)
        C = cls_logits.shape[-1]
        out = []
        for logits, deltas, (h, w) in zip(cls_logits, box_deltas, sizes):
            scores = torch.sigmoid(logits.float()).flatten()  # (N * C,): anchor-major
            keep = torch.nonzero(scores > self.score_thresh).flatten()
            top = scores[keep].topk(min(self.topk_candidates, len(keep))).indices
            keep = keep[top]
            scores, anchor_idx, labels = scores[keep], keep // C, keep % C
            boxes = decode_boxes(deltas[anchor_idx].float(), anchors[anchor_idx], self.box_weights)
            boxes = ops.clip_boxes_to_image(boxes, (sh, sw))
            ok = ops.remove_small_boxes(boxes, 1e-2)
            boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
            kept = ops.batched_nms(boxes, scores, labels, self.nms_iou)[:self.max_detections]
            scale = torch.tensor([w / sw, h / sh, w / sw, h / sh], device=boxes.device)
            out.append({"boxes": boxes[kept] * scale, "scores": scores[kept], "labels": labels[kept]})
        return out

    @torch.no_grad()
    def predict(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        """Detect objects: :meth:`preprocess`, :meth:`forward`, :meth:`postprocess` (eval mode).

        Args:
            images: ``B`` uint8 tensors ``(3, H_b, W_b)`` (float in [0, 1] also accepted), any sizes.

        Returns:
            ``B`` dicts ``{"boxes", "scores", "labels"}`` (see :meth:`postprocess`), on the
            detector's device, boxes in each image's ORIGINAL pixel coordinates.
        """
        was_training = self.training
        self.eval()
        X, sizes = self.preprocess(images)
        cls_logits, box_deltas = self(X)
        self.train(was_training)
        return self.postprocess(cls_logits, box_deltas, sizes, (X.shape[-2], X.shape[-1]))


# ------------------------------------------------------------------------------- the loss


def check_losses(cls_loss: str, reg_loss: str) -> None:
    """Raise :class:`DetectorError` unless ``cls_loss`` and ``reg_loss`` name losses
    :func:`detection_loss` knows.

    Taught in: chapters/08_detection_voc.ipynb.
    """
    if cls_loss not in ("focal", "bce"):
        raise DetectorError(f"Unknown classification loss {cls_loss!r}. Choose 'focal' or 'bce'.")
    if reg_loss not in losses.BOX_LOSSES:
        raise DetectorError(f"Unknown box loss {reg_loss!r}. Choose one of: {', '.join(losses.BOX_LOSSES)}.")


def detection_loss(cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor, targets: Sequence[dict[str, Tensor]],
                   *, cls_loss: str = "focal", reg_loss: str = "smooth_l1", alpha: float | None = FOCAL_ALPHA,
                   gamma: float = FOCAL_GAMMA, beta: float = SMOOTH_L1_BETA, fg_iou: float = FG_IOU,
                   bg_iou: float = BG_IOU, box_weights: Sequence[float] = BOX_WEIGHTS) -> dict[str, Tensor]:
    """``L = L_cls + L_reg`` of a batch, both normalised by the number of positive anchors.

    For each image, :func:`match_anchors` gives every anchor an object, background, or
    "ignore"; anchors whose object is marked ``difficult`` are ignored too (VOC's AP neither
    rewards nor punishes those objects, so training does not either). Then::

        L_cls = sum over non-ignored anchors a, classes c of  FL(logit[a, c], 1[c = class of a's object])
        L_reg = sum over positive anchors a of  box_loss(deltas[a], encode_boxes(box of a's object, a))
        L = (L_cls + L_reg) / max(1, number of positive anchors)

    Background anchors have an all-zero target: each class is its own sigmoid, there is no
    "background class".

    Args:
        cls_logits: float ``(B, N, C)``; box_deltas: float ``(B, N, 4)`` (:meth:`Detector.forward`).
        anchors: float ``(N, 4)`` (:meth:`Detector.anchors`).
        targets: ``B`` dicts with ``"boxes"`` float ``(M_b, 4)`` XYXY in the network's input
            pixels, ``"labels"`` int64 ``(M_b,)`` and optionally ``"difficult"`` bool ``(M_b,)``.
        cls_loss: ``"focal"`` (:func:`~imagenet_book.losses.sigmoid_focal_loss` with ``alpha``,
            ``gamma``) or ``"bce"`` (the same with ``alpha=None, gamma=0``: plain binary
            cross-entropy).
        reg_loss: ``"smooth_l1"`` (with ``beta``), ``"l1"`` or ``"mse"``
            (:func:`~imagenet_book.losses.box_regression_loss`).
        fg_iou, bg_iou, box_weights: see :func:`match_anchors`, :func:`encode_boxes`.

    Returns:
        ``{"loss", "cls", "reg"}`` (scalar tensors; ``loss = cls + reg``, differentiable) and
        ``"num_pos"`` (int64 scalar).

    Taught in: chapters/08_detection_voc.ipynb.
    """
    check_losses(cls_loss, reg_loss)
    anchors = anchors.to(box_deltas.device)
    cls_terms, reg_terms, num_pos = [], [], 0
    for logits, deltas, target in zip(cls_logits, box_deltas, targets):
        gt_boxes = torch.as_tensor(target["boxes"], dtype=torch.float32, device=deltas.device)
        labels = torch.as_tensor(target["labels"], device=deltas.device)
        matches = match_anchors(anchors, gt_boxes, fg_iou=fg_iou, bg_iou=bg_iou)
        if "difficult" in target and len(gt_boxes):
            difficult = torch.as_tensor(target["difficult"], dtype=torch.bool, device=deltas.device)
            matches[(matches >= 0) & difficult[matches.clamp(min=0)]] = -2
        pos, valid = matches >= 0, matches >= -1
        onehot = torch.zeros_like(logits)
        onehot[pos, labels[matches[pos]]] = 1.0
        if cls_loss == "focal":
            cls_terms.append(losses.sigmoid_focal_loss(logits[valid], onehot[valid], alpha, gamma, "sum"))
        else:
            cls_terms.append(losses.sigmoid_focal_loss(logits[valid], onehot[valid], None, 0.0, "sum"))
        target_deltas = encode_boxes(gt_boxes[matches[pos]], anchors[pos], box_weights)
        reg_terms.append(losses.box_regression_loss(deltas[pos], target_deltas, reg_loss, beta=beta))
        num_pos += int(pos.sum())
    norm = max(1, num_pos)
    cls = torch.stack(cls_terms).sum() / norm
    reg = torch.stack(reg_terms).sum() / norm
    return {"loss": cls + reg, "cls": cls, "reg": reg, "num_pos": torch.tensor(num_pos)}
