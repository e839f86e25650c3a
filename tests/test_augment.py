"""Training-batch augmentation (rnas.data.augment_batch): the crop and flip of the CIFAR papers,
deterministic under the seed, in teacher training / search / retraining, never in evaluation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_splits

from rnas.config import AugmentConfig, TrainConfig, params_from_dict
from rnas.data import augment_batch


def _images(n: int = 6, c: int = 3, size: int = 8) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(7))


def test_off_returns_the_batch_itself_and_draws_nothing():
    x = _images()
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert augment_batch(x, 0, False, g) is x
    assert torch.equal(g.get_state(), state)  # the shuffling stream of a run without augmentation is unchanged


def test_the_same_seed_gives_the_same_batch_and_another_seed_another():
    x = _images()
    a = augment_batch(x, 4, True, torch.Generator().manual_seed(1))
    b = augment_batch(x, 4, True, torch.Generator().manual_seed(1))
    c = augment_batch(x, 4, True, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype


def test_crop_is_a_window_of_the_zero_padded_image_at_the_drawn_offset():
    """By hand: offsets (row, column) are the generator's first 2·B integers in [0, 2p]; each output
    is the H x W window of the zero-padded image there."""
    x, p = _images(), 2
    out = augment_batch(x, p, False, torch.Generator().manual_seed(3))
    offsets = torch.randint(0, 2 * p + 1, (2, len(x)), generator=torch.Generator().manual_seed(3))
    padded = F.pad(x, (p, p, p, p))
    for i in range(len(x)):
        r, c = int(offsets[0, i]), int(offsets[1, i])
        assert torch.equal(out[i], padded[i, :, r : r + 8, c : c + 8])
    assert out.min() >= 0 and out.max() <= 1


def test_flip_mirrors_each_example_or_leaves_it():
    x = _images(n=32)
    out = augment_batch(x, 0, True, torch.Generator().manual_seed(4))
    mirrored = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 0 < sum(mirrored) < len(x)  # both happen (p = 1/2 over 32 examples)


def test_the_trainer_augments_training_batches_deterministically_and_changes_the_result():
    """Two trainings with the same seed and augmentation give the same weights; without
    augmentation the weights differ (so the augmentation is in the training path)."""
    from rnas.models import build_model
    from rnas.training.trainer import Trainer

    splits = tiny_splits()

    def train(augment: AugmentConfig) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model("small_cnn", 10, 1, "digits", width=4, depth=2)
        cfg = TrainConfig(epochs=1, batch_size=8, augment=augment)
        Trainer(model, cfg, torch.device("cpu"), seed=0, progress=False).fit(splits.train, splits.val)
        return model.state_dict()

    on = AugmentConfig(crop_padding=1, flip=True)
    a, b, off = train(on), train(on), train(AugmentConfig())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], off[k]) for k in a if a[k].is_floating_point())


def test_the_search_loop_augments_both_halves_deterministically():
    from conftest import tiny_params

    from rnas.runs import resolve_run
    from rnas.search.loop import run_search
    from rnas.search.methods import make_method

    splits = tiny_splits(n_train=64)
    raw = tiny_params()
    raw["search"].update(batch_size=16, augment={"crop_padding": 1, "flip": True})

    def search(data: dict) -> list[dict[str, float]]:
        torch.manual_seed(0)
        params = params_from_dict(data)
        ctx = {
            "params": params,
            "run": resolve_run("darts"),
            "info": splits.info,
            "device": torch.device("cpu"),
            "seed": 0,
        }
        return run_search(make_method("darts"), ctx, splits, progress=False).history

    first, again = search(raw), search(raw)
    plain = search({**raw, "search": {**raw["search"], "augment": {"crop_padding": 0, "flip": False}}})
    keys = ("weight_loss", "arch_loss", "val_acc")
    assert [[h[k] for k in keys] for h in first] == [[h[k] for k in keys] for h in again]
    assert [h["weight_loss"] for h in first] != [h["weight_loss"] for h in plain]


def test_a_method_override_switches_the_search_augmentation_for_that_method_only():
    from rnas.config import search_for

    p = params_from_dict(
        {
            "search": {
                "augment": {"crop_padding": 4, "flip": True},
                "methods": {"lrnas": {"overrides": {"augment": {"crop_padding": 4}}}},
            }
        }
    )
    assert search_for(p, "darts").augment == AugmentConfig(crop_padding=4, flip=True)
    assert search_for(p, "lrnas").augment == AugmentConfig(crop_padding=4, flip=False)


def test_evaluation_and_validation_never_augment():
    """Checkpoint selection and evaluation read the splits directly: no code path outside the
    training step and the search loop calls augment_batch."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "rnas"
    callers = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", getattr(node.func, "attr", "")) == "augment_batch"
            ):
                callers.add(path.relative_to(root).as_posix())
    assert callers == {"training/trainer.py", "search/loop.py"}


@pytest.mark.parametrize(
    "profile, crop, flip", [("cifar10", 4, True), ("cifar100", 4, True), ("svhn", 4, False), ("mnist", 2, False)]
)
def test_paper_profiles_augment_as_their_papers(profile, crop, flip):
    from pathlib import Path

    from rnas.config import load_params

    p = load_params(Path(__file__).resolve().parents[1] / "configs" / f"{profile}.yaml")
    for aug in (p.teacher.train.augment, p.search.augment, p.retrain.train.augment):
        assert (aug.crop_padding, aug.flip) == (crop, flip)
