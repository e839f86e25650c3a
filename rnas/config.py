"""Typed, validated configuration: ``params.yaml`` -> frozen pydantic models.

One file configures every stage and both runners (Snakemake and dvc). It is read with
``yaml.safe_load`` only, then validated into frozen pydantic (v2) models. Every field declares its
type and allowed range as field constraints next to its default; unknown keys (``extra="forbid"``),
wrong types (scalars are strict: ``1e-3``, which YAML 1.1 reads as a *string*, is no number, and
``true`` no integer), out-of-range values and unknown names are refused *before any work starts*
with a :class:`ParamsError` that names the key path (``search.arch_lr``) and what is allowed.

The JSON schema Snakemake validates with (``workflow/schemas/params.schema.json``) is generated
from these models (:func:`json_schema`, pydantic's ``model_json_schema``), so the two cannot drift
apart. The evaluation limits are checked here only: the evaluation's own settings
(:class:`rnas.evaluation.protocol.EvalSettings`, :class:`rnas.evaluation.sanity.SanitySettings`)
validate through :func:`check_evaluate`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError


class ParamsError(ValueError):
    """A params file is invalid. The message names the key path and what is allowed."""


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"


# --------------------------------------------------------------------------------------
# Field types: strict scalars (no coercion of strings or bools), lists read as tuples
# --------------------------------------------------------------------------------------

Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]  # an int is taken (as a float); inf and nan are not
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


def _list_only(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return value
    raise PydanticCustomError("rnas_list", "expected a list, got {got}", {"got": _describe(value)})


_T = TypeVar("_T")
#: A YAML list (or a tuple), stored as a tuple so that the params stay hashable; ``Items[X]``.
Items = Annotated[tuple[_T, ...], BeforeValidator(_list_only)]


class _Section(BaseModel):
    """Base of every params section: frozen, unknown keys refused, ``None`` (an empty YAML block)
    read as ``{}``. A section built directly (``TrainConfig(epochs=3)``) is validated too: a bad
    value raises pydantic's ``ValidationError`` (a ``ValueError``); :func:`params_from_dict` and
    :func:`replace` raise :class:`ParamsError`. (No ``__init__`` here: pydantic would call it for
    every nested section, and the key path of an error would be lost.)"""

    model_config = ConfigDict(frozen=True, extra="forbid")  # frozen: hashable, as the params were

    # An assignment raises AttributeError, as on the former frozen dataclasses (pydantic's own
    # frozen check raises a ValidationError); pydantic itself never assigns through these.
    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot assign to {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {name!r}")

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data: Any) -> Any:
        if data is None:
            return {}
        if isinstance(data, (dict, cls)):
            return data
        raise PydanticCustomError("rnas_section", "expected a mapping (section), got {got}", {"got": _describe(data)})


# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------

Device = Literal["cpu", "cuda", "auto"]

Perturbation = Literal["clean", "fgsm", "pgd", "trades"]

Schedule = Literal["cosine", "step", "constant"]

DatasetName = Literal["digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn"]

#: (classes, input channels) of each dataset: ``rnas.data.DATASETS`` is built from these, and params
#: validation reads them without importing torch (the LRNAS budget check in :func:`_cross_checks`).
DATASET_SHAPES: dict[str, tuple[int, int]] = {
    "digits": (10, 1),
    "mnist": (10, 1),
    "fashion_mnist": (10, 1),
    "cifar10": (10, 3),
    "cifar100": (100, 3),
    "svhn": (10, 3),
}

TeacherFamily = Literal["small_cnn", "preact_resnet18", "wide_resnet"]


class PipelineConfig(_Section):
    """What the pipeline runs: which runs, which seeds, on what device."""

    runs: Items[Str] = Field(
        default_factory=lambda: ("darts", "random"), description="runs to search/retrain/evaluate (see rnas.runs.RUNS)"
    )
    seeds: Items[Annotated[Int, Field(ge=0)]] = Field(
        default_factory=lambda: (0,), description="one result folder per seed"
    )
    threads: Int = Field(1, ge=1, le=256, description="torch intra-op threads per job (fixed for determinism)")
    device: Device = Field("cpu", description="cpu, cuda or auto (cuda when available)")
    deterministic: Bool = Field(True, description="torch.use_deterministic_algorithms")
    channels_last: Bool = Field(True, description="NHWC memory format for models (faster convs on CPU and GPU)")
    amp: Bool = Field(
        False,
        description="bfloat16 autocast in the trainer and the search step on CUDA, or on a CPU with "
        "native bf16 (avx512_bf16 or amx_bf16 in /proc/cpuinfo; other CPUs: float32 with a warning); "
        "evaluation stays float32",
    )
    compile: Bool = Field(
        False, description="CUDA only: torch.compile the placed models (ignored with a warning on CPU)"
    )
    results: Str = Field("results", description="root folder of all outputs")
    alternative_cells: Bool = Field(
        False,
        description="for every undecided gradient cell-space search, retrain and evaluate the cell it "
        "chose before its final one (rnas alternative; the report sets it beside the final cell)",
    )
    progress: Bool = Field(True, description="show tqdm progress bars")
    teacher_checkpoint: Str = Field(
        "",
        description="checkpoint that runs needing a teacher distil from (any supported "
        "family, with model_args, or a RobustBench / robust-overfitting WRN "
        "state dict, rnas.models.external); empty = the teacher stage's model.pt",
    )
    teacher_normalization: Literal["dataset", "none"] = Field(
        "dataset",
        description="a teacher_checkpoint without model_args (a foreign WRN state dict): the input "
        "normalization its network was trained with: dataset = the dataset's mean/std "
        "(robust-overfitting, Rice et al. 2020) | none = raw [0, 1] inputs (most RobustBench "
        "models); a mean/std stored in the file wins",
    )


class DataConfig(_Section):
    dataset: DatasetName = Field("digits", description="dataset name")
    root: Str = Field("data", description="folder holding torchvision datasets")
    download: Bool = Field(False, description="let torchvision download a missing dataset")
    image_size: Int = Field(
        8, ge=8, le=64, description="digits only: side (pixels); 8 is native, larger upsamples bilinearly"
    )
    val_fraction: Float = Field(
        0.1, gt=0.0, le=0.5, description="fraction of the training pool held out for validation"
    )
    test_fraction: Float = Field(0.2, gt=0.0, le=0.5, description="digits only: fraction held out as the test set")
    train_subset: Int = Field(0, ge=0, description="keep only this many training examples (0 = all)")


class PerturbationConfig(_Section):
    """Adversarial perturbation used *during training* (evaluation has its own ε)."""

    kind: Perturbation = Field("pgd", description="clean | fgsm (random start) | pgd (Madry) | trades")
    epsilon: Float = Field(0.1, ge=0.0, le=1.0, description="L∞ radius in pixel units ([0,1] scale)")
    step_size: Float = Field(0.025, ge=0.0, le=1.0, description="attack step, pixel units")
    steps: Int = Field(7, ge=1, le=1000, description="attack iterations (pgd, trades)")
    trades_beta: Float = Field(6.0, ge=0.0, description="TRADES robustness weight β")


class AugmentConfig(_Section):
    """Training-time augmentation of a batch (rnas.data.augment_batch), drawn from the stage's seeded
    generator: random crop after zero padding, then a horizontal flip. Never applied to the
    validation or test splits (checkpoint selection, evaluation)."""

    crop_padding: Int = Field(
        0,
        ge=0,
        le=16,
        description="random crop after zero-padding every side by this many pixels (CIFAR/SVHN papers: 4; 0 = no crop)",
    )
    flip: Bool = Field(False, description="random horizontal flip with probability 1/2 (CIFAR: yes; SVHN, digits: no)")


class TrainConfig(_Section):
    """One trainer recipe (teacher training and retraining share it)."""

    epochs: Int = Field(10, ge=1, le=10_000, description="training epochs")
    batch_size: Int = Field(64, ge=1, le=65_536, description="examples per step")
    lr: Float = Field(0.05, gt=0.0, le=10.0, description="SGD learning rate")
    lr_min: Float = Field(0.0, ge=0.0, le=10.0, description="cosine floor")
    momentum: Float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: Float = Field(5e-4, ge=0.0, le=1.0)
    schedule: Schedule = Field("cosine", description="learning-rate schedule")
    grad_clip: Float = Field(5.0, ge=0.0, description="max gradient norm (0 = off)")
    perturbation: PerturbationConfig = Field(default_factory=PerturbationConfig)
    select_on: Literal["val_robust", "val_clean", "last"] = Field(
        "val_robust", description="checkpoint selection on the validation split"
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="augmentation of the training batches")


class TeacherConfig(_Section):
    family: TeacherFamily = Field("small_cnn", description="fixed model family of the robust teacher")
    width: Int = Field(32, ge=1, le=1024, description="base channels (small_cnn, preact_resnet18)")
    depth: Int = Field(3, ge=1, le=100, description="stages (small_cnn) or depth (wide_resnet, 6n+4)")
    convs_per_stage: Int = Field(
        1,
        ge=1,
        le=16,
        description="small_cnn only: conv-bn-relu units per stage "
        "(depth·convs_per_stage convs: RNAS-CL's tutor candidates)",
    )
    widen_factor: Int = Field(10, ge=1, le=32, description="wide_resnet only")
    train: TrainConfig = Field(default_factory=TrainConfig)


#: Optimizers of the search's network weights (``search.w_optimizer``); each is built by the registry
#: :data:`rnas.search.base.WEIGHT_OPTIMIZERS` (a test keeps the two in step).
WeightOptimizer = Literal["sgd", "adam"]


class SearchCommon(_Section):
    """Common search settings (DARTS defaults, Liu et al. 2019); a method overrides any of them
    in ``search.methods.<method>.overrides`` (:func:`search_for`)."""

    epochs: Int = Field(50, ge=1, le=10_000)
    batch_size: Int = Field(64, ge=1, le=65_536)
    init_channels: Int = Field(16, ge=1, le=1024, description="C of the supernet")
    layers: Int = Field(8, ge=1, le=100, description="cells in the supernet")
    nodes: Int = Field(4, ge=2, le=8, description="intermediate nodes per cell")
    partial_channels: Int = Field(1, ge=1, le=16, description="PC-DARTS K (1 = full DARTS)")
    w_lr: Float = Field(0.025, gt=0.0, le=10.0)
    w_lr_min: Float = Field(0.001, ge=0.0, le=10.0)
    w_momentum: Float = Field(0.9, ge=0.0, lt=1.0)
    w_weight_decay: Float = Field(3e-4, ge=0.0, le=1.0)
    w_optimizer: WeightOptimizer = Field(
        "sgd",
        description="optimizer of the network weights (rnas.search.base.WEIGHT_OPTIMIZERS), cosine from w_lr to "
        "w_lr_min either way: sgd (w_momentum, w_weight_decay) | adam (betas 0.9, 0.999; w_weight_decay as "
        "L2, as torch.optim.Adam; w_momentum unused)",
    )
    grad_clip: Float = Field(5.0, ge=0.0)
    arch_lr: Float = Field(3e-4, gt=0.0, le=10.0)
    arch_beta1: Float = Field(0.5, ge=0.0, lt=1.0)
    arch_beta2: Float = Field(0.999, ge=0.0, lt=1.0)
    arch_weight_decay: Float = Field(1e-3, ge=0.0, le=1.0)
    arch_warmup_epochs: Int = Field(
        0,
        ge=0,
        le=10_000,
        description="bilevel (DARTS-type) searches: the first N epochs train the weights "
        "only; α moves from epoch N+1 on (capped at search.epochs − 1, so "
        "a short smoke search still moves α)",
    )
    arch_lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="bilevel searches: α's Adam step size per epoch (LRNAS: its step η per estimate): "
        "constant (DARTS) | cosine from arch_lr at the first α epoch towards 0 at the end (as the "
        "weights' lr), so α settles",
    )
    unrolled: Bool = Field(False, description="second-order (unrolled) architecture gradient")
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig,
        description="augmentation of both halves' training batches (the validation split never)",
    )


def _optional_fields(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s fields as (type | None, field with default None and the same range and doc)."""
    out: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        tp = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
        doc = f"unset: search.{name}" + (f"; {f.description}" if f.description else "")
        # typing.Optional, not `tp | None`: a Union for any type (an Annotated or a Literal too).
        out[name] = (typing.Optional[tp], Field(None, description=doc))  # noqa: UP045
    return out


