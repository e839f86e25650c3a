"""Typed, validated configuration: ``params.yaml`` -> frozen dataclasses.

One file configures every stage and both runners (Snakemake and dvc). It is read with
``yaml.safe_load`` only, then converted section by section into frozen dataclasses. Every
field declares its type and allowed range next to its default; unknown keys, wrong types
(including ``1e-3``, which YAML 1.1 reads as a *string*), out-of-range values and unknown
names are refused *before any work starts* with a :class:`ParamsError` that names the key
path (``search.arch_lr``) and what is allowed.

The JSON schema Snakemake validates with (``workflow/schemas/params.schema.json``) is
generated from these dataclasses (:func:`json_schema`), so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ParamsError(ValueError):
    """A params file is invalid. The message names the key path and what is allowed."""


def spec(
    default: Any = dataclasses.MISSING,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    doc: str = "",
    factory: Any = None,
    item_lo: float | None = None,
    item_hi: float | None = None,
) -> Any:
    """A dataclass field with its allowed range and a one-line description (units!)."""
    meta = {
        "lo": lo,
        "hi": hi,
        "lo_open": lo_open,
        "hi_open": hi_open,
        "doc": doc,
        "item_lo": item_lo,
        "item_hi": item_hi,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------

Device = Literal["cpu", "cuda", "auto"]
Perturbation = Literal["clean", "fgsm", "pgd", "trades"]
Schedule = Literal["cosine", "step", "constant"]
DatasetName = Literal["digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"]
TeacherFamily = Literal["small_cnn", "preact_resnet18", "wide_resnet"]


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline runs: which runs, which seeds, on what device."""

    runs: tuple[str, ...] = spec(
        factory=lambda: ("darts", "random"), doc="runs to search/retrain/evaluate (see rnas.runs.RUNS)"
    )
    seeds: tuple[int, ...] = spec(factory=lambda: (0,), item_lo=0, doc="one result folder per seed")
    threads: int = spec(1, lo=1, hi=256, doc="torch intra-op threads per job (fixed for determinism)")
    device: Device = spec("cpu", doc="cpu, cuda or auto (cuda when available)")
    deterministic: bool = spec(True, doc="torch.use_deterministic_algorithms")
    channels_last: bool = spec(True, doc="NHWC memory format for models (faster convs on CPU and GPU)")
    amp: bool = spec(
        False,
        doc="CUDA only: bfloat16 autocast in the trainer and the search step "
        "(ignored with a warning on CPU; evaluation stays float32)",
    )
    compile: bool = spec(False, doc="CUDA only: torch.compile the placed models (ignored with a warning on CPU)")
    results: str = spec("results", doc="root folder of all outputs")
    progress: bool = spec(True, doc="show tqdm progress bars")
    teacher_checkpoint: str = spec(
        "",
        doc="checkpoint that runs needing a teacher distil from (any supported "
        "family, with model_args, or a RobustBench / robust-overfitting WRN "
        "state dict, rnas.models.external); empty = the teacher stage's model.pt",
    )
    teacher_normalization: Literal["dataset", "none"] = spec(
        "dataset",
        doc="a teacher_checkpoint without model_args (a foreign WRN state dict): the input "
        "normalization its network was trained with: dataset = the dataset's mean/std "
        "(robust-overfitting, Rice et al. 2020) | none = raw [0, 1] inputs (most RobustBench "
        "models); a mean/std stored in the file wins",
    )


@dataclass(frozen=True)
class DataConfig:
    dataset: DatasetName = spec("digits", doc="dataset name")
    root: str = spec("data", doc="folder holding torchvision datasets")
    download: bool = spec(False, doc="let torchvision download a missing dataset")
    image_size: int = spec(8, lo=8, hi=64, doc="digits only: side (pixels); 8 is native, larger upsamples bilinearly")
    val_fraction: float = spec(
        0.1, lo=0.0, hi=0.5, lo_open=True, doc="fraction of the training pool held out for validation"
    )
    test_fraction: float = spec(0.2, lo=0.0, hi=0.5, lo_open=True, doc="digits only: fraction held out as the test set")
    train_subset: int = spec(0, lo=0, doc="keep only this many training examples (0 = all)")


