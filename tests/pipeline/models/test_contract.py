"""The model contract: ModelRef as a value (precision ``auto`` travels as itself), and the models package's
layering (the contract imports no other models module; the loader is the only place they meet)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pipeline.errors import ModelError
from pipeline.models import loader
from pipeline.models.contract import BUILTIN_MODELS, ModelRef, SegmentationModel
from pipeline.models.loader import load_model, runs_on_gpu
from pipeline.models.spectral import vegetation_model
from pipeline.vocab import Precision, choices
from tests.test_layout import REPO, import_graph


def test_auto_is_a_precision_that_travels_as_itself() -> None:
    ref = ModelRef.of("vegetation", precision="auto")
    assert ref.options == (("precision", "auto"),) and ref.precision == "auto"
    assert ModelRef.of("vegetation").precision == "auto"  # no precision means auto
    assert pickle.loads(pickle.dumps(ref)) == ref and hash(ref) == hash(ModelRef.of("vegetation", precision="auto"))


def test_auto_given_overrides_an_earlier_precision_and_none_does_not() -> None:
    ref = ModelRef.of("unet/", precision="fp16")
    assert ref.with_options(precision=None).precision == "fp16"  # None: not given
    assert ref.with_options(precision="auto").precision == "auto"
    assert ModelRef.of(ref, precision="int8").precision == "int8"


@pytest.mark.parametrize("precision", choices(Precision))
def test_every_precision_of_the_vocabulary_is_accepted(precision: str) -> None:
    assert ModelRef.of("unet/", precision=precision).precision == precision


def test_a_misspelt_precision_is_refused_where_the_ref_is_made() -> None:
    with pytest.raises(ModelError, match=r"`precision` 'fp64': choose one of auto, fp32, bf16, fp16, int8"):
        ModelRef.of("unet/", precision="fp64")
    with pytest.raises(ModelError, match="`precision` 'half'"):
        ModelRef.of("vegetation").with_options(precision="half")


def test_auto_means_what_no_precision_means_for_a_builtin_model() -> None:
    batch = np.random.default_rng(0).uniform(0, 1, (1, 2, 8, 8)).astype(np.float32)
    auto = load_model(ModelRef.of("vegetation", precision="auto"))
    plain = load_model(ModelRef.of("vegetation"))
    np.testing.assert_array_equal(auto.predict(batch), plain.predict(batch))


def plain_factory(threshold: float | None = None) -> SegmentationModel:
    """A user's model factory that knows nothing of precision (loaded by name, as a worker would)."""
    return vegetation_model(threshold)


def test_auto_is_not_passed_to_a_model_and_shares_the_cache_with_no_precision() -> None:
    ref = ModelRef.from_factory(plain_factory, threshold=0.3)
    assert load_model(ref.with_options(precision="auto")) is load_model(ref)
    assert load_model(ModelRef.of("vegetation", precision="auto")) is load_model(ModelRef.of("vegetation"))


def test_auto_runs_where_no_precision_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "visible_gpus", lambda: 1)
    assert runs_on_gpu(ModelRef.of("unet/", precision="auto")) is runs_on_gpu("unet/") is True
    assert runs_on_gpu(ModelRef.of("unet/", precision="int8")) is False  # int8 is CPU only
    assert runs_on_gpu(ModelRef.of("vegetation", precision="auto")) is False  # numpy on the CPU
    monkeypatch.setattr(loader, "visible_gpus", lambda: 0)
    assert runs_on_gpu(ModelRef.of("unet/", precision="auto")) is False


def test_the_loader_registers_the_builtin_models() -> None:
    assert {"vegetation", "water", "burn", "bare"} <= set(BUILTIN_MODELS)


def test_the_contract_imports_no_other_models_module() -> None:
    graph = import_graph(REPO)
    models = {m for m in graph if m.startswith("pipeline.models.")}
    assert graph["pipeline.models.contract"] & models == set()
    # one way between bundles and their int8 variants; quantizing sits above both
    assert "pipeline.models.bundle" not in graph["pipeline.models.int8"]
    assert "pipeline.models.quantize" not in graph["pipeline.models.bundle"] | graph["pipeline.models.int8"]