#: Per-method values of the common search keys: each is None (the common ``search.<key>``) or a
#: value validated with that key's own type and range.
SearchOverrides = create_model(
    "SearchOverrides",
    __base__=_Section,
    __doc__="Per-method values of the common search keys (search.<key>); an unset key "
    "keeps the common value (rnas.config.search_for).",
    __module__=__name__,
    **_optional_fields(SearchCommon),
)

_OVERRIDES_DOC = "this method's values of common search keys"


class DartsMethodConfig(_Section):
    """Plain DARTS: nothing beyond the common bilevel settings."""

    overrides: SearchOverrides = Field(default_factory=SearchOverrides, description=_OVERRIDES_DOC)


class RandomMethodConfig(_Section):
    """Random genotype from the cell space (sampled from the seed)."""

    overrides: SearchOverrides = Field(default_factory=SearchOverrides, description=_OVERRIDES_DOC)


RnasDivergence = Literal["kl", "js", "l2", "features"]

RnasNoise = Literal["uniform", "gaussian"]


class RnasMethodConfig(_Section):
    """RNAS (noise examples; this project's reading of the abstract, docs/methods/rnas.md):
    α minimizes CE(clean) + λ·R(clean, noisy), the weights train on noisy examples. The
    ``adv`` variant (run rnas_adv) uses PGD-k examples in place of the noise."""

    lam: Float = Field(
        1.0, ge=0.0, le=1000.0, description="λ: weight of the robustness term R in the architecture loss"
    )
    divergence: RnasDivergence = Field(
        "kl",
        description="R: kl = KL(p_clean ‖ p_noisy) | js = Jensen-Shannon | l2 = squared L2 distance of logits | "
        "features = squared distance of per-example L2-normalized cell outputs, mean over cells",
    )
    noise: RnasNoise = Field(
        "uniform", description="noise kind: uniform in the L∞ ε-ball | gaussian; clipped to [0, 1]"
    )
    noise_scale: Float = Field(
        8 / 255, ge=0.0, le=1.0, description="ε of the uniform ball or σ of the gaussian, pixel units (0 = clean)"
    )
    adv_epsilon: Float = Field(8 / 255, ge=0.0, le=1.0, description="variant adv: PGD L∞ radius, pixel units")
    adv_step_size: Float = Field(2 / 255, ge=0.0, le=1.0, description="variant adv: PGD step, pixel units")
    adv_steps: Int = Field(7, ge=1, le=1000, description="variant adv: PGD iterations (k of PGD-k)")
    overrides: SearchOverrides = Field(default_factory=SearchOverrides, description=_OVERRIDES_DOC)