@dataclass(frozen=True)
class PerturbationConfig:
    """Adversarial perturbation used *during training* (evaluation has its own ε)."""

    kind: Perturbation = spec("pgd", doc="clean | fgsm (random start) | pgd (Madry) | trades")
    epsilon: float = spec(0.1, lo=0.0, hi=1.0, doc="L∞ radius in pixel units ([0,1] scale)")
    step_size: float = spec(0.025, lo=0.0, hi=1.0, doc="attack step, pixel units")
    steps: int = spec(7, lo=1, hi=1000, doc="attack iterations (pgd, trades)")
    trades_beta: float = spec(6.0, lo=0.0, doc="TRADES robustness weight β")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation of a batch (rnas.data.augment_batch), drawn from the stage's seeded
    generator: random crop after zero padding, then a horizontal flip. Never applied to the
    validation or test splits (checkpoint selection, evaluation)."""

    crop_padding: int = spec(
        0,
        lo=0,
        hi=16,
        doc="random crop after zero-padding every side by this many pixels (CIFAR/SVHN papers: 4; 0 = no crop)",
    )
    flip: bool = spec(False, doc="random horizontal flip with probability 1/2 (CIFAR: yes; SVHN, digits: no)")


@dataclass(frozen=True)
class TrainConfig:
    """One trainer recipe (teacher training and retraining share it)."""

    epochs: int = spec(10, lo=1, hi=10_000, doc="training epochs")
    batch_size: int = spec(64, lo=1, hi=65_536, doc="examples per step")
    lr: float = spec(0.05, lo=0.0, hi=10.0, lo_open=True, doc="SGD learning rate")
    lr_min: float = spec(0.0, lo=0.0, hi=10.0, doc="cosine floor")
    momentum: float = spec(0.9, lo=0.0, hi=1.0, hi_open=True)
    weight_decay: float = spec(5e-4, lo=0.0, hi=1.0)
    schedule: Schedule = spec("cosine", doc="learning-rate schedule")
    grad_clip: float = spec(5.0, lo=0.0, doc="max gradient norm (0 = off)")
    perturbation: PerturbationConfig = spec(factory=PerturbationConfig)
    select_on: Literal["val_robust", "val_clean", "last"] = spec(
        "val_robust", doc="checkpoint selection on the validation split"
    )
    augment: AugmentConfig = spec(factory=AugmentConfig, doc="augmentation of the training batches")


@dataclass(frozen=True)
class TeacherConfig:
    family: TeacherFamily = spec("small_cnn", doc="fixed model family of the robust teacher")
    width: int = spec(32, lo=1, hi=1024, doc="base channels (small_cnn, preact_resnet18)")
    depth: int = spec(3, lo=1, hi=100, doc="stages (small_cnn) or depth (wide_resnet, 6n+4)")
    convs_per_stage: int = spec(
        1,
        lo=1,
        hi=16,
        doc="small_cnn only: conv-bn-relu units per stage (depth·convs_per_stage convs: RNAS-CL's tutor candidates)",
    )
    widen_factor: int = spec(10, lo=1, hi=32, doc="wide_resnet only")
    train: TrainConfig = spec(factory=TrainConfig)


@dataclass(frozen=True)
class SearchCommon:
    """Common search settings (DARTS defaults, Liu et al. 2019); a method overrides any of them
    in ``search.methods.<method>.overrides`` (:func:`search_for`)."""

    epochs: int = spec(50, lo=1, hi=10_000)
    batch_size: int = spec(64, lo=1, hi=65_536)
    init_channels: int = spec(16, lo=1, hi=1024, doc="C of the supernet")
    layers: int = spec(8, lo=1, hi=100, doc="cells in the supernet")
    nodes: int = spec(4, lo=2, hi=8, doc="intermediate nodes per cell")
    partial_channels: int = spec(1, lo=1, hi=16, doc="PC-DARTS K (1 = full DARTS)")
    w_lr: float = spec(0.025, lo=0.0, hi=10.0, lo_open=True)
    w_lr_min: float = spec(0.001, lo=0.0, hi=10.0)
    w_momentum: float = spec(0.9, lo=0.0, hi=1.0, hi_open=True)
    w_weight_decay: float = spec(3e-4, lo=0.0, hi=1.0)
    grad_clip: float = spec(5.0, lo=0.0)
    arch_lr: float = spec(3e-4, lo=0.0, hi=10.0, lo_open=True)
    arch_beta1: float = spec(0.5, lo=0.0, hi=1.0, hi_open=True)
    arch_beta2: float = spec(0.999, lo=0.0, hi=1.0, hi_open=True)
    arch_weight_decay: float = spec(1e-3, lo=0.0, hi=1.0)
    arch_warmup_epochs: int = spec(
        0,
        lo=0,
        hi=10_000,
        doc="bilevel (DARTS-type) searches: the first N epochs train the weights "
        "only; α moves from epoch N+1 on (capped at search.epochs − 1, so "
        "a short smoke search still moves α)",
    )
    arch_lr_schedule: Literal["constant", "cosine"] = spec(
        "constant",
        doc="bilevel searches: α's Adam step size per epoch: constant (DARTS) | cosine from arch_lr "
        "at the first α epoch towards 0 at the end (as the weights' lr), so α settles",
    )
    unrolled: bool = spec(False, doc="second-order (unrolled) architecture gradient")
    augment: AugmentConfig = spec(
        factory=AugmentConfig, doc="augmentation of both halves' training batches (the validation split never)"
    )


def _optional_fields(cls: type) -> list[tuple[str, Any, Any]]:
    """``cls``'s fields as (name, type | None, field with default None and the same range and doc)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        meta["doc"] = f"unset: search.{f.name}" + (f"; {meta['doc']}" if meta.get("doc") else "")
        # typing.Optional, not `X | None`: a typing.Union for any hint (a Literal or a string too),
        # as the type checks and messages built from these fields expect.
        out.append((f.name, typing.Optional[hints[f.name]], field(default=None, metadata=meta)))  # noqa: UP045
    return out


