"""Cross-layer knowledge distillation of RNAS-CL (Nath et al., "RNAS-CL: Robust Neural
Architecture Search by Cross-Layer Knowledge Distillation", 2023; docs/methods/rnas_cl.md).

Attention map of an activation A (B, C, H, W) (Zagoruyko & Komodakis 2017, p = 2):

    F(A) = Σ_c A_c²   (B, H, W)  -> resized to S x S -> flattened -> F̂(A) = F(A) / ‖F(A)‖₂ per example.

Student layers are every conv-bn-act unit of the student (``distill_layers()`` of the width
networks; for the DARTS cell networks the stem, each cell's two preprocessing ReLU-conv-BN
units and each cell's output, see :func:`cell_layers`). Teacher layers are the outputs of every
``nn.Conv2d`` of the teacher, found by forward hooks, so any model family works; the search may keep
only the k x k convs (``search.methods.rnas_cl.tutor_kernels``: the public code's WRN tutors are its
3x3 convs), and retraining takes the teacher layers the tutor file names (:func:`named_teacher_layers`),
so a tutor index means the same teacher conv in both.

Each student layer i has tutor logits over the n_t teacher layers; the Gumbel-softmax weights
g_ij weigh the distances d_ij = mean over the batch of ‖F̂(A_s^i) − F̂(A_t^j)‖² in the attention
loss, in one of two forms (``loss_form``):

    public (the authors' code):  L_attn = Σ_i sqrt(Σ_j g_ij² · d_ij)
                                  (per student layer the L2 norm of the tutor-weighted differences,
                                  summed over the student layers)
    paper (earlier reading):     L_attn = 1/(n_s·n_t) · Σ_i Σ_j g_ij · d_ij

and KL(teacher ‖ student) = T² · Σ_k p_t,k (log p_t,k − log p_s,k) with p = softmax(logits / T)
(Hinton et al. 2015) is the logit term. Retraining uses the same loss with the fixed (argmax)
tutors, i.e. one-hot g (public: Σ_i sqrt(d_i,tutor(i)); paper: Σ_i d_i,tutor(i) / (n_s·n_t)).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rnas.space.gumbel import gumbel_softmax

Layers = list[tuple[str, nn.Module]]


class DistillationError(ValueError):
    """Tutors, student layers and teacher layers do not fit together."""


# -- attention maps ------------------------------------------------------------------


def resize_map(m: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W) -> (B, size, size): area averaging when shrinking, bilinear when growing."""
    h, w = m.shape[-2:]
    if (h, w) == (size, size):
        return m
    m = m.unsqueeze(1)
    if h >= size and w >= size:
        m = F.adaptive_avg_pool2d(m, size)
    else:
        m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)
    return m.squeeze(1)


def attention_map(a: torch.Tensor, size: int) -> torch.Tensor:
    """F̂(A): Σ_c A_c², resized to size x size, flattened, L2-normalized. (B, C, H, W) -> (B, size²)."""
    if a.dim() != 4:
        raise DistillationError(f"attention maps need (B, C, H, W) activations, got shape {tuple(a.shape)}")
    m = resize_map(a.float().pow(2).sum(dim=1), size)  # (B, size, size)
    return F.normalize(m.flatten(1), p=2, dim=1)