class WidthSpaceConfig(_Section):
    """RNAS-CL's FBNetV2-style width space (docs/methods/rnas_cl.md): a stem, then stages of inverted-residual
    blocks; each block picks its width from C_max − i·step (i = 0..width_options−1)."""

    stem_channels: Int = Field(8, ge=1, le=1024, description="channels of the 3x3 stem conv (not searched)")
    stage_widths: Items[Annotated[Int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: (8, 16, 24), description="C_max (channels) of each stage's blocks"
    )
    stage_blocks: Items[Annotated[Int, Field(ge=1, le=64)]] = Field(
        default_factory=lambda: (1, 2, 2), description="inverted-residual blocks per stage"
    )
    stage_strides: Items[Annotated[Int, Field(ge=1, le=2)]] = Field(
        default_factory=lambda: (1, 2, 2), description="stride of each stage's first block (the others: 1)"
    )
    expansion: Int = Field(6, ge=1, le=16, description="expansion e: hidden channels = e·C_out")
    kernel: Int = Field(3, ge=1, le=7, description="depthwise kernel side (odd, pixels)")
    width_options: Int = Field(3, ge=1, le=16, description="width choices per block")
    width_step: Float = Field(0.25, gt=0.0, lt=1.0, description="step between width choices, as a fraction of C_max")
    width_step_channels: Int = Field(
        0,
        ge=0,
        le=1024,
        description="step between width choices in channels, the same for every stage (FBNetV2: 4); "
        "0 = width_step·C_max",
    )
    stem_stride: Int = Field(1, ge=1, le=2, description="stride of the stem conv (FBNetV2 on 32x32: 2)")
    stage_width_options: Items[Annotated[Int, Field(ge=1, le=16)]] = Field(
        default_factory=tuple,
        description="width choices per stage (FBNetV2 s3: [2, 4, 4]); empty = width_options for every stage",
    )

    @model_validator(mode="after")
    def _check_stages(self) -> WidthSpaceConfig:
        from rnas.space.widths import width_choices

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
        return self


RnasClLossForm = Literal["public", "paper"]


class RnasClMethodConfig(_Section):
    """RNAS-CL (Nath et al. 2023, docs/methods/rnas_cl.md): cross-layer attention distillation from
    the robust teacher with learned tutors; the width space's search loss is
    α·(CE + kl_weight·KL + γ·L_attn)·C(MACs), with L_attn and the cost factor C set by
    ``loss_form``. Retraining knobs: retrain.distill."""

    loss_form: RnasClLossForm = Field(
        "public",
        description="public (the authors' code): L_attn = Σ_i sqrt(Σ_j g_ij²·d_ij), C = β·log(MACs) | "
        "paper: L_attn = Σ_ij g_ij·d_ij / (n_s·n_t), C = log(MACs)^β; d_ij = batch-mean squared "
        "distance of the normalized attention maps",
    )
    gamma: Float = Field(1.0, ge=0.0, le=1e6, description="γ: weight of the attention loss L_attn")
    kl_weight: Float = Field(1.0, ge=0.0, le=1e6, description="weight of KL(teacher ‖ student)")
    temperature: Float = Field(1.0, gt=0.0, le=100.0, description="softmax temperature T of the KL term")
    map_size: Int = Field(4, ge=1, le=256, description="attention maps are resized to map_size x map_size (pixels)")
    alpha_cost: Float = Field(0.2, gt=0.0, le=100.0, description="α of the cost term α·loss·C(MACs)")
    beta_cost: Float = Field(
        0.5,
        ge=0.0,
        le=100.0,
        description="β of the cost factor: paper form log(MACs)^β (larger: "
        "smaller networks); public form β·log(MACs) (a scale only)",
    )
    tau0: Float = Field(5.0, gt=0.0, le=100.0, description="initial Gumbel-softmax temperature")
    tau_decay: Float = Field(0.045, ge=0.0, le=10.0, description="τ(epoch) = tau0·exp(−tau_decay·epoch)")
    arch_lr: Float = Field(0.1, gt=0.0, le=10.0, description="Adam learning rate of tutor and width logits")
    arch_weight_decay: Float = Field(1e-4, ge=0.0, le=1.0, description="Adam weight decay of tutor and width logits")
    arch_fraction: Float = Field(
        0.2, gt=0.0, lt=1.0, description="width space: the last fraction of each epoch's batches updates the logits"
    )
    tutor_kernels: Items[Annotated[Int, Field(ge=1, le=15)]] = Field(
        default_factory=tuple,
        description="teacher layers (tutor candidates): the outputs of the teacher's k x k convs for k listed here "
        "(the public code's WRN tutors: [3], its 3x3 convs); empty = every Conv2d (1x1 shortcut convs too). "
        "Retraining reads the chosen layers by name from the tutor file",
    )
    width: WidthSpaceConfig = Field(default_factory=WidthSpaceConfig)
    overrides: SearchOverrides = Field(default_factory=SearchOverrides, description=_OVERRIDES_DOC)

    @model_validator(mode="after")
    def _check_cost(self) -> RnasClMethodConfig:
        if self.loss_form == "public" and self.beta_cost == 0.0:
            raise ParamsError(
                "search.methods.rnas_cl.beta_cost: 0 makes the public form's cost factor "
                "β·log(MACs) zero, so the search loss is 0 and nothing trains; give β > 0 "
                "(or loss_form: paper, where β = 0 removes the cost term)"
            )
        return self


LrnasValue = Literal["accuracy", "probability"]


class LrnasMethodConfig(_Section):
    """LRNAS: Monte Carlo Shapley contributions of primitives + greedy selection under a budget.

    α is not trained by gradient: after the warm-up, each epoch estimates every primitive's
    contribution V̂ to clean and FGSM(ε) accuracy (z(ΔA) + z(ΔR), mean over permutations),
    then V ← (1−μ)·V + μ·z_cell(V̂) (V̂ z-scored over each cell type's own primitives, as the
    public LRNAS code) and α ← α + η·V. A run ``lrnas_<budget>`` overrides
    ``budget`` from its name."""

    warmup_epochs: Int = Field(
        15, ge=0, le=10_000, description="epochs of weight training only before the first contribution estimate"
    )
    permutations: Int = Field(
        10, ge=1, le=10_000, description="n: Monte Carlo permutations per epoch (one validation batch each)"
    )
    batch_size: Int = Field(
        64,
        ge=1,
        le=65_536,
        description="examples of the validation batch each permutation is scored on (at most search.batch_size)",
    )
    momentum: Float = Field(0.2, gt=0.0, le=1.0, description="μ: V ← (1−μ)·V + μ·z_cell(V̂), V̂ z-scored per cell type")
    step_size: Float = Field(0.1, gt=0.0, description="η: α ← α + η·V")
    budget: Int = Field(
        2_000_000,
        ge=1,
        description="λ: parameter budget of the final network (retrain.init_channels/layers), parameters",
    )
    fgsm_epsilon: Float = Field(
        8 / 255, ge=0.0, le=1.0, description="ε of the FGSM accuracy in the contributions, pixel units"
    )
    attack_each_coalition: Bool = Field(
        True,
        description="true: FGSM against each switched-off subnetwork (white-box); "
        "false: crafted once per permutation against the full supernet (~3x cheaper)",
    )
    truncation_tolerance: Float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="truncated Monte Carlo: once both accuracies are within "
        "this of the all-off network's, later marginals are 0 (0 = off)",
    )
    coalition_batch: Int = Field(
        16,
        ge=1,
        le=1024,
        description="coalitions of a permutation scored per supernet forward (stacked copies of the "
        "batch, BN statistics per copy; the same values as one by one, faster); 1: one by one",
    )
    batch_stats: Bool = Field(
        True,
        description="score coalitions with BN batch statistics of the scored batch (running "
        "statistics are restored after); false: eval-mode running statistics",
    )
    value: LrnasValue = Field(
        "accuracy",
        description="what a coalition scores on the batch, clean and under FGSM: accuracy (the paper) | "
        "probability (the mean softmax probability of the true class, i.e. the expected accuracy: the "
        "same game made smooth, far less noisy on small batches)",
    )
    overrides: SearchOverrides = Field(default_factory=SearchOverrides, description=_OVERRIDES_DOC)