#: Per-method values of the common search keys: each is None (the common ``search.<key>``) or a
#: value validated with that key's own type and range.
SearchOverrides = dataclasses.make_dataclass(
    "SearchOverrides",
    _optional_fields(SearchCommon),
    frozen=True,
    namespace={
        "__doc__": "Per-method values of the common search keys (search.<key>); an unset key "
        "keeps the common value (rnas.config.search_for)."
    },
)


def _overrides() -> Any:
    return spec(factory=SearchOverrides, doc="this method's values of common search keys")


@dataclass(frozen=True)
class DartsMethodConfig:
    """Plain DARTS: nothing beyond the common bilevel settings."""

    overrides: SearchOverrides = _overrides()


@dataclass(frozen=True)
class RandomMethodConfig:
    """Random genotype from the cell space (sampled from the seed)."""

    overrides: SearchOverrides = _overrides()


RnasDivergence = Literal["kl", "js", "l2", "features"]
RnasNoise = Literal["uniform", "gaussian"]


@dataclass(frozen=True)
class RnasMethodConfig:
    """RNAS (noise examples; this project's reading of the abstract, docs/methods/rnas.md):
    α minimizes CE(clean) + λ·R(clean, noisy), the weights train on noisy examples. The
    ``adv`` variant (run rnas_adv) uses PGD-k examples in place of the noise."""

    lam: float = spec(1.0, lo=0.0, hi=1000.0, doc="λ: weight of the robustness term R in the architecture loss")
    divergence: RnasDivergence = spec(
        "kl",
        doc="R: kl = KL(p_clean ‖ p_noisy) | js = Jensen-Shannon | l2 = squared L2 distance of logits | "
        "features = squared distance of per-example L2-normalized cell outputs, mean over cells",
    )
    noise: RnasNoise = spec("uniform", doc="noise kind: uniform in the L∞ ε-ball | gaussian; clipped to [0, 1]")
    noise_scale: float = spec(
        8 / 255, lo=0.0, hi=1.0, doc="ε of the uniform ball or σ of the gaussian, pixel units (0 = clean)"
    )
    adv_epsilon: float = spec(8 / 255, lo=0.0, hi=1.0, doc="variant adv: PGD L∞ radius, pixel units")
    adv_step_size: float = spec(2 / 255, lo=0.0, hi=1.0, doc="variant adv: PGD step, pixel units")
    adv_steps: int = spec(7, lo=1, hi=1000, doc="variant adv: PGD iterations (k of PGD-k)")
    overrides: SearchOverrides = _overrides()


@dataclass(frozen=True)
class WidthSpaceConfig:
    """RNAS-CL's FBNetV2-style width space (docs/methods/rnas_cl.md): a stem, then stages of inverted-residual
    blocks; each block picks its width from C_max − i·step (i = 0..width_options−1)."""

    stem_channels: int = spec(8, lo=1, hi=1024, doc="channels of the 3x3 stem conv (not searched)")
    stage_widths: tuple[int, ...] = spec(
        factory=lambda: (8, 16, 24), item_lo=1, item_hi=4096, doc="C_max (channels) of each stage's blocks"
    )
    stage_blocks: tuple[int, ...] = spec(
        factory=lambda: (1, 2, 2), item_lo=1, item_hi=64, doc="inverted-residual blocks per stage"
    )
    stage_strides: tuple[int, ...] = spec(
        factory=lambda: (1, 2, 2), item_lo=1, item_hi=2, doc="stride of each stage's first block (the others: 1)"
    )
    expansion: int = spec(6, lo=1, hi=16, doc="expansion e: hidden channels = e·C_out")
    kernel: int = spec(3, lo=1, hi=7, doc="depthwise kernel side (odd, pixels)")
    width_options: int = spec(3, lo=1, hi=16, doc="width choices per block")
    width_step: float = spec(
        0.25, lo=0.0, hi=1.0, lo_open=True, hi_open=True, doc="step between width choices, as a fraction of C_max"
    )
    width_step_channels: int = spec(
        0,
        lo=0,
        hi=1024,
        doc="step between width choices in channels, the same for every stage (FBNetV2: 4); 0 = width_step·C_max",
    )
    stem_stride: int = spec(1, lo=1, hi=2, doc="stride of the stem conv (FBNetV2 on 32x32: 2)")
    stage_width_options: tuple[int, ...] = spec(
        factory=tuple,
        item_lo=1,
        item_hi=16,
        doc="width choices per stage (FBNetV2 s3: [2, 4, 4]); empty = width_options for every stage",
    )

    def __post_init__(self) -> None:
        from rnas.space.width import width_choices

        where = "search.methods.rnas_cl.width"
        if not len(self.stage_widths) == len(self.stage_blocks) == len(self.stage_strides):
            raise ParamsError(f"{where}: stage_widths, stage_blocks and stage_strides need the same length")
        if not self.stage_widths:
            raise ParamsError(f"{where}: give at least one stage")
        if self.kernel % 2 == 0:
            raise ParamsError(f"{where}.kernel: {self.kernel} must be odd")
        if self.stage_width_options and len(self.stage_width_options) != len(self.stage_widths):
            raise ParamsError(
                f"{where}.stage_width_options: give one count per stage ({len(self.stage_widths)}) or none"
            )
        counts = self.stage_width_options or (self.width_options,) * len(self.stage_widths)
        for c_max, count in zip(self.stage_widths, counts):
            try:
                width_choices(c_max, count, self.width_step, self.width_step_channels)
            except ValueError as err:
                raise ParamsError(f"{where}: {err}") from None


