"""Every pipeline rule: the message names the pipeline, the step and the tensor."""

from __future__ import annotations

import pytest

from manager.domain import PipelineSpec, PipelineStep, Signature, TensorRef, TensorSpec
from manager.errors import PipelineError
from manager.repository.pipeline import shapes_compatible, sort_steps, validate_pipeline


def sig(
    inputs: dict[str, tuple[str, tuple[int, ...]]],
    outputs: dict[str, tuple[str, tuple[int, ...]]],
    *,
    batched: bool = True,
) -> Signature:
    return Signature(
        inputs=tuple(TensorSpec(n, dt, shape) for n, (dt, shape) in inputs.items()),
        outputs=tuple(TensorSpec(n, dt, shape) for n, (dt, shape) in outputs.items()),
        batched=batched,
    )


SCALER = sig({"x": ("FP32", (-1, 4))}, {"y": ("FP32", (-1, 4))})
CLASSIFIER = sig({"x": ("FP32", (-1, 4))}, {"probabilities": ("FP32", (-1, 3))})
ADD = sig({"a": ("FP32", (-1, 4)), "b": ("FP32", (-1, 4))}, {"sum": ("FP32", (-1, 4))})
COUNTER = sig({"x": ("FP32", (-1, 4))}, {"n": ("INT64", (-1, 4))})
FIXED = sig({"x": ("FP32", (1, 4))}, {"y": ("FP32", (1, 4))}, batched=False)


def step(name: str, signature: Signature, model: str | None = None, **inputs: str) -> PipelineStep:
    return PipelineStep(
        name=name,
        model=model or name.replace("_", "-"),
        version=1,
        signature=signature,
        inputs={k: TensorRef.parse(v) for k, v in inputs.items()},
    )


def spec(*steps: PipelineStep, name: str = "fraud", **outputs: str) -> PipelineSpec:
    return PipelineSpec(
        name=name, steps=steps, outputs={k: TensorRef.parse(v) for k, v in outputs.items()}
    )


def error_of(pipeline: PipelineSpec) -> str:
    with pytest.raises(PipelineError) as info:
        validate_pipeline(pipeline)
    return str(info.value)


def assert_names(message: str, *parts: str) -> None:
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def test_a_chain_and_a_diamond_are_valid() -> None:
    validate_pipeline(
        spec(
            step("scale", SCALER, x="$inputs.features"),
            step("classify", CLASSIFIER, x="$scale.y"),
            score="$classify.probabilities",
        )
    )
    validate_pipeline(
        spec(
            step("left", SCALER, x="$inputs.x"),
            step("right", SCALER, x="$inputs.x"),
            step("join", ADD, a="$left.y", b="$right.y"),
            total="$join.sum",
        )
    )


def test_step_input_without_a_source_is_refused() -> None:
    broken = PipelineStep("scale", "scaler", 1, SCALER, inputs={"x": TensorRef("", "")})
    message = error_of(spec(broken, out="$scale.y"))
    assert_names(message, "'fraud'", "'scale'", "'x'", "has no source")


def test_source_naming_an_unknown_step_is_refused() -> None:
    message = error_of(spec(step("scale", SCALER, x="$ghost.y"), out="$scale.y"))
    assert_names(message, "'fraud'", "'scale'", "'x'", "$ghost.y", "no step 'ghost'")


def test_source_naming_a_later_step_is_refused() -> None:
    message = error_of(
        spec(
            step("classify", CLASSIFIER, x="$scale.y"),
            step("scale", SCALER, x="$inputs.x"),
            out="$classify.probabilities",
        )
    )
    assert_names(message, "'fraud'", "'classify'", "'x'", "$scale.y", "comes later")
    assert "before" in message


def test_sort_steps_fixes_the_order_of_a_hand_written_pipeline() -> None:
    pipeline = sort_steps(
        spec(
            step("classify", CLASSIFIER, x="$scale.y"),
            step("scale", SCALER, x="$inputs.x"),
            out="$classify.probabilities",
        )
    )
    assert [s.name for s in pipeline.steps] == ["scale", "classify"]
    validate_pipeline(pipeline)