def pairwise_distances(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """D_ij = mean over the batch of ‖s_i − t_j‖²; (n_s, B, D), (n_t, B, D) -> (n_s, n_t)."""
    s2 = student.pow(2).sum(-1)  # (n_s, B)
    t2 = teacher.pow(2).sum(-1)  # (n_t, B)
    cross = torch.einsum("ibd,jbd->ijb", student, teacher)  # (n_s, n_t, B)
    d = s2[:, None, :] + t2[None, :, :] - 2 * cross
    return d.clamp_min(0.0).mean(-1)


LOSS_FORMS = ("public", "paper")

# The public form's per-layer square root is taken of max(x, SQRT_FLOOR): a finite gradient
# where a student map equals its tutors' maps exactly (the value moves by at most 1e-6 per layer).
SQRT_FLOOR = 1e-12


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, g: torch.Tensor, form: str = "public") -> torch.Tensor:
    """L_attn of maps (n_s, B, D), (n_t, B, D) with tutor weights g (n_s, n_t); d_ij = batch mean of
    ‖F̂(A_s^i) − F̂(A_t^j)‖².

    ``public`` (the authors' code): Σ_i sqrt(Σ_j g_ij² · d_ij);
    ``paper``: Σ_i Σ_j g_ij · d_ij / (n_s·n_t)."""
    n_s, n_t = student.shape[0], teacher.shape[0]
    if g.shape != (n_s, n_t):
        raise DistillationError(f"tutor weights have shape {tuple(g.shape)}, expected ({n_s}, {n_t})")
    d = pairwise_distances(student, teacher)
    if form == "public":
        return (g.pow(2) * d).sum(-1).clamp_min(SQRT_FLOOR).sqrt().sum()
    if form == "paper":
        return (g * d).sum() / (n_s * n_t)
    raise DistillationError(f"unknown loss form {form!r}; known: {', '.join(LOSS_FORMS)}")


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T²·KL(softmax(t/T) ‖ softmax(s/T)), mean over the batch (Hinton et al. 2015)."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits.detach() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


# -- layers ------------------------------------------------------------------------------


def teacher_layers(model: nn.Module, kernels: Iterable[int] = ()) -> Layers:
    """Every ``nn.Conv2d`` of the teacher, in module order (any architecture); with ``kernels``
    (``search.methods.rnas_cl.tutor_kernels``) only the k x k convs for k in it."""
    kernels = tuple(kernels)
    layers = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and (not kernels or any(tuple(m.kernel_size) == (k, k) for k in kernels))
    ]
    if not layers:
        which = f" with a kernel of {' or '.join(f'{k}x{k}' for k in kernels)} (tutor_kernels)" if kernels else ""
        raise DistillationError(f"the teacher {type(model).__name__} has no Conv2d layer{which} to distil from")
    return layers


def named_teacher_layers(model: nn.Module, names: Iterable[str]) -> Layers:
    """The teacher layers a tutor file was searched with (its ``teacher_layers``), in that order, so
    that its tutor indices keep their meaning whatever ``tutor_kernels`` the search used.

    They must be exactly this teacher's convs of the kernel sizes they have (what
    :func:`teacher_layers` gives for this teacher under some kernel filter): a teacher of another
    depth or family, whose convs would only partly match the names, is refused."""
    modules = dict(model.named_modules())
    names = list(names)
    sizes = {tuple(m.kernel_size) for n in names if isinstance(m := modules.get(n), nn.Conv2d)}
    same_rule = [n for n, m in modules.items() if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) in sizes]
    if not names or same_rule != names:
        missing = [n for n in names if not isinstance(modules.get(n), nn.Conv2d)]
        raise DistillationError(
            "the teacher's conv layers differ from those the tutors were searched with "
            f"({len(same_rule)} convs of those kernel sizes now, {len(names)} in the tutor file; not convs of "
            f"this teacher: {missing[:3] or 'none'}): retrain with the teacher the search used"
        )
    return [(n, modules[n]) for n in names]


def cell_layers(model: nn.Module) -> Layers:
    """Student layers of a DARTS cell network (supernet or final): the stem conv-bn, every cell's
    two preprocessing ReLU-conv-BN units and every cell's output.

    These units exist with the same names in the supernet and in the final network whatever the
    genotype, so tutors found in the search carry over to retraining (see :func:`transfer_tutors`);
    the cell outputs put the searched operations themselves under the attention loss.
    """
    layers: Layers = [("stem", model.stem)]
    for i, cell in enumerate(model.cells):
        layers += [
            (f"cells.{i}.preprocess0", cell.preprocess0),
            (f"cells.{i}.preprocess1", cell.preprocess1),
            (f"cells.{i}", cell),
        ]
    return layers


def student_layers(model: nn.Module) -> Layers:
    """The student's conv-bn-act units: ``model.distill_layers()`` or the cell-network layers."""
    if hasattr(model, "distill_layers"):
        layers = model.distill_layers()
    elif hasattr(model, "cells") and hasattr(model, "stem"):
        layers = cell_layers(model)
    else:
        raise DistillationError(f"{type(model).__name__} defines no student layers (distill_layers() or cells)")
    if not layers:
        raise DistillationError(f"{type(model).__name__} has no student layer")
    return layers


