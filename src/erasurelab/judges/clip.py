"""A zero-shot CLIP judge from a local folder: the concept detector for real models.

Why zero-shot CLIP: a user erasing "Van Gogh" or "Snoopy" from SD has no trained classifier for
it, but every SD user has a CLIP checkpoint. The judge asks, for each image, which of a small set
of texts fits best: the concept, its neighbours (the things it must not be confused with) and its
guide (what an erasure maps it to). A concept is present when its softmax share within its own
group reaches `threshold` and its logit beats the best competitor by `margin`. The labels,
threshold and margin are part of the judge id, so two reports with different label sets never
look comparable.

Security: weights are read with safetensors only (`use_safetensors=True`), offline, and no code
from the folder is executed (no `trust_remote_code`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from erasurelab.errors import ErasureLabError, did_you_mean
from erasurelab.judges.base import LastBatchMemo, register_parametric_judge

JUDGE_VERSION = "1"
#: CLIP's own normalisation, used when the folder has no preprocessor_config.json.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
#: The prompt each label is read in (CLIP's standard zero-shot form).
LABEL_TEMPLATE = "a photo of {}"
#: The competitor of a concept that has no neighbours and no guide.
NULL_LABEL = "an ordinary picture"


@dataclass(frozen=True)
class LabelGroup:
    """One concept's question: which of these texts fits the image best?

    attribute: the group's name in predict() (the spec's category, or its name when a category
    repeats). labels[0] is the concept; the rest are its competitors. texts[i] is what CLIP reads
    for labels[i] (the concept's first word, e.g. "Van Gogh" for the concept "van_gogh").
    """

    attribute: str
    labels: tuple[str, ...]
    texts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.texts:
            object.__setattr__(self, "texts", self.labels)
        if len(self.texts) != len(self.labels):
            raise ValueError("a label group needs one text per label")


def label_groups(specs: Iterable[Any]) -> list[LabelGroup]:
    """One group per concept spec: [name, *neighbours, guide or NULL_LABEL] (duplicates removed)."""
    groups, used = [], set()
    for spec in specs:
        target = spec.synonyms[0] if getattr(spec, "synonyms", ()) else spec.name
        competitors = [*getattr(spec, "neighbours", ()), getattr(spec, "guide", "") or NULL_LABEL]
        others = [c for c in dict.fromkeys(competitors) if c and c not in (spec.name, target)]
        attribute = spec.category if spec.category not in used else spec.name
        used.add(attribute)
        groups.append(LabelGroup(attribute, (spec.name, *others), (target, *others)))
    return groups


class ClipJudge:
    """Judge protocol on a local transformers CLIPModel folder and label groups from concept specs."""

    def __init__(self, folder: str | Path, groups: Sequence[LabelGroup] = (), threshold: float = 0.5,
                 margin: float = 0.0, batch_size: int = 32, device: str | torch.device = "cpu") -> None:
        if not 0.0 < threshold <= 1.0:
            raise ErasureLabError(f"CLIP judge threshold must be in (0, 1], got {threshold}")
        self.folder = Path(folder).expanduser()
        self.threshold, self.margin, self.batch_size = float(threshold), float(margin), batch_size
        self.device = torch.device(device)
        self.model, self.tokenizer, self.mean, self.std, weights_digest = _load_clip(self.folder)
        self.model.to(self.device)
        self.groups = list(groups)
        self._group_of: dict[str, LabelGroup] = {}
        for group in self.groups:
            for label in group.labels:
                self._group_of.setdefault(label, group)
        self._text = self._encode_labels()
        self._memo = LastBatchMemo()
        payload = {"weights": weights_digest, "groups": [[g.attribute, g.labels, g.texts] for g in self.groups],
                   "threshold": self.threshold, "margin": self.margin, "template": LABEL_TEMPLATE}
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
        self.id = f"clip-v{JUDGE_VERSION}-{digest}"

    @classmethod
    def for_specs(cls, folder: str | Path, specs: Iterable[Any], **options: Any) -> ClipJudge:
        """A judge whose label groups come from concept specs (target, neighbours, guide)."""
        return cls(folder, label_groups(specs), **options)

    def with_specs(self, specs: Iterable[Any]) -> ClipJudge:
        """The same CLIP model with label groups for other concepts (a new id)."""
        return ClipJudge(self.folder, label_groups(specs), self.threshold, self.margin, self.batch_size, self.device)

    def settings(self) -> dict[str, Any]:
        """What a report records besides the id: folder, threshold, margin, label groups."""
        return {"folder": str(self.folder), "threshold": self.threshold, "margin": self.margin,
                "template": LABEL_TEMPLATE,
                "groups": {g.attribute: dict(zip(g.labels, g.texts, strict=True)) for g in self.groups}}

    def concepts(self) -> list[str]:
        return sorted(self._group_of)

    def attribute_of(self, concept: str) -> str:
        if concept not in self._group_of:
            hint = did_you_mean(concept, self._group_of)
            raise ErasureLabError(f"concept {concept!r} unknown to judge {self.id}{hint}; "
                                  "give the CLIP judge the concept's spec")
        return self._group_of[concept].attribute

    @torch.no_grad()
    def _encode_labels(self) -> dict[str, torch.Tensor]:
        texts = sorted({text for g in self.groups for text in g.texts})
        if not texts:
            return {}
        tokens = self.tokenizer([LABEL_TEMPLATE.format(x) for x in texts], padding=True, truncation=True,
                                return_tensors="pt").to(self.device)
        embeds = F.normalize(_as_tensor(self.model.get_text_features(**tokens)).float(), dim=-1)
        return dict(zip(texts, embeds, strict=True))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, m) L2-normalised CLIP image embeddings (the last batch's are reused: one pass per batch)."""
        return self._memo.get(images, self._features)

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self._prepare(images)
        out = [F.normalize(_as_tensor(self.model.get_image_features(pixel_values=pixels[s:s + self.batch_size]))
                           .float(), dim=-1).cpu() for s in range(0, len(pixels), self.batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.model.config.projection_dim)

    def _logits(self, features: torch.Tensor, group: LabelGroup) -> torch.Tensor:
        text = torch.stack([self._text[x] for x in group.texts]).cpu()
        return self.model.logit_scale.exp().detach().float().cpu() * features @ text.T

    def present(self, images: torch.Tensor, concept: str) -> torch.Tensor:
        group = self._group_of.get(concept)
        if group is None:
            self.attribute_of(concept)  # raises the one-line error
        logits = self._logits(self.features(images), group)
        index = group.labels.index(concept)
        probs = logits.softmax(dim=-1)[:, index]
        others = torch.cat([logits[:, :index], logits[:, index + 1:]], dim=1)
        beats = logits[:, index] - others.max(dim=1).values >= self.margin if others.shape[1] else True
        return (probs >= self.threshold) & beats

    def predict(self, images: torch.Tensor) -> list[dict[str, str]]:
        features = self.features(images)
        best = {g.attribute: [g.labels[i] for i in self._logits(features, g).argmax(dim=-1).tolist()]
                for g in self.groups}
        return [{a: labels[i] for a, labels in best.items()} for i in range(len(features))]

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ErasureLabError(f"judge expects images shaped (N, 3, H, W), got {tuple(images.shape)}")
        size = int(self.model.config.vision_config.image_size)
        pixels = images.float().clamp(0, 1)
        if pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True,
                                   align_corners=False).clamp(0, 1)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((pixels - mean) / std).to(self.device)


def _as_tensor(output: Any) -> torch.Tensor:
    """transformers 5 may return a model output object where 4.x returned the tensor."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("text_embeds", "image_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise ErasureLabError(f"unexpected CLIP output type {type(output).__name__}")


def _load_clip(folder: Path) -> tuple[Any, Any, tuple[float, ...], tuple[float, ...], str]:
    """(model, tokenizer, mean, std, weights digest) from a local folder; one-line errors otherwise."""
    if not folder.is_dir():
        raise ErasureLabError(f"CLIP judge folder not found: {folder}")
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ErasureLabError(f"{folder} is not a CLIP model folder: no readable config.json ({exc})") from exc
    if config.get("model_type") != "clip":
        raise ErasureLabError(f"{folder} is not a CLIP model folder: model_type is {config.get('model_type')!r}")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ErasureLabError(f"{folder} has no .safetensors weights (pickled weights are refused)")
    from transformers import CLIPModel, CLIPTokenizer

    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True).eval()
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # transformers raises many types for a damaged folder
        raise ErasureLabError(f"cannot load CLIP judge from {folder}: {str(exc).splitlines()[0]}") from exc
    model.requires_grad_(False)
    mean, std = OPENAI_MEAN, OPENAI_STD
    processor = folder / "preprocessor_config.json"
    if processor.exists():
        data = json.loads(processor.read_text())
        mean, std = tuple(data.get("image_mean", mean)), tuple(data.get("image_std", std))
    digest = hashlib.sha256()
    for path in weights:
        with open(path, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 22), b""):
                digest.update(block)
    digest.update(json.dumps(config, sort_keys=True).encode())
    return model, tokenizer, mean, std, digest.hexdigest()


@register_parametric_judge("clip")
def _clip_judge(folder: str) -> ClipJudge:
    """`clip:FOLDER`: the CLIP model in FOLDER with no label groups yet (`with_specs` adds the concepts)."""
    return ClipJudge(folder)