# RNAS-CL's two readings of its losses (docs/methods/rnas_cl.md, "Loss forms"): ``public`` follows
# the authors' public code, ``paper`` is this project's earlier reading of the paper.
RnasClLossForm = Literal["public", "paper"]


@dataclass(frozen=True)
class RnasClMethodConfig:
    """RNAS-CL (Nath et al. 2023, docs/methods/rnas_cl.md): cross-layer attention distillation from
    the robust teacher with learned tutors; the width space's search loss is
    α·(CE + kl_weight·KL + γ·L_attn)·C(MACs), with L_attn and the cost factor C set by
    ``loss_form``. Retraining knobs: retrain.distill."""

    loss_form: RnasClLossForm = spec(
        "public",
        doc="public (the authors' code): L_attn = Σ_i sqrt(Σ_j g_ij²·d_ij), C = β·log(MACs) | "
        "paper: L_attn = Σ_ij g_ij·d_ij / (n_s·n_t), C = log(MACs)^β; d_ij = batch-mean squared "
        "distance of the normalized attention maps",
    )
    gamma: float = spec(1.0, lo=0.0, hi=1e6, doc="γ: weight of the attention loss L_attn")
    kl_weight: float = spec(1.0, lo=0.0, hi=1e6, doc="weight of KL(teacher ‖ student)")
    temperature: float = spec(1.0, lo=0.0, hi=100.0, lo_open=True, doc="softmax temperature T of the KL term")
    map_size: int = spec(4, lo=1, hi=256, doc="attention maps are resized to map_size x map_size (pixels)")
    alpha_cost: float = spec(0.2, lo=0.0, hi=100.0, lo_open=True, doc="α of the cost term α·loss·C(MACs)")
    beta_cost: float = spec(
        0.5,
        lo=0.0,
        hi=100.0,
        doc="β of the cost factor: paper form log(MACs)^β (larger: "
        "smaller networks); public form β·log(MACs) (a scale only)",
    )
    tau0: float = spec(5.0, lo=0.0, hi=100.0, lo_open=True, doc="initial Gumbel-softmax temperature")
    tau_decay: float = spec(0.045, lo=0.0, hi=10.0, doc="τ(epoch) = tau0·exp(−tau_decay·epoch)")
    arch_lr: float = spec(0.1, lo=0.0, hi=10.0, lo_open=True, doc="Adam learning rate of tutor and width logits")
    arch_weight_decay: float = spec(1e-4, lo=0.0, hi=1.0, doc="Adam weight decay of tutor and width logits")
    arch_fraction: float = spec(
        0.2,
        lo=0.0,
        hi=1.0,
        lo_open=True,
        hi_open=True,
        doc="width space: the last fraction of each epoch's batches updates the logits",
    )
    width: WidthSpaceConfig = spec(factory=WidthSpaceConfig)
    overrides: SearchOverrides = _overrides()

    def __post_init__(self) -> None:
        if self.loss_form == "public" and self.beta_cost == 0.0:
            raise ParamsError(
                "search.methods.rnas_cl.beta_cost: 0 makes the public form's cost factor "
                "β·log(MACs) zero, so the search loss is 0 and nothing trains; give β > 0 "
                "(or loss_form: paper, where β = 0 removes the cost term)"
            )