DsrnaNorm = Literal["linf", "l2"]


class DsrnaMethodConfig(_Section):
    """DSRNA (Hosseini et al., CVPR 2021; docs/methods/dsrna.md): α minimizes L_val − γ·R with a
    differentiable robustness metric R: variant cb = mean certified lower bound of the margin
    f_y − max_{k≠y} f_k over the ε-ball (rnas.bounds), jacobian = −ε·‖∇_x f(x)‖_* (dual norm),
    combined = R_cb + jacobian_weight·R_jac."""

    gamma: Float = Field(0.01, ge=0.0, le=1e6, description="γ: weight of the robustness metric R in L_val − γ·R")
    epsilon: Float = Field(
        8 / 255, ge=0.0, le=100.0, description="ε of the metrics: radius of the ball in `norm`, pixel units"
    )
    norm: DsrnaNorm = Field("linf", description="threat model of the metrics: linf (dual norm L1) | l2 (dual norm L2)")
    jacobian_projection: Literal["top1", "random"] = Field(
        "top1", description="R_jac differentiates the top-1 logit | a random unit projection vᵀf(x) of the logits"
    )
    bound_method: Literal["ibp", "crown"] = Field(
        "ibp",
        description="R_cb's bound: ibp (interval) | crown (CROWN-IBP: IBP intermediate bounds + linear backward pass)",
    )
    jacobian_weight: Float = Field(
        1.0, ge=0.0, le=1e6, description="variant combined: R = R_cb + jacobian_weight·R_jac"
    )
    cb_scale: Literal["log", "linear"] = Field(
        "log",
        description="R_cb per example: linear = the margin lower bound lb | log = sign(lb)·log(1 + |lb|) "
        "(same order; keeps an untrained supernet's lb ≈ −1e16 from drowning L_val)",
    )
    bound_dtype: Literal["float32", "float64"] = Field(
        "float32",
        description="precision of R_cb's bound propagation; float64 where loose bounds overflow float32 "
        "(untrained 8-cell CIFAR supernet: lb ≈ −1e62)",
    )
    overrides: SearchOverrides = Field(default_factory=SearchOverrides, description=_OVERRIDES_DOC)