class MapTaps:
    """Forward hooks that keep the attention map of each listed layer from the last forward.

    With ``root`` given, a pre-hook on it clears the maps at the start of each forward of the
    whole model and remembers that forward's input (``last_input``)."""

    def __init__(self, layers: Layers, size: int, root: nn.Module | None = None):
        self.names = [name for name, _ in layers]
        self.size = size
        self.maps: list[torch.Tensor | None] = [None] * len(layers)
        self.last_input: torch.Tensor | None = None
        self.handles = [m.register_forward_hook(partial(self._store, i)) for i, (_, m) in enumerate(layers)]
        if root is not None:
            self.handles.append(root.register_forward_pre_hook(self._begin))

    def _begin(self, _module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self.last_input = inputs[0] if inputs else None
        self.maps = [None] * len(self.names)

    def _store(self, index: int, _module: nn.Module, _inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        self.maps[index] = attention_map(output, self.size)

    def saw(self, x: torch.Tensor) -> bool:
        """True when the last forward of the root was on exactly this tensor."""
        return self.last_input is x

    def stack(self) -> torch.Tensor:
        """Maps of the last forward, (n_layers, B, size²)."""
        missing = [n for n, m in zip(self.names, self.maps) if m is None]
        if missing:
            raise DistillationError(f"layers {missing} did not run in the last forward")
        return torch.stack(self.maps)  # type: ignore[arg-type]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class TeacherProbe:
    """The frozen robust teacher: logits and conv attention maps of a batch, without gradients.

    Its layers: the convs of the given ``names`` (retraining: the tutor file's), else every conv
    with a kernel in ``kernels`` (every conv when empty)."""

    def __init__(
        self, teacher: nn.Module, map_size: int, kernels: Iterable[int] = (), names: Iterable[str] | None = None
    ):
        self.model = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.layers = teacher_layers(teacher, kernels) if names is None else named_teacher_layers(teacher, names)
        self.taps = MapTaps(self.layers, map_size, root=teacher)

    @property
    def names(self) -> list[str]:
        return self.taps.names

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()  # BN running statistics, never batch statistics
        logits = self.model(x)
        return logits, self.taps.stack()


class TutorLogits(nn.Module):
    """Tutor logits (n_student, n_teacher); zero init = every teacher layer equally likely."""

    def __init__(self, n_student: int, n_teacher: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_student, n_teacher))

    def sample(self, tau: float, generator: torch.Generator | None) -> torch.Tensor:
        """Gumbel-softmax weights g (n_s, n_t) at temperature τ."""
        return gumbel_softmax(self.logits, tau, generator)

    def probabilities(self) -> torch.Tensor:
        """softmax(logits): the categorical distribution the Gumbel samples follow (for plots)."""
        return torch.softmax(self.logits.detach(), dim=-1)

    def choice(self) -> list[int]:
        """The discrete tutors: argmax teacher layer of every student layer."""
        return self.logits.detach().argmax(-1).tolist()


# -- tutors across networks -------------------------------------------------------------

_CELL_NAME = re.compile(r"cells\.(\d+)(?:\.(preprocess[01]))?")


def _cell_key(name: str, n_cells: int) -> tuple[str, float]:
    if name == "stem":
        return "stem", 0.0
    m = _CELL_NAME.fullmatch(name)
    if m is None:
        raise DistillationError(f"student layer {name!r} is neither the stem nor a cell unit")
    return m.group(2) or "cell", (int(m.group(1)) + 0.5) / n_cells


def _n_cells(names: list[str]) -> int:
    idx = [int(m.group(1)) for n in names if (m := _CELL_NAME.fullmatch(n))]
    return max(idx) + 1 if idx else 1


def transfer_tutors(names: list[str], tutors: list[int], target_names: list[str]) -> list[int]:
    """Tutors of the search network's layers ``names`` carried to the layers ``target_names``.

    Identical layer lists map one to one (the width space). Cell networks whose depth differs
    between search and retraining (e.g. 8 searched cells, 20 retrained) map each target layer to
    the search layer of the same kind (stem, preprocess0, preprocess1, cell output) at the
    nearest relative depth (i + 0.5) / n_cells.
    """
    if len(names) != len(tutors):
        raise DistillationError(f"{len(tutors)} tutors for {len(names)} student layers")
    if list(names) == list(target_names):
        return list(tutors)
    n_src, n_dst = _n_cells(names), _n_cells(target_names)
    src = [(_cell_key(n, n_src), t) for n, t in zip(names, tutors)]
    out = []
    for name in target_names:
        kind, pos = _cell_key(name, n_dst)
        candidates = [(abs(p - pos), t) for (k, p), t in src if k == kind]
        if not candidates:
            raise DistillationError(f"no searched student layer of kind {kind!r} for {name!r}")
        out.append(min(candidates, key=lambda c: c[0])[1])
    return out


def load_tutors(arch_path: str | Path) -> dict[str, Any]:
    """The tutor assignment of a searched architecture: ``{"student_layers", "teacher_layers",
    "tutors"}``, from ``architecture.json`` itself (width space) or from ``tutors.json`` beside
    ``genotype.json`` (cell space)."""
    arch_path = Path(arch_path)
    data = json.loads(arch_path.read_text())
    if not (isinstance(data, dict) and data.get("space") == "width"):
        tutors_path = arch_path.parent / "tutors.json"
        if not tutors_path.is_file():
            raise DistillationError(
                f"{tutors_path}: tutors file not found (written by the RNAS-CL search beside {arch_path.name})"
            )
        data = json.loads(tutors_path.read_text())
    missing = [k for k in ("student_layers", "teacher_layers", "tutors") if k not in data]
    if missing:
        raise DistillationError(f"{arch_path}: the tutor assignment lacks {missing}")
    return {k: data[k] for k in ("student_layers", "teacher_layers", "tutors")}


# -- the retraining loss -----------------------------------------------------------------


class FixedTutorDistillation:
    """RNAS-CL's retraining terms as the Trainer's ``extra_loss``:

        kl_weight · KL(teacher ‖ student) + γ · L_attn   (fixed tutors: one-hot g; L_attn in ``loss_form``),

    both on the input the perturbation's loss used (``x_used``: the adversarial examples for
    PGD and TRADES). The student's maps come from hooks; when the last student forward was on
    another tensor, the student runs once more on ``x_used``.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        assignment: dict[str, Any],
        *,
        map_size: int,
        gamma: float,
        kl_weight: float,
        temperature: float,
        loss_form: str = "public",
    ):
        if loss_form not in LOSS_FORMS:
            raise DistillationError(f"unknown loss form {loss_form!r}; known: {', '.join(LOSS_FORMS)}")
        self.loss_form = loss_form
        # the teacher layers the search chose tutors among, by name: tutor j is the same conv here
        self.teacher = TeacherProbe(teacher, map_size, names=assignment["teacher_layers"])
        layers = student_layers(student)
        self.student_taps = MapTaps(layers, map_size, root=student)
        tutors = transfer_tutors(list(assignment["student_layers"]), list(assignment["tutors"]), [n for n, _ in layers])
        n_t = len(self.teacher.names)
        if any(not 0 <= t < n_t for t in tutors):
            raise DistillationError(f"tutor indices {tutors} out of range for {n_t} teacher layers")
        self.tutors = tutors
        self.g = F.one_hot(torch.tensor(tutors), n_t).float()  # (n_s, n_t)
        self.gamma, self.kl_weight, self.temperature = gamma, kl_weight, temperature
        self.last: dict[str, float] = {}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if not self.student_taps.saw(x):
            logits = model(x)
        s_maps = self.student_taps.stack()
        t_logits, t_maps = self.teacher(x)
        kl = kd_kl(logits, t_logits, self.temperature)
        attn = attention_loss(s_maps, t_maps, self.g.to(s_maps.device), self.loss_form)
        self.last = {"kl": float(kl.detach()), "attn": float(attn.detach())}
        return self.kl_weight * kl + self.gamma * attn

    def remove(self) -> None:
        self.student_taps.remove()
        self.teacher.taps.remove()