def test_circular_steps_are_refused_with_the_circle() -> None:
    message = error_of(
        spec(
            step("first", SCALER, x="$second.y"),
            step("second", SCALER, x="$first.y"),
            out="$second.y",
        )
    )
    assert_names(message, "'fraud'", "'first'", "first → second → first", "'x'")
    with pytest.raises(PipelineError, match="circle"):
        sort_steps(spec(step("first", SCALER, x="$first.y"), out="$first.y"))


def test_a_step_reading_its_own_output_is_circular() -> None:
    message = error_of(spec(step("loop", SCALER, x="$loop.y"), out="$loop.y"))
    assert_names(message, "'loop'", "loop → loop", "'x'")


def test_source_tensor_the_step_does_not_output_is_refused() -> None:
    message = error_of(
        spec(
            step("scale", SCALER, x="$inputs.x"),
            step("classify", CLASSIFIER, x="$scale.z"),
            out="$classify.probabilities",
        )
    )
    assert_names(message, "'fraud'", "'classify'", "'x'", "no output 'z'", "'y'")


def test_model_input_not_fed_is_refused() -> None:
    message = error_of(spec(step("join", ADD, a="$inputs.a"), out="$join.sum"))
    assert_names(message, "'fraud'", "'join'", "input 'b'", "not fed")


def test_step_input_the_model_does_not_have_is_refused() -> None:
    message = error_of(spec(step("scale", SCALER, x="$inputs.x", w="$inputs.w"), out="$scale.y"))
    assert_names(message, "'fraud'", "'scale'", "no input 'w'", "'x'")


def test_datatype_mismatch_between_producer_and_consumer_is_refused() -> None:
    message = error_of(
        spec(
            step("count", COUNTER, x="$inputs.x"),
            step("classify", CLASSIFIER, x="$count.n"),
            out="$classify.probabilities",
        )
    )
    assert_names(message, "'fraud'", "'classify'", "'x'", "FP32", "$count.n", "INT64")


def test_incompatible_shapes_are_refused() -> None:
    narrow = sig({"x": ("FP32", (-1, 3))}, {"y": ("FP32", (-1, 3))})
    message = error_of(
        spec(
            step("scale", SCALER, x="$inputs.x"),
            step("narrow", narrow, x="$scale.y"),
            out="$narrow.y",
        )
    )
    assert_names(message, "'fraud'", "'narrow'", "'x'", "[-1, 3]", "$scale.y", "[-1, 4]")


def test_rank_mismatch_is_refused() -> None:
    flat = sig({"x": ("FP32", (-1, 4, 1))}, {"y": ("FP32", (-1, 4, 1))})
    message = error_of(
        spec(step("scale", SCALER, x="$inputs.x"), step("flat", flat, x="$scale.y"), out="$flat.y")
    )
    assert_names(message, "'flat'", "'x'", "[-1, 4, 1]")


def test_dynamic_dims_match_anything_and_the_batch_dim_is_not_compared() -> None:
    loose = sig({"x": ("FP32", (-1, -1))}, {"y": ("FP32", (-1, -1))})
    validate_pipeline(
        spec(
            step("scale", SCALER, x="$inputs.x"), step("loose", loose, x="$scale.y"), out="$loose.y"
        )
    )
    assert shapes_compatible((8, 4), (-1, 4), batched=True)
    assert shapes_compatible((8, 4), (2, 4), batched=True)
    assert not shapes_compatible((8, 4), (2, 4), batched=False)
    assert not shapes_compatible((-1, 4), (-1,), batched=True)


def test_mixing_batched_and_non_batched_steps_is_refused() -> None:
    message = error_of(
        spec(
            step("scale", SCALER, x="$inputs.x"), step("fixed", FIXED, x="$scale.y"), out="$fixed.y"
        )
    )
    assert_names(message, "'fraud'", "'fixed'", "'x'", "[1, 4]", "'scale'", "batched")


def test_pipeline_input_read_with_different_types_is_refused() -> None:
    ints = sig({"x": ("INT64", (-1, 4))}, {"y": ("INT64", (-1, 4))})
    message = error_of(
        spec(
            step("scale", SCALER, x="$inputs.features"),
            step("ints", ints, x="$inputs.features"),
            a="$scale.y",
            b="$ints.y",
        )
    )
    assert_names(message, "'ints'", "'x'", "'features'", "'scale'", "INT64", "FP32")


