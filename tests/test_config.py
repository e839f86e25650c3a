"""params.yaml loads into frozen pydantic models; bad values are refused before any work."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rnas.config import (
    Params,
    ParamsError,
    TrainConfig,
    json_schema,
    load_params,
    params_from_dict,
    params_hash,
    replace,
    to_dict,
)

ROOT = Path(__file__).resolve().parents[1]


def test_default_params_file_is_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.data.dataset == "digits"
    assert 0 < p.evaluate.epsilon <= 1
    with pytest.raises(AttributeError):
        p.data.dataset = "mnist"  # frozen


def test_full_digits_profile_is_params_yaml_with_every_run():
    """configs/digits_full.yaml differs from params.yaml only in pipeline.runs, which holds the
    default runs, every registered run and a LRNAS budget sweep, and in pipeline.alternative_cells
    (on): so `make run-full` after `make run` reuses every default job and adds the variants,
    ablations and alternative cells."""
    from rnas.runs import RUNS

    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    full = yaml.safe_load((ROOT / "configs" / "digits_full.yaml").read_text())
    default_runs, full_runs = default["pipeline"].pop("runs"), full["pipeline"].pop("runs")
    assert (default["pipeline"].pop("alternative_cells"), full["pipeline"].pop("alternative_cells")) == (False, True)
    assert full == default
    assert set(default_runs) < set(full_runs) and set(RUNS) <= set(full_runs)
    assert len([r for r in full_runs if r.startswith("lrnas_")]) >= 2
    load_params(ROOT / "configs" / "digits_full.yaml")


def test_paper_config_is_valid():
    p = load_params(ROOT / "configs" / "cifar10.yaml")
    assert p.data.dataset == "cifar10"
    assert p.evaluate.epsilon == pytest.approx(8 / 255)
    assert (p.retrain.init_channels, p.retrain.layers) == (36, 20)


@pytest.mark.parametrize(
    "patch, key, allowed",
    [
        ({"evaluate": {"epsilon": -0.1}}, "evaluate.epsilon", "[0.0, 1.0]"),
        ({"evaluate": {"epsilon": 1.5}}, "evaluate.epsilon", "[0.0, 1.0]"),
        ({"search": {"epochs": 0}}, "search.epochs", "[1"),
        ({"teacher": {"train": {"epochs": 0}}}, "teacher.train.epochs", "[1"),
        ({"search": {"arch_lr": "1e-3"}}, "search.arch_lr", "1.0e-3"),
        ({"data": {"dataset": "imagenet"}}, "data.dataset", "cifar10"),
        ({"pipeline": {"runs": ["darts", "nonsense"]}}, "pipeline.runs[1]", "darts"),
        (
            {"search": {"methods": {"darts": {"gamma": 1.0}}}},
            "search.methods.darts.gamma",
            "known keys here: overrides",
        ),
        ({"data": {"datset": "digits"}}, "data.datset", "dataset"),
        ({"pipeline": {"deterministic": "yes"}}, "pipeline.deterministic", "true or false"),
        ({"search": {"layers": 2.5}}, "search.layers", "integer"),
        ({"evaluate": {"attacks": ["fgsm", "bim"]}}, "evaluate.attacks[1]", "pgd20"),
        ({"teacher": {"train": {"lr": 0.01, "lr_min": 0.1}}}, "teacher.train.lr_min", "exceeds"),
        ({"evaluate": {"attacks": ["fgsm", "pgd20", "fgsm"]}}, "evaluate.attacks[2]", "must not repeat"),
        ({"pipeline": {"threads": True}}, "pipeline.threads", "expected an integer, got bool True"),
        ({"evaluate": {"epsilon": float("inf")}}, "evaluate.epsilon", "must be finite"),
        ({"data": 5}, "data", "expected a mapping (section)"),
        ({"pipeline": {"seeds": 0}}, "pipeline.seeds", "expected a list"),
        ({"pipeline": {"seeds": [0, -1]}}, "pipeline.seeds[1]", "[0, inf]"),
        (
            {"search": {"methods": {"lrnas": {"overrides": {"w_lr": 0.0}}}}},
            "search.methods.lrnas.overrides.w_lr",
            "(0.0",
        ),
        ({"data": {"image_size": 2, "datset": "digits"}}, "data.datset", "known keys here: dataset"),
    ],
)
def test_bad_values_are_refused_with_key_and_allowed(patch, key, allowed):
    with pytest.raises(ParamsError) as err:
        params_from_dict(patch)
    msg = str(err.value)
    assert msg.startswith(key), msg
    assert allowed in msg, msg


def test_python_object_tag_is_refused(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("data: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ParamsError, match="not valid safe YAML"):
        load_params(f)


def test_params_load_without_torch_and_know_every_protocol_attack():
    """Loading and validating params (the Snakefile's parse, `rnas init-store`, every light
    command) imports no torch; the attack names it allows are the protocol's registry keys."""
    code = (
        "import sys; from rnas.config import load_params\n"
        f"load_params({str(ROOT / 'configs' / 'digits_full.yaml')!r})\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('rnas'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    from rnas.config import EVALUATE_ATTACKS
    from rnas.evaluation.protocol import PROTOCOL_ATTACKS

    assert tuple(PROTOCOL_ATTACKS) == EVALUATE_ATTACKS


def test_validate_params_command_exit_codes(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text((ROOT / "params.yaml").read_text())
    bad = tmp_path / "bad.yaml"
    data = yaml.safe_load(good.read_text())
    data["evaluate"]["epsilon"] = 2.0
    bad.write_text(yaml.safe_dump(data))
    ok = subprocess.run(
        [sys.executable, "-m", "rnas.cli", "validate-params", str(good)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    no = subprocess.run([sys.executable, "-m", "rnas.cli", "validate-params", str(bad)], capture_output=True, text=True)
    assert no.returncode == 2
    assert "evaluate.epsilon" in no.stderr and "[0.0, 1.0]" in no.stderr


def test_schema_file_is_generated_from_the_models():
    committed = json.loads((ROOT / "workflow" / "schemas" / "params.schema.json").read_text())
    assert committed == json_schema(), "run: rnas params-schema"


def test_schema_rejects_what_the_loader_rejects():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema()
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    jsonschema.validate(data, schema)
    data["evaluate"]["epsilon"] = -1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)


def test_params_hash_tracks_only_listed_sections():
    a = params_from_dict({})
    b = params_from_dict({"evaluate": {"n_examples": 7}})
    assert params_hash(a, ["search"]) == params_hash(b, ["search"])
    assert params_hash(a, ["evaluate"]) != params_hash(b, ["evaluate"])


def test_schema_is_pydantics_without_defaults():
    """The schema is the models' own (model_json_schema) less titles and defaults: Snakemake's
    validate() writes a schema's defaults into the config, which would change the params file's
    text (and digest) that every job reads."""
    schema = json_schema()
    text = json.dumps(schema)
    assert '"default"' not in text
    assert schema["$defs"]["SearchOverrides"]["properties"]["epochs"]["anyOf"][1] == {"type": "null"}
    epsilon = schema["$defs"]["EvaluateConfig"]["properties"]["epsilon"]
    assert (epsilon["minimum"], epsilon["maximum"]) == (0.0, 1.0)
    assert set(Params.model_json_schema()["properties"]) == set(schema["properties"])


def test_models_are_frozen_hashable_and_plain_dicts_hash_as_before():
    a = params_from_dict({"search": {"w_lr": 1}})  # an integer for a number key is stored as a float
    b = params_from_dict({"search": {"w_lr": 1.0}})
    assert a == b and hash(a) == hash(b)
    assert type(a.search.w_lr) is float and params_hash(a) == params_hash(b)
    assert to_dict(a)["pipeline"]["seeds"] == [0]  # tuples become lists, as the hash has always read them
    with pytest.raises(AttributeError):
        a.search = b.search


def test_an_empty_block_reads_as_its_defaults():
    p = params_from_dict(yaml.safe_load("search:\n  methods:\n    darts:\n    lrnas:\n"))
    assert p == params_from_dict({})


def test_replace_validates_like_a_params_file():
    cfg = replace(TrainConfig(), epochs=3)
    assert cfg.epochs == 3 and cfg.perturbation == TrainConfig().perturbation
    with pytest.raises(ParamsError, match=r"^epochs: 0 is out of range; allowed: \[1, 10000\]"):
        replace(cfg, epochs=0)
    with pytest.raises(ParamsError, match="unknown key"):
        replace(cfg, epoch=3)


def test_evaluation_limits_are_checked_once_by_the_params_model():
    """EvalSettings and SanitySettings (what the evaluate stage runs with) check their values with
    the params model's limits, with the same message a params file gets."""
    from rnas.evaluation.protocol import EvalSettings
    from rnas.evaluation.sanity import SanitySettings

    base = dict(epsilon=0.1, epsilon_l2=0.5, pgd_step_size=0.025)
    for kw, key in (
        ({"epsilon": 1.5}, "epsilon"),
        ({"cw_steps": 0}, "cw_steps"),
        ({"eps_sweep": [0.1, 2.0]}, "eps_sweep[1]"),
        ({"attacks": ["fgsm", "fgsm"]}, "attacks[1]"),
        ({"attacks": ["bim"]}, "attacks[0]"),
    ):
        with pytest.raises(ParamsError) as from_settings:
            EvalSettings(**{**base, **kw})
        with pytest.raises(ParamsError) as from_params:
            params_from_dict({"evaluate": kw})
        assert str(from_settings.value) == str(from_params.value)
        assert str(from_settings.value).startswith(f"evaluate.{key}:")
    with pytest.raises(
        ParamsError, match=r"^evaluate\.sanity_tolerance: 1\.5 is out of range; allowed: \[0\.0, 1\.0\]"
    ):
        SanitySettings(tolerance=1.5)
    EvalSettings(**base)
    SanitySettings()