class MethodsConfig(_Section):
    """One block per method; a method's keys never leak into another's block."""

    darts: DartsMethodConfig = Field(default_factory=DartsMethodConfig)
    random: RandomMethodConfig = Field(default_factory=RandomMethodConfig)
    lrnas: LrnasMethodConfig = Field(default_factory=LrnasMethodConfig)
    rnas_cl: RnasClMethodConfig = Field(default_factory=RnasClMethodConfig)
    rnas: RnasMethodConfig = Field(default_factory=RnasMethodConfig)
    dsrna: DsrnaMethodConfig = Field(default_factory=DsrnaMethodConfig)


class SearchConfig(SearchCommon):
    """Common search settings and one block per method (its keys and its overrides)."""

    methods: MethodsConfig = Field(default_factory=MethodsConfig)


class RetrainDistillConfig(_Section):
    """RNAS-CL retraining terms, read only by runs with distillation (RunSpec.distill):
    loss += kl_weight·KL(teacher ‖ student) + γ·L_attn with the searched (fixed) tutors."""

    loss_form: RnasClLossForm = Field(
        "public",
        description="L_attn with one-hot tutors: public (the authors' code) Σ_i sqrt(d_i) | paper "
        "Σ_i d_i / (n_s·n_t); d_i = batch-mean squared distance to the tutor's map",
    )
    gamma: Float = Field(1.0, ge=0.0, le=1e6, description="γ: weight of the attention loss")
    kl_weight: Float = Field(1.0, ge=0.0, le=1e6, description="weight of KL(teacher ‖ student)")
    temperature: Float = Field(1.0, gt=0.0, le=100.0, description="softmax temperature T of the KL term")
    map_size: Int = Field(4, ge=1, le=256, description="attention maps are resized to map_size x map_size (pixels)")


class RetrainConfig(_Section):
    init_channels: Int = Field(36, ge=1, le=1024, description="C of the final network")
    layers: Int = Field(20, ge=1, le=100, description="cells in the final network")
    drop_path: Float = Field(0.0, ge=0.0, lt=1.0)
    train: TrainConfig = Field(default_factory=TrainConfig)
    distill: RetrainDistillConfig = Field(default_factory=RetrainDistillConfig)


#: The protocol's attack names, the values ``evaluate.attacks`` allows: the keys of
#: :data:`rnas.evaluation.protocol.PROTOCOL_ATTACKS` (tests/test_config.py checks they agree), kept
#: here so that validating params does not import the attack registry and with it torch (~1.4 s
#: of every params load: the Snakefile's parse, ``rnas init-store``).
EVALUATE_ATTACKS: tuple[str, ...] = ("fgsm", "pgd20", "pgd100", "autoattack", "apgd", "autoattack_l2", "cw", "deepfool")