@dataclass(frozen=True)
class LrnasMethodConfig:
    """LRNAS: Monte Carlo Shapley contributions of primitives + greedy selection under a budget.

    α is not trained by gradient: after the warm-up, each epoch estimates every primitive's
    contribution V̂ to clean and FGSM(ε) accuracy (z(ΔA) + z(ΔR), mean over permutations),
    then V ← (1−μ)·V + μ·z_cell(V̂) (V̂ z-scored over each cell type's own primitives, as the
    public LRNAS code) and α ← α + η·V. A run ``lrnas_<budget>`` overrides
    ``budget`` from its name."""

    warmup_epochs: int = spec(
        15, lo=0, hi=10_000, doc="epochs of weight training only before the first contribution estimate"
    )
    permutations: int = spec(
        10, lo=1, hi=10_000, doc="n: Monte Carlo permutations per epoch (one validation batch each)"
    )
    batch_size: int = spec(
        64,
        lo=1,
        hi=65_536,
        doc="examples of the validation batch each permutation is scored on (at most search.batch_size)",
    )
    momentum: float = spec(
        0.2, lo=0.0, hi=1.0, lo_open=True, doc="μ: V ← (1−μ)·V + μ·z_cell(V̂), V̂ z-scored per cell type"
    )
    step_size: float = spec(0.1, lo=0.0, lo_open=True, doc="η: α ← α + η·V")
    budget: int = spec(
        2_000_000, lo=1, doc="λ: parameter budget of the final network (retrain.init_channels/layers), parameters"
    )
    fgsm_epsilon: float = spec(8 / 255, lo=0.0, hi=1.0, doc="ε of the FGSM accuracy in the contributions, pixel units")
    attack_each_coalition: bool = spec(
        True,
        doc="true: FGSM against each switched-off subnetwork (white-box); "
        "false: crafted once per permutation against the full supernet (~3x cheaper)",
    )
    truncation_tolerance: float = spec(
        0.0,
        lo=0.0,
        hi=1.0,
        doc="truncated Monte Carlo: once both accuracies are within "
        "this of the all-off network's, later marginals are 0 (0 = off)",
    )
    batch_stats: bool = spec(
        True,
        doc="score coalitions with BN batch statistics of the scored batch (running "
        "statistics are restored after); false: eval-mode running statistics",
    )
    overrides: SearchOverrides = _overrides()


DsrnaNorm = Literal["linf", "l2"]


@dataclass(frozen=True)
class DsrnaMethodConfig:
    """DSRNA (Hosseini et al., CVPR 2021; docs/methods/dsrna.md): α minimizes L_val − γ·R with a
    differentiable robustness metric R: variant cb = mean certified lower bound of the margin
    f_y − max_{k≠y} f_k over the ε-ball (rnas.bounds), jacobian = −ε·‖∇_x f(x)‖_* (dual norm),
    combined = R_cb + jacobian_weight·R_jac."""

    gamma: float = spec(0.01, lo=0.0, hi=1e6, doc="γ: weight of the robustness metric R in L_val − γ·R")
    epsilon: float = spec(8 / 255, lo=0.0, hi=100.0, doc="ε of the metrics: radius of the ball in `norm`, pixel units")
    norm: DsrnaNorm = spec("linf", doc="threat model of the metrics: linf (dual norm L1) | l2 (dual norm L2)")
    jacobian_projection: Literal["top1", "random"] = spec(
        "top1", doc="R_jac differentiates the top-1 logit | a random unit projection vᵀf(x) of the logits"
    )
    bound_method: Literal["ibp", "crown"] = spec(
        "ibp", doc="R_cb's bound: ibp (interval) | crown (CROWN-IBP: IBP intermediate bounds + linear backward pass)"
    )
    jacobian_weight: float = spec(1.0, lo=0.0, hi=1e6, doc="variant combined: R = R_cb + jacobian_weight·R_jac")
    cb_scale: Literal["log", "linear"] = spec(
        "log",
        doc="R_cb per example: linear = the margin lower bound lb | log = sign(lb)·log(1 + |lb|) "
        "(same order; keeps an untrained supernet's lb ≈ −1e16 from drowning L_val)",
    )
    bound_dtype: Literal["float32", "float64"] = spec(
        "float32",
        doc="precision of R_cb's bound propagation; float64 where loose bounds overflow float32 "
        "(untrained 8-cell CIFAR supernet: lb ≈ −1e62)",
    )
    overrides: SearchOverrides = _overrides()


@dataclass(frozen=True)
class MethodsConfig:
    """One block per method; a method's keys never leak into another's block."""

    darts: DartsMethodConfig = spec(factory=DartsMethodConfig)
    random: RandomMethodConfig = spec(factory=RandomMethodConfig)
    lrnas: LrnasMethodConfig = spec(factory=LrnasMethodConfig)
    rnas_cl: RnasClMethodConfig = spec(factory=RnasClMethodConfig)
    rnas: RnasMethodConfig = spec(factory=RnasMethodConfig)
    dsrna: DsrnaMethodConfig = spec(factory=DsrnaMethodConfig)


@dataclass(frozen=True)
class SearchConfig(SearchCommon):
    """Common search settings and one block per method (its keys and its overrides)."""

    methods: MethodsConfig = spec(factory=MethodsConfig)


@dataclass(frozen=True)
class RetrainDistillConfig:
    """RNAS-CL retraining terms, read only by runs with distillation (RunSpec.distill):
    loss += kl_weight·KL(teacher ‖ student) + γ·L_attn with the searched (fixed) tutors."""

    loss_form: RnasClLossForm = spec(
        "public",
        doc="L_attn with one-hot tutors: public (the authors' code) Σ_i sqrt(d_i) | paper "
        "Σ_i d_i / (n_s·n_t); d_i = batch-mean squared distance to the tutor's map",
    )
    gamma: float = spec(1.0, lo=0.0, hi=1e6, doc="γ: weight of the attention loss")
    kl_weight: float = spec(1.0, lo=0.0, hi=1e6, doc="weight of KL(teacher ‖ student)")
    temperature: float = spec(1.0, lo=0.0, hi=100.0, lo_open=True, doc="softmax temperature T of the KL term")
    map_size: int = spec(4, lo=1, hi=256, doc="attention maps are resized to map_size x map_size (pixels)")


