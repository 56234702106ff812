"""The reconciler's diff of what the store wants against what the system holds (pure)."""

from __future__ import annotations

from manager.plan.drift import Action, Published, Seen, Wanted, Wants, is_owned_name, plan

MODEL = Wanted(
    name="ws.scaler",
    config=b"name: 'ws.scaler'",
    versions={1: {"model.onnx": "a1", "model.py": "py"}, 2: {"model.onnx": "a2", "model.py": "py"}},
)
ENSEMBLE = Wanted(
    name="ws.pipe.v1", config=b"name: 'ws.pipe.v1'", versions={1: {}}, ensemble=True,
    uses=("ws.scaler",),
)  # fmt: skip
TARGET = {"url": "http://127.0.0.1:8000", "model": "ws.pipe.v1", "version": "",
          "grpc": "127.0.0.1:8001"}  # fmt: skip


def route(weight: float = 100.0, **target: str) -> dict[str, object]:
    return {"workspace": "ws", "pipeline": "pipe", "strategy": "weighted",
            "variants": [{"name": "pipe/1", "version": 1, "weight": weight,
                          "targets": [dict(TARGET, **target)]}]}  # fmt: skip


ROUTE = route()
WANTS = Wants(models={m.name: m for m in (MODEL, ENSEMBLE)}, routes={"ws/pipe": ROUTE})


def published(want: Wanted) -> Published:
    return Published(want.name, is_dir=True, config=want.config, versions=want.versions)


def in_sync(**changes: object) -> Seen:
    values: dict[str, object] = {
        "repository": {m.name: published(m) for m in (MODEL, ENSEMBLE)},
        "leftovers": (),
        "ready": {"ws.scaler": frozenset({1, 2}), "ws.pipe.v1": frozenset({1})},
        "routes": {"ws/pipe": route(100)},  # 100 vs 100.0 is no difference
    }
    values.update(changes)
    return Seen(**values)  # type: ignore[arg-type]


def kinds(actions: list[Action]) -> list[tuple[str, str]]:
    return [(a.kind, a.target) for a in actions]


def test_nothing_to_do_when_everything_agrees() -> None:
    assert plan(WANTS, in_sync()) == []


def test_a_damaged_version_is_rewritten_and_reloaded_with_its_ensemble() -> None:
    damaged = Published(
        "ws.scaler", is_dir=True, config=MODEL.config,
        versions={1: {"model.onnx": "truncated", "model.py": "py"}, 2: {"model.py": "py"}},
    )  # fmt: skip
    seen = in_sync(repository={"ws.scaler": damaged, "ws.pipe.v1": published(ENSEMBLE)})
    actions = plan(WANTS, seen)
    assert kinds(actions) == [
        ("rewrite", "ws.scaler/1"),
        ("rewrite", "ws.scaler/2"),
        ("load", "ws.scaler"),
        ("load", "ws.pipe.v1"),
    ]
    assert "model.onnx differs" in actions[0].reason
    assert "model.onnx is missing" in actions[1].reason
    assert "is reloaded" in actions[3].reason


def test_a_missing_model_or_config_is_rewritten() -> None:
    no_config = Published("ws.scaler", is_dir=True, config=None, versions=MODEL.versions)
    seen = in_sync(repository={"ws.scaler": no_config})
    assert kinds(plan(WANTS, seen)) == [
        ("rewrite", "ws.scaler/config.pbtxt"),
        ("rewrite", "ws.pipe.v1"),
        ("load", "ws.scaler"),
        ("load", "ws.pipe.v1"),
    ]


def test_what_triton_lacks_is_loaded_models_before_ensembles() -> None:
    seen = in_sync(ready={"ws.scaler": frozenset({1})})
    actions = plan(WANTS, seen)
    assert kinds(actions) == [("load", "ws.scaler"), ("load", "ws.pipe.v1")]
    assert "versions [1]" in actions[0].reason


def test_orphans_are_unloaded_and_removed_only_if_the_manager_named_them() -> None:
    stray = Published("ws.old.v3", is_dir=True, config=b"", versions={1: {}})
    foreign = Published("not-ours", is_dir=True, config=b"", versions={})
    repository = {**in_sync().repository, "ws.old.v3": stray, "ws.gone": stray}
    repository["not-ours"] = foreign
    ready = {**in_sync().ready, "ws.old.v3": frozenset({1}), "someone_else": frozenset({1})}  # type: ignore[dict-item]
    seen = in_sync(repository=repository, ready=ready, leftovers=(".staging/abc",))
    assert kinds(plan(WANTS, seen)) == [
        ("remove", ".staging/abc"),
        ("unload", "ws.old.v3"),
        ("remove", "ws.old.v3"),
        ("remove", "ws.gone"),
    ]


def test_protected_names_are_never_touched() -> None:
    wants = Wants(models=WANTS.models, routes=WANTS.routes, protected=frozenset({"ws.broken"}))
    stray = Published("ws.broken", is_dir=True, config=None, versions={})
    seen = in_sync(
        repository={**in_sync().repository, "ws.broken": stray},
        ready={**in_sync().ready, "ws.broken": frozenset({1})},  # type: ignore[dict-item]
    )
    assert plan(wants, seen) == []


def test_a_version_no_deployment_uses_leaves_after_the_new_config_is_loaded() -> None:
    extra = dict(MODEL.versions) | {3: {"model.onnx": "a3", "model.py": "py"}}
    old = Published("ws.scaler", is_dir=True, config=b"old config", versions=extra)
    seen = in_sync(
        repository={"ws.scaler": old, "ws.pipe.v1": published(ENSEMBLE)},
        ready={"ws.scaler": frozenset({1, 2, 3}), "ws.pipe.v1": frozenset({1})},
    )
    assert kinds(plan(WANTS, seen)) == [
        ("rewrite", "ws.scaler/config.pbtxt"),
        ("load", "ws.scaler"),
        ("load", "ws.pipe.v1"),
        ("remove", "ws.scaler/3"),
    ]


def test_routes_are_compared_without_the_generation() -> None:
    assert plan(WANTS, in_sync(routes={})) == [
        Action(
            "push_routes",
            "gateway",
            "the gateway's routes differ from the live deployments (missing: ws/pipe)",
        )
    ]
    other = {"ws/pipe": route(model="ws.pipe.v2"), "ws/x": {"variants": "garbage"}}
    reason = plan(WANTS, in_sync(routes=other))[0].reason
    assert "not live: ws/x" in reason and "different variants or weights: ws/pipe" in reason
    reason = plan(WANTS, in_sync(routes={"ws/pipe": route(50)}))[0].reason
    assert "different variants or weights: ws/pipe" in reason


def test_nothing_is_planned_for_what_could_not_be_seen() -> None:
    seen = in_sync(ready=None, routes=None, repository={})
    assert kinds(plan(WANTS, seen)) == [("rewrite", "ws.scaler"), ("rewrite", "ws.pipe.v1")]


def test_owned_names_follow_the_naming_scheme() -> None:
    assert is_owned_name("default.scaler")
    assert is_owned_name("default.fraud-pipe.v12")
    assert is_owned_name("default.fraud-pipe.v12.scaler")  # a version's private copy
    for name in ("default", "Default.x", "a.b.c", "a.b.v0", ".staging", "a..b", "a.b.v1.X",
                 "a.b.c.d", "a.b.v1.x.y"):  # fmt: skip
        assert not is_owned_name(name), name