class EvaluateConfig(_Section):
    """Evaluation protocol (docs/design.md §6). ε here is independent of the training ε."""

    n_examples: Int = Field(1000, ge=1, description="test examples every attack is measured on")
    epsilon: Float = Field(8 / 255, ge=0.0, le=1.0, description="L∞ radius, pixel units")
    epsilon_l2: Float = Field(0.5, ge=0.0, le=100.0, description="L2 radius for AutoAttack-L2, C&W and DeepFool")
    pgd_step_size: Float = Field(2 / 255, gt=0.0, le=1.0, description="absolute PGD step")
    pgd_restarts: Int = Field(1, ge=1, le=100)
    cw_steps: Int = Field(
        1000,
        ge=1,
        le=10_000,
        description="C&W-L2: Adam steps per binary-search step (docs/evaluation.md: the convergence measurement)",
    )
    cw_binary_search_steps: Int = Field(5, ge=1, le=50, description="C&W-L2: binary-search steps over the constant c")
    cw_initial_const: Float = Field(
        1.0e-3,
        gt=0.0,
        le=1.0e4,
        description="C&W-L2: c of the first binary-search step (×10 until an adversarial is found)",
    )
    deepfool_steps: Int = Field(50, ge=1, le=10_000)
    eps_sweep: Items[Annotated[Float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=tuple, description="ε values for the accuracy-vs-ε curve"
    )
    attacks: Items[Str] = Field(
        default_factory=lambda: ("fgsm", "pgd20", "pgd100", "autoattack", "autoattack_l2", "cw", "deepfool"),
        description="attacks to run",
    )
    batch_size: Int = Field(256, ge=1)
    certify_method: Literal["both", "ibp", "crown", "none"] = Field(
        "both", description="certified accuracy: ibp | crown (CROWN-IBP) | both (per spec the tighter) | none (skip)"
    )
    certify_batch_size: Int = Field(128, ge=1, le=65_536, description="examples per bound computation (bounds memory)")
    certify_intermediate: Literal["ibp", "crown"] = Field(
        "ibp",
        description="CROWN's intermediate bounds: ibp (CROWN-IBP, one backward pass) | crown (full CROWN: a "
        "backward pass per ReLU layer; much tighter, minutes per 100 examples on small networks)",
    )
    certify_eps_sweep: Items[Annotated[Float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=lambda: (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3),
        description="L∞ radii (pixel units, each > certify_radius_min) of the certified-accuracy-vs-ε curve; they also "
        "bracket the certified-radius search (empty: no curve)",
    )
    certify_radius_steps: Int = Field(
        8,
        ge=0,
        le=64,
        description="certified-radius precision: that of this many geometric bisection steps (upper / radius ≤ "
        "bracket ratio^(2^-steps)), reached by a secant search in at most steps + 3 bound passes; 0: no search, the "
        "radius is the largest certified sweep ε",
    )
    certify_radius_min: Float = Field(
        1e-10, gt=0.0, le=1.0, description="smallest radius tried: an example not certified here has radius 0"
    )
    autoattack_iterations: Int = Field(
        0,
        ge=0,
        le=10000,
        description="APGD and FAB iterations of the AutoAttack attacks (autoattack, apgd, autoattack_l2); 0: "
        "AutoAttack's standard 100. Anything else departs from the standard protocol: for quick tests",
    )
    autoattack_stack_targets: Bool = Field(
        True,
        description="APGD-T runs its target classes side by side, up to batch_size rows per call (the same "
        "per-example attack, its random starts drawn for the whole stack; docs/evaluation.md); false: "
        "pyautoattack's loop, one target after the other",
    )
    certify_float64_below: Float = Field(
        1e-6,
        ge=0.0,
        le=1.0,
        description="radius bound passes at an ε below this run in float64, the others in float32 (~5x faster; "
        "the float32 input box is rounded outward, so it stays sound, but coarse where ε nears float32's "
        "resolution, ~1e-7); 0: float32 only",
    )
    sanity_large_epsilon: Float = Field(
        0.5, gt=0.0, le=1.0, description="L∞ radius at which PGD-20 must leave at most chance accuracy"
    )
    sanity_large_epsilon_l2: Float = Field(
        4.0, gt=0.0, le=100.0, description="L2 radius at which APGD-CE (L2) must leave at most chance accuracy"
    )
    sanity_square_queries: Int = Field(
        1000, ge=1, le=100_000, description="queries of the stand-alone Square attack (black-box check)"
    )
    sanity_tolerance: Float = Field(
        0.01, ge=0.0, le=1.0, description="accuracy slack (fraction) of the PGD/FGSM/ε/Square comparisons"
    )
    sanity_max_zero_grad_fraction: Float = Field(
        0.0, ge=0.0, le=1.0, description="largest share of examples allowed an all-zero input gradient"
    )

    def check_attacks_and_radii(self) -> None:
        """The checks across this section's keys; run with the other checks across keys, once
        every key of the file has been read (:func:`params_from_dict`), and by :func:`check_evaluate`."""
        for i, name in enumerate(self.attacks):
            if name not in EVALUATE_ATTACKS:
                raise ParamsError(
                    f"evaluate.attacks[{i}]: unknown attack {name!r}; known: {', '.join(EVALUATE_ATTACKS)}"
                )
            if name in self.attacks[:i]:
                raise ParamsError(f"evaluate.attacks[{i}]: {name!r} is listed twice (attacks must not repeat)")
        for i, eps in enumerate(self.certify_eps_sweep):
            if not eps > self.certify_radius_min:
                raise ParamsError(
                    f"evaluate.certify_eps_sweep[{i}]: {eps} must exceed evaluate.certify_radius_min "
                    f"({self.certify_radius_min})"
                )


class TrackingConfig(_Section):
    enabled: Bool = Field(True, description="log to MLflow")
    store: Str = Field(
        "mlflow.db", description="SQLite file (relative to the project root) unless MLFLOW_TRACKING_URI is set"
    )
    experiment_prefix: Str = Field("rnas", description="experiment name is <prefix>-<dataset>")


class Params(_Section):
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _check_across_sections(self) -> Params:
        _cross_checks(self)
        return self


# --------------------------------------------------------------------------------------
# Validation errors -> ParamsError (the key path and what is allowed)
# --------------------------------------------------------------------------------------


def _unwrap(tp: Any, meta: list[Any]) -> Any:
    """The type under the Annotated and Optional layers of ``tp``; their constraints go into ``meta``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp, *extra = typing.get_args(tp)
            for m in extra:
                meta.extend(m.metadata if isinstance(m, FieldInfo) else [m])
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


@dataclasses.dataclass
class _Site:
    """Where a validation error lies: its key path, its position in the order the keys are
    checked (unknown keys of a section before its fields, fields in order), the section holding
    the key, and the key's (or list item's) type and constraints."""

    path: str
    order: list[tuple[int, ...]]
    section: type[BaseModel] | None
    tp: Any
    meta: list[Any]


def _locate(root: type[BaseModel], loc: tuple[int | str, ...], prefix: str) -> _Site:
    tp: Any = root
    meta: list[Any] = []
    path, order, section = prefix, [], None
    for part in loc:
        tp = _unwrap(tp, meta)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            section, path = tp, f"{path}.{part}" if path else str(part)
            names = list(tp.model_fields)
            if part not in names:  # an unknown key
                order.append((0,))
                tp, meta = None, []
                continue
            order.append((1, names.index(part)))
            tp, meta = tp.model_fields[part].annotation, list(tp.model_fields[part].metadata)
        elif isinstance(part, int) and typing.get_origin(tp) is tuple:
            path = f"{path}[{part}]"
            order.append((1, part))
            tp, meta = typing.get_args(tp)[0], []
        else:  # not a key of these models (an error of pydantic's own)
            path = f"{path}.{part}" if path else str(part)
            order.append((1, 0))
            tp, meta = None, []
    return _Site(path or "params", order, section, _unwrap(tp, meta), meta)


def _range_text(meta: Iterable[Any]) -> str:
    lo = hi = None
    lo_open = hi_open = False
    for m in meta:
        if isinstance(m, Ge):
            lo, lo_open = m.ge, False
        elif isinstance(m, Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, Le):
            hi, hi_open = m.le, False
        elif isinstance(m, Lt):
            hi, hi_open = m.lt, True
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    return f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"


def _message(error: Any, site: _Site) -> str:
    kind, value, path = error["type"], error.get("input"), site.path
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ParamsError):  # a check across keys names its own keys
        return str(cause)
    if kind.startswith("rnas_"):
        return f"{path}: {error['msg']}"
    if kind in ("extra_forbidden", "invalid_key"):
        known = ", ".join(site.section.model_fields) if site.section is not None else ""
        return f"{path}: unknown key; known keys here: {known or '(none: this block takes no keys)'}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{path}: expected a mapping (section), got {_describe(value)}"
    if kind.startswith("bool_"):
        return f"{path}: expected true or false, got {_describe(value)}"
    if kind.startswith("int_"):
        return f"{path}: expected an integer, got {_describe(value)}"
    if kind.startswith("float_"):
        hint = " (YAML reads 1e-3 as a string: write 1.0e-3)" if isinstance(value, str) else ""
        return f"{path}: expected a number, got {_describe(value)}{hint}"
    if kind == "finite_number":
        return f"{path}: must be finite, got {float(value)!r}"
    if kind.startswith("string_"):
        return f"{path}: expected a string, got {_describe(value)}"
    if kind in ("tuple_type", "list_type"):
        return f"{path}: expected a list, got {_describe(value)}"
    if kind == "literal_error":
        choices = ", ".join(map(str, typing.get_args(site.tp)))
        return f"{path}: {value!r} is not allowed; choose one of {choices}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        shown = float(value) if site.tp is float else value
        return f"{path}: {shown!r} is out of range; allowed: {_range_text(site.meta)}"
    return f"{path}: {error['msg']}"


def _error_message(err: ValidationError, root: type[BaseModel], prefix: str = "") -> str:
    """The first error in the order the keys are read (one message, as a person fixes one key at a time)."""
    errors = err.errors(include_url=False)
    sites = [_locate(root, e["loc"], prefix) for e in errors]
    first = min(range(len(errors)), key=lambda i: (sites[i].order, i))
    return _message(errors[first], sites[first])


_M = TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], data: Any, prefix: str = "") -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ParamsError(_error_message(err, model, prefix)) from None


# --------------------------------------------------------------------------------------
# Checks across keys
# --------------------------------------------------------------------------------------


def _cross_checks(p: Params) -> None:
    """Constraints that span sections or need registries (imported lazily)."""
    from rnas.runs import RUNS, resolve_run

    for i, run in enumerate(p.pipeline.runs):
        try:
            resolve_run(run)
        except KeyError:
            raise ParamsError(f"pipeline.runs[{i}]: unknown run {run!r}; known runs: {', '.join(RUNS)}") from None
    for i, run in enumerate(p.pipeline.runs):
        spec = resolve_run(run)
        if spec.arch_from is not None and spec.arch_from not in p.pipeline.runs:
            raise ParamsError(
                f"pipeline.runs[{i}]: {run!r} retrains the architecture of {spec.arch_from!r}; "
                f"list {spec.arch_from!r} in pipeline.runs too"
            )
        if spec.select_from is not None and spec.select_from not in p.pipeline.runs:
            raise ParamsError(
                f"pipeline.runs[{i}]: {run!r} selects its architecture from the search of {spec.select_from!r}; "
                f"list {spec.select_from!r} in pipeline.runs too"
            )
    if len(set(p.pipeline.runs)) != len(p.pipeline.runs):
        raise ParamsError("pipeline.runs: a run is listed twice")
    if not p.pipeline.seeds:
        raise ParamsError("pipeline.seeds: give at least one seed")
    if not p.pipeline.runs:
        raise ParamsError("pipeline.runs: give at least one run")
    for name in ("teacher", "retrain"):
        tr: TrainConfig = getattr(p, name).train
        if tr.lr_min > tr.lr:
            raise ParamsError(f"{name}.train.lr_min: {tr.lr_min} exceeds {name}.train.lr ({tr.lr})")
    p.evaluate.check_attacks_and_radii()
    for method in MethodsConfig.model_fields:
        s, where = search_for(p, method), _override_path(p, method)
        if s.w_lr_min > s.w_lr:
            raise ParamsError(f"{where('w_lr_min')}: {s.w_lr_min} exceeds {where('w_lr')} ({s.w_lr})")
        if s.init_channels % s.partial_channels:
            raise ParamsError(
                f"{where('partial_channels')}: {s.partial_channels} must divide "
                f"{where('init_channels')} ({s.init_channels})"
            )
    _check_lrnas_budgets(p)
    lrnas, lrnas_epochs = p.search.methods.lrnas, search_for(p, "lrnas").epochs
    if lrnas.warmup_epochs >= lrnas_epochs and any(resolve_run(r).method == "lrnas" for r in p.pipeline.runs):
        raise ParamsError(
            f"search.methods.lrnas.warmup_epochs: {lrnas.warmup_epochs} leaves no epoch of "
            f"contribution estimation ({_override_path(p, 'lrnas')('epochs')} is {lrnas_epochs})"
        )


def _check_lrnas_budgets(p: Params) -> None:
    """Every LRNAS run's budget λ must exceed the parameters of the final network with only
    parameter-free edges (:func:`rnas.space.plan.parameter_floor`): at or below it no parametric
    op fits, and the "selection under λ" is the parameter-free network whatever the search found."""
    from rnas.runs import resolve_run, run_budget
    from rnas.space.plan import parameter_floor

    runs = [(i, run, resolve_run(run)) for i, run in enumerate(p.pipeline.runs)]
    runs = [(i, run, spec) for i, run, spec in runs if spec.method == "lrnas"]
    if not runs:
        return
    classes, channels = DATASET_SHAPES[p.data.dataset]
    r = p.retrain
    floor = parameter_floor(r.init_channels, r.layers, classes, channels, p.search.nodes)
    where = (
        f"{floor:,} parameters, the final network ({p.data.dataset}, retrain.init_channels "
        f"{r.init_channels}, retrain.layers {r.layers}) with every edge parameter-free"
    )
    for i, run, spec in runs:
        budget = run_budget(p.search.methods.lrnas, spec)
        if budget > floor:
            continue
        if spec.variant == "default":
            raise ParamsError(
                f"search.methods.lrnas.budget: {budget:,} leaves no room for a parametric op; it must "
                f"exceed {where} (allowed: > {floor:,})"
            )
        raise ParamsError(
            f"pipeline.runs[{i}]: {run!r} has a budget of {budget:,}, which leaves no room for a "
            f"parametric op; it must exceed {where} (allowed: lrnas_<budget> with budget > {floor:,})"
        )


# --------------------------------------------------------------------------------------
# API
# --------------------------------------------------------------------------------------


def search_for(params: Params, method: str) -> SearchConfig:
    """The search settings ``method`` runs with: ``search`` with the method's overrides applied."""
    block = getattr(params.search.methods, method)
    changes = {name: value for name, value in block.overrides if value is not None}
    return params.search.model_copy(update=changes) if changes else params.search


def params_for_run(params: Params, run: str) -> Params:
    """``params`` with ``search`` replaced by the settings of the run's method (:func:`search_for`);
    the search loop and every search method read these."""
    from rnas.runs import resolve_run

    search = search_for(params, resolve_run(run).method)
    return params if search is params.search else params.model_copy(update={"search": search})


def _override_path(params: Params, method: str) -> Callable[[str], str]:
    """key -> the dotted path its effective value for ``method`` comes from (for error messages)."""
    block = getattr(params.search.methods, method).overrides

    def where(key: str) -> str:
        if getattr(block, key) is not None:
            return f"search.methods.{method}.overrides.{key}"
        return f"search.{key}"

    return where


def replace(obj: _M, /, **changes: Any) -> _M:
    """A copy of the params section ``obj`` with ``changes``, validated as a params file is
    (what ``dataclasses.replace`` was for the former dataclasses)."""
    data = {name: getattr(obj, name) for name in type(obj).model_fields}
    return _validate(type(obj), {**data, **changes})


def check_evaluate(**values: Any) -> EvaluateConfig:
    """Check evaluation settings, given by their ``evaluate.<key>`` names, against the params
    model: the one place the evaluation limits (ranges, types, known and distinct attacks) are
    checked, for params files and for :class:`~rnas.evaluation.protocol.EvalSettings` and
    :class:`~rnas.evaluation.sanity.SanitySettings` built directly. Raises :class:`ParamsError`."""
    evaluate = _validate(EvaluateConfig, values, "evaluate")
    evaluate.check_attacks_and_radii()
    return evaluate


def params_from_dict(data: Any) -> Params:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"params: expected a mapping at the top level, got {_describe(data)}")
    return _validate(Params, data)


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
    """Plain JSON-able dict of a (nested) params section."""
    if isinstance(obj, BaseModel):
        return {name: to_dict(getattr(obj, name)) for name in type(obj).model_fields}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def section(params: Params, dotted: str) -> Any:
    obj: Any = params
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def params_hash(params: Params, keys: Iterable[str] | None = None) -> str:
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


def _tidy(node: Any) -> Any:
    """pydantic's schema without the per-key ``title`` and ``default``: Snakemake's ``validate``
    would write every default into the config (it sets defaults), changing the params file's text
    and digest; descriptions on one line."""
    if isinstance(node, list):
        return [_tidy(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "default"):
            continue
        if key in ("properties", "$defs"):
            out[key] = {name: _tidy(sub) for name, sub in value.items()}
        elif key == "description":
            out[key] = " ".join(value.split())
        elif key in ("enum", "const"):
            out[key] = value
        else:
            out[key] = _tidy(value)
    return out


def json_schema() -> dict[str, Any]:
    schema = _tidy(Params.model_json_schema())
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "rnas params.yaml"
    return schema