@dataclass(frozen=True)
class RetrainConfig:
    init_channels: int = spec(36, lo=1, hi=1024, doc="C of the final network")
    layers: int = spec(20, lo=1, hi=100, doc="cells in the final network")
    drop_path: float = spec(0.0, lo=0.0, hi=1.0, hi_open=True)
    train: TrainConfig = spec(factory=TrainConfig)
    distill: RetrainDistillConfig = spec(factory=RetrainDistillConfig)


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation protocol (docs/design.md §6). ε here is independent of the training ε."""

    n_examples: int = spec(1000, lo=1, doc="test examples every attack is measured on")
    epsilon: float = spec(8 / 255, lo=0.0, hi=1.0, doc="L∞ radius, pixel units")
    epsilon_l2: float = spec(0.5, lo=0.0, hi=100.0, doc="L2 radius for AutoAttack-L2, C&W and DeepFool")
    pgd_step_size: float = spec(2 / 255, lo=0.0, hi=1.0, lo_open=True, doc="absolute PGD step")
    pgd_restarts: int = spec(1, lo=1, hi=100)
    cw_steps: int = spec(
        1000,
        lo=1,
        hi=10_000,
        doc="C&W-L2: Adam steps per binary-search step (docs/evaluation.md: the convergence measurement)",
    )
    cw_binary_search_steps: int = spec(5, lo=1, hi=50, doc="C&W-L2: binary-search steps over the constant c")
    cw_initial_const: float = spec(
        1.0e-3,
        lo=0.0,
        hi=1.0e4,
        lo_open=True,
        doc="C&W-L2: c of the first binary-search step (×10 until an adversarial is found)",
    )
    deepfool_steps: int = spec(50, lo=1, hi=10_000)
    eps_sweep: tuple[float, ...] = spec(
        factory=tuple, item_lo=0.0, item_hi=1.0, doc="ε values for the accuracy-vs-ε curve"
    )
    attacks: tuple[str, ...] = spec(
        factory=lambda: ("fgsm", "pgd20", "pgd100", "autoattack", "autoattack_l2", "cw", "deepfool"),
        doc="attacks to run",
    )
    batch_size: int = spec(256, lo=1)
    # Certified accuracy at `epsilon` (L∞) with sound margin bounds (rnas.bounds, DSRNA).
    certify_method: Literal["both", "ibp", "crown", "none"] = spec(
        "both", doc="certified accuracy: ibp | crown (CROWN-IBP) | both (per spec the tighter) | none (skip)"
    )
    certify_batch_size: int = spec(128, lo=1, hi=65_536, doc="examples per bound computation (bounds memory)")
    certify_intermediate: Literal["ibp", "crown"] = spec(
        "ibp",
        doc="CROWN's intermediate bounds: ibp (CROWN-IBP, one backward pass) | crown (full CROWN: a "
        "backward pass per ReLU layer; much tighter, minutes per 100 examples on small networks)",
    )
    certify_eps_sweep: tuple[float, ...] = spec(
        factory=lambda: (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3),
        item_lo=0.0,
        item_hi=1.0,
        doc="L∞ radii (pixel units, each > certify_radius_min) of the certified-accuracy-vs-ε curve; they also "
        "bracket the certified-radius bisection (empty: no curve)",
    )
    certify_radius_steps: int = spec(
        8,
        lo=0,
        hi=64,
        doc="geometric bisection steps per certified radius (one bound "
        "pass each; 0: no bisection, the radius is the largest "
        "certified sweep ε)",
    )
    certify_radius_min: float = spec(
        1e-10, lo=0.0, hi=1.0, lo_open=True, doc="smallest radius tried: an example not certified here has radius 0"
    )
    # Sanity checks (rnas.evaluation.sanity); radii in pixel units, accuracies as fractions.
    sanity_large_epsilon: float = spec(
        0.5, lo=0.0, hi=1.0, lo_open=True, doc="L∞ radius at which PGD-20 must leave at most chance accuracy"
    )
    sanity_large_epsilon_l2: float = spec(
        4.0, lo=0.0, hi=100.0, lo_open=True, doc="L2 radius at which APGD-CE (L2) must leave at most chance accuracy"
    )
    sanity_square_queries: int = spec(
        1000, lo=1, hi=100_000, doc="queries of the stand-alone Square attack (black-box check)"
    )
    sanity_tolerance: float = spec(
        0.01, lo=0.0, hi=1.0, doc="accuracy slack (fraction) of the PGD/FGSM/ε/Square comparisons"
    )
    sanity_max_zero_grad_fraction: float = spec(
        0.0, lo=0.0, hi=1.0, doc="largest share of examples allowed an all-zero input gradient"
    )


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = spec(True, doc="log to MLflow")
    store: str = spec("mlflow.db", doc="SQLite file (relative to the project root) unless MLFLOW_TRACKING_URI is set")
    experiment_prefix: str = spec("rnas", doc="experiment name is <prefix>-<dataset>")


@dataclass(frozen=True)
class Params:
    pipeline: PipelineConfig = spec(factory=PipelineConfig)
    data: DataConfig = spec(factory=DataConfig)
    teacher: TeacherConfig = spec(factory=TeacherConfig)
    search: SearchConfig = spec(factory=SearchConfig)
    retrain: RetrainConfig = spec(factory=RetrainConfig)
    evaluate: EvaluateConfig = spec(factory=EvaluateConfig)
    tracking: TrackingConfig = spec(factory=TrackingConfig)


# --------------------------------------------------------------------------------------
# Conversion and validation
# --------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"


def _check_range(path: str, value: float, meta: dict[str, Any]) -> None:
    lo, hi = meta.get("lo"), meta.get("hi")
    lo_open, hi_open = meta.get("lo_open", False), meta.get("hi_open", False)
    bad = (lo is not None and (value < lo or (lo_open and value == lo))) or (
        hi is not None and (value > hi or (hi_open and value == hi))
    )
    if bad:
        raise ParamsError(f"{path}: {value!r} is out of range; allowed: {_range_text(meta)}")


def _range_text(meta: dict[str, Any]) -> str:
    lo, hi = meta.get("lo"), meta.get("hi")
    left = "(" if meta.get("lo_open") else "["
    right = ")" if meta.get("hi_open") else "]"
    return f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"


def _optional_inner(tp: Any) -> Any:
    """T for ``T | None`` (the per-method overrides), else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _convert(path: str, value: Any, tp: Any, meta: dict[str, Any]) -> Any:
    inner = _optional_inner(tp)
    if inner is not None:  # an override: null (or absent) keeps the common key
        return None if value is None else _convert(path, value, inner, meta)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ParamsError(f"{path}: expected a mapping (section), got {_describe(value)}")
        return _build(tp, value, path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ParamsError(f"{path}: {value!r} is not allowed; choose one of {', '.join(map(str, choices))}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{path}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{path}: expected an integer, got {_describe(value)}")
        _check_range(path, value, meta)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = ""
            if isinstance(value, str):
                hint = " (YAML reads 1e-3 as a string: write 1.0e-3)"
            raise ParamsError(f"{path}: expected a number, got {_describe(value)}{hint}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ParamsError(f"{path}: must be finite, got {value!r}")
        _check_range(path, value, meta)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{path}: expected a string, got {_describe(value)}")
        return value
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{path}: expected a list, got {_describe(value)}")
        item_meta = {"lo": meta.get("item_lo"), "hi": meta.get("item_hi")}
        return tuple(_convert(f"{path}[{i}]", v, item_tp, item_meta) for i, v in enumerate(value))
    raise TypeError(f"unsupported field type {tp!r} at {path}")  # a bug in this module


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            where = f"{prefix}.{key}" if prefix else str(key)
            known = ", ".join(fields) or "(none: this block takes no keys)"
            raise ParamsError(f"{where}: unknown key; known keys here: {known}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            path = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _convert(path, data[name], hints[name], dict(f.metadata))
    return cls(**kwargs)


def _cross_checks(p: Params) -> None:
    """Constraints that span fields or need registries (imported lazily)."""
    from rnas.runs import RUNS, resolve_run

    for i, run in enumerate(p.pipeline.runs):
        try:
            resolve_run(run)
        except KeyError:
            raise ParamsError(f"pipeline.runs[{i}]: unknown run {run!r}; known runs: {', '.join(RUNS)}") from None
    for i, run in enumerate(p.pipeline.runs):
        source = resolve_run(run).arch_from
        if source is not None and source not in p.pipeline.runs:
            raise ParamsError(
                f"pipeline.runs[{i}]: {run!r} retrains the architecture of {source!r}; "
                f"list {source!r} in pipeline.runs too"
            )
    if len(set(p.pipeline.runs)) != len(p.pipeline.runs):
        raise ParamsError("pipeline.runs: a run is listed twice")
    if not p.pipeline.seeds:
        raise ParamsError("pipeline.seeds: give at least one seed")
    if not p.pipeline.runs:
        raise ParamsError("pipeline.runs: give at least one run")
    for section in ("teacher", "retrain"):
        tr: TrainConfig = getattr(p, section).train
        if tr.lr_min > tr.lr:
            raise ParamsError(f"{section}.train.lr_min: {tr.lr_min} exceeds {section}.train.lr ({tr.lr})")
    from rnas.evaluation.protocol import PROTOCOL_ATTACKS as KNOWN_EVAL_ATTACKS

    for i, name in enumerate(p.evaluate.attacks):
        if name not in KNOWN_EVAL_ATTACKS:
            raise ParamsError(f"evaluate.attacks[{i}]: unknown attack {name!r}; known: {', '.join(KNOWN_EVAL_ATTACKS)}")
    for i, eps in enumerate(p.evaluate.certify_eps_sweep):
        if not eps > p.evaluate.certify_radius_min:
            raise ParamsError(
                f"evaluate.certify_eps_sweep[{i}]: {eps} must exceed evaluate.certify_radius_min "
                f"({p.evaluate.certify_radius_min})"
            )
    for method in [f.name for f in dataclasses.fields(MethodsConfig)]:
        s, where = search_for(p, method), _override_path(p, method)
        if s.w_lr_min > s.w_lr:
            raise ParamsError(f"{where('w_lr_min')}: {s.w_lr_min} exceeds {where('w_lr')} ({s.w_lr})")
        if s.init_channels % s.partial_channels:
            raise ParamsError(
                f"{where('partial_channels')}: {s.partial_channels} must divide "
                f"{where('init_channels')} ({s.init_channels})"
            )
    lrnas, lrnas_epochs = p.search.methods.lrnas, search_for(p, "lrnas").epochs
    if lrnas.warmup_epochs >= lrnas_epochs and any(resolve_run(r).method == "lrnas" for r in p.pipeline.runs):
        raise ParamsError(
            f"search.methods.lrnas.warmup_epochs: {lrnas.warmup_epochs} leaves no epoch of "
            f"contribution estimation ({_override_path(p, 'lrnas')('epochs')} is {lrnas_epochs})"
        )


def search_for(params: Params, method: str) -> SearchConfig:
    """The search settings ``method`` runs with: ``search`` with the method's overrides applied."""
    block = getattr(params.search.methods, method)
    changes = {
        f.name: getattr(block.overrides, f.name)
        for f in dataclasses.fields(block.overrides)
        if getattr(block.overrides, f.name) is not None
    }
    return dataclasses.replace(params.search, **changes) if changes else params.search


def params_for_run(params: Params, run: str) -> Params:
    """``params`` with ``search`` replaced by the settings of the run's method (:func:`search_for`);
    the search loop and every search method read these."""
    from rnas.runs import resolve_run

    search = search_for(params, resolve_run(run).method)
    return params if search is params.search else dataclasses.replace(params, search=search)


def _override_path(params: Params, method: str) -> typing.Callable[[str], str]:
    """key -> the dotted path its effective value for ``method`` comes from (for error messages)."""
    block = getattr(params.search.methods, method).overrides

    def where(key: str) -> str:
        if getattr(block, key) is not None:
            return f"search.methods.{method}.overrides.{key}"
        return f"search.{key}"

    return where


def params_from_dict(data: Any) -> Params:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"params: expected a mapping at the top level, got {_describe(data)}")
    params = _build(Params, data)
    _cross_checks(params)
    return params


def load_params(path: str | Path) -> Params:
    """Read and validate a params file (YAML through ``safe_load`` only)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid safe YAML: {err}".replace("\n", " ")) from None
    return params_from_dict(data)


def to_dict(obj: Any) -> Any:
    """Plain JSON-able dict of a (nested) config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def section(params: Params, dotted: str) -> Any:
    obj: Any = params
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def params_hash(params: Params, keys: typing.Iterable[str] | None = None) -> str:
    """Short stable hash of the whole params or of the listed dotted sections."""
    if keys is None:
        payload: Any = to_dict(params)
    else:
        payload = {k: to_dict(section(params, k)) for k in sorted(keys)}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------
# JSON schema (for Snakemake's validate())
# --------------------------------------------------------------------------------------

#: Sections that occur in several places: written once under ``$defs`` and referenced.
_SHARED_SCHEMAS = ("SearchOverrides",)


def _schema(tp: Any, meta: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    inner = _optional_inner(tp)
    if inner is not None:
        return {
            "anyOf": [_schema(inner, meta, defs), {"type": "null"}],
            **({"description": meta["doc"]} if meta.get("doc") else {}),
        }
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and defs is not None and tp.__name__ in _SHARED_SCHEMAS:
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # placeholder first: a section never contains itself
            defs[tp.__name__] = _schema(tp, meta, None)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        props = {f.name: _schema(hints[f.name], dict(f.metadata), defs) for f in dataclasses.fields(tp)}
        out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
        if tp.__doc__ and not tp.__doc__.startswith(tp.__name__ + "("):
            out["description"] = " ".join(tp.__doc__.split())
        return out
    out = {}
    if meta.get("doc"):
        out["description"] = meta["doc"]
    if origin is Literal:
        out["enum"] = list(typing.get_args(tp))
    elif tp is bool:
        out["type"] = "boolean"
    elif tp in (int, float):
        out["type"] = "integer" if tp is int else "number"
        if meta.get("lo") is not None:
            out["exclusiveMinimum" if meta.get("lo_open") else "minimum"] = meta["lo"]
        if meta.get("hi") is not None:
            out["exclusiveMaximum" if meta.get("hi_open") else "maximum"] = meta["hi"]
    elif tp is str:
        out["type"] = "string"
    elif origin is tuple:
        (item_tp, _e) = typing.get_args(tp)
        out["type"] = "array"
        out["items"] = _schema(item_tp, {"lo": meta.get("item_lo"), "hi": meta.get("item_hi")}, defs)
    return out


def json_schema() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    schema = _schema(Params, {}, defs)
    schema["$defs"] = defs
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "rnas params.yaml"
    return schema