def test_pipeline_output_referring_to_an_unknown_step_is_refused() -> None:
    message = error_of(spec(step("scale", SCALER, x="$inputs.x"), out="$ghost.y"))
    assert_names(message, "'fraud'", "output 'out'", "$ghost.y", "no step 'ghost'")


def test_pipeline_output_referring_to_an_unknown_tensor_is_refused() -> None:
    message = error_of(spec(step("scale", SCALER, x="$inputs.x"), out="$scale.nothing"))
    assert_names(message, "'fraud'", "'scale'", "output 'out'", "no output 'nothing'")


def test_pipeline_output_referring_to_a_pipeline_input_is_refused() -> None:
    message = error_of(spec(step("scale", SCALER, x="$inputs.x"), y="$scale.y", echo="$inputs.x"))
    assert_names(message, "'fraud'", "output 'echo'", "pipeline input 'x'")


def test_pipeline_without_outputs_is_refused() -> None:
    message = error_of(spec(step("scale", SCALER, x="$inputs.x")))
    assert_names(message, "'fraud'", "has no outputs")


def test_pipeline_without_steps_is_refused() -> None:
    assert_names(error_of(spec(out="$a.b")), "'fraud'", "has no steps")


def test_duplicate_step_names_are_refused() -> None:
    message = error_of(
        spec(
            step("scale", SCALER, x="$inputs.x"), step("scale", SCALER, x="$inputs.x"), y="$scale.y"
        )
    )
    assert_names(message, "'fraud'", "'scale'", "two steps")


@pytest.mark.parametrize(
    ("pipeline", "parts"),
    [
        (
            spec(step("scale", SCALER, x="$inputs.x"), name="Bad Name", y="$scale.y"),
            ["invalid pipeline name 'Bad Name'"],
        ),
        (
            spec(step("Scale!", SCALER, x="$inputs.x"), y="$Scale!.y"),
            ["'fraud'", "invalid step name 'Scale!'"],
        ),
        (
            spec(step("scale", SCALER, "../up", x="$inputs.x"), y="$scale.y"),
            ["'fraud'", "'scale'", "invalid model name '../up'"],
        ),
        (
            spec(step("scale", SCALER, x="$inputs.b a d"), y="$scale.y"),
            ["'fraud'", "'scale'", "invalid tensor name 'b a d'", "'x'"],
        ),
        (
            spec(step("scale", SCALER, x="$inputs.x"), **{"bad name": "$scale.y"}),
            ["'fraud'", "invalid tensor name 'bad name'"],
        ),
        (
            spec(step("inputs", SCALER, x="$inputs.x"), y="$inputs.y"),
            ["'fraud'", "step 'inputs'", "rename"],
        ),
    ],
)
def test_bad_names_are_refused(pipeline: PipelineSpec, parts: list[str]) -> None:
    assert_names(error_of(pipeline), *parts)


def test_version_below_one_is_refused() -> None:
    bad = PipelineStep("scale", "scaler", 0, SCALER, inputs={"x": TensorRef("inputs", "x")})
    assert_names(error_of(spec(bad, y="$scale.y")), "'scale'", "version 0")


def test_a_step_output_exposed_twice_is_refused() -> None:
    message = error_of(spec(step("scale", SCALER, x="$inputs.x"), a="$scale.y", b="$scale.y"))
    assert_names(message, "'fraud'", "'scale'", "output 'y'", "'a'", "'b'", "twice")


def test_a_step_nobody_uses_is_refused() -> None:
    message = error_of(
        spec(
            step("scale", SCALER, x="$inputs.x"), step("idle", SCALER, x="$inputs.x"), y="$scale.y"
        )
    )
    assert_names(message, "'fraud'", "'idle'", "'y'", "remove the step")


def test_output_named_like_a_pipeline_input_is_refused() -> None:
    message = error_of(spec(step("scale", SCALER, x="$inputs.x"), x="$scale.y"))
    assert_names(message, "'fraud'", "'scale'", "output 'x'", "pipeline input")


def test_ensemble_tensor_name_collisions_are_refused() -> None:
    message = error_of(
        spec(
            step("scale", SCALER, x="$inputs.scale.y"),
            step("classify", CLASSIFIER, x="$scale.y"),
            out="$classify.probabilities",
        )
    )
    assert_names(message, "'fraud'", "'scale'", "output 'y'", "'scale.y'", "pipeline input")
