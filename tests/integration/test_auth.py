"""Keys, roles and workspaces against the real app on SQLite and PostgreSQL: who may do what
where, a foreign workspace is invisible (404), bad keys are refused, every change is audited."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from manager import store
from tests.integration.api_harness import Api, running_api
from tests.onnx_models import make_affine

WS = "/api/v1/workspaces"


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    yield from running_api(tmp_path / "home", database_url)


def _upload(api: Api, key: str, workspace: str, name: str, path: Path) -> Any:
    return api.call(
        "POST",
        f"{WS}/{workspace}/models/{name}/versions",
        key,
        content=path.read_bytes(),
        params={"filename": path.name},
        headers={"content-type": "application/octet-stream"},
    )


def test_owner_key_is_made_once_with_mode_0600(api: Api) -> None:
    path = api.settings.owner_key_path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    me = api.call("GET", "/api/v1/whoami").json()
    assert me["principal"] == "owner" and me["is_owner"] is True
    with Session(api.client.app.state.system.platform.engine) as session:  # type: ignore[attr-defined]
        keys = session.exec(select(store.ApiKey)).all()
        assert len(keys) == 1 and api.owner_key not in keys[0].secret_sha256
        assert keys[0].secret_sha256 != api.owner_key


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic dXNlcjpwYXNz", "Bearer lm_000000000000_" + "A" * 43, "Bearer x"],
)
def test_calls_without_a_valid_key_are_401(api: Api, authorization: str | None) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    for method, path in (
        ("GET", f"{WS}"),
        ("GET", f"{WS}/default/models"),
        ("POST", f"{WS}/default/pipelines"),
        ("GET", "/api/v1/audit"),
    ):
        r = api.client.request(method, path, headers=headers, json={})
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"] == "Unauthenticated"
    assert api.client.get("/health").status_code == 200


def test_revoked_and_expired_keys_are_refused(api: Api) -> None:
    api.workspace("team-a")
    key = api.user("alice", "team-a", "editor")
    assert api.call("GET", f"{WS}/team-a", key).status_code == 200
    key_id = key.split("_")[1]
    assert api.call("DELETE", f"/api/v1/keys/{key_id}", key).status_code == 200
    r = api.call("GET", f"{WS}/team-a", key)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]

    made = api.call("POST", "/api/v1/keys", json={"principal": "alice", "expires_in_days": 1})
    fresh = made.json()["key"]
    assert api.call("GET", f"{WS}/team-a", fresh).status_code == 200
    with Session(api.client.app.state.system.platform.engine) as session:  # type: ignore[attr-defined]
        row = session.exec(
            select(store.ApiKey).where(store.ApiKey.key_id == made.json()["key_id"])
        ).one()
        row.expires_at = datetime.now(timezone.utc) - timedelta(seconds=1)
        session.add(row)
        session.commit()
    r = api.call("GET", f"{WS}/team-a", fresh)
    assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_a_foreign_workspace_is_invisible(api: Api, tmp_path: Path) -> None:
    api.workspace("team-a")
    api.workspace("team-b")
    a = api.user("alice", "team-a", "admin")
    b = api.user("bob", "team-b", "admin")
    model = make_affine(tmp_path / "m.onnx", 4)
    assert _upload(api, b, "team-b", "secret", model).status_code == 201  # type: ignore[attr-defined]
    r = api.call("POST", f"{WS}/team-b/pipelines", b, json={"name": "p", "steps": ["secret"]})
    assert r.status_code == 201

    listed = [w["name"] for w in api.call("GET", WS, a).json()["items"]]
    assert listed == ["team-a"]
    probes = [
        ("GET", f"{WS}/team-b"),
        ("GET", f"{WS}/team-b/models"),
        ("GET", f"{WS}/team-b/models/secret"),
        ("GET", f"{WS}/team-b/models/secret/versions/1/artifact"),
        ("GET", f"{WS}/team-b/pipelines/p"),
        ("GET", f"{WS}/team-b/members"),
        ("POST", f"{WS}/team-b/deployments"),
        ("DELETE", f"{WS}/team-b/models/secret/versions/1"),
        ("GET", f"{WS}/team-nope/models"),
    ]
    for method, path in probes:
        body = {"pipeline": "p", "version": 1} if method == "POST" else None
        r = api.call(method, path, a, json=body)
        assert r.status_code == 404, (method, path, r.text)
        assert "does not exist" in r.json()["detail"]
    # the same answer for a workspace that exists and one that does not: nothing leaks
    assert api.call("GET", f"{WS}/team-b/models", a).json()["detail"].replace(
        "team-b", "X"
    ) == api.call("GET", f"{WS}/team-nope/models", a).json()["detail"].replace("team-nope", "X")
    assert api.call("GET", f"{WS}/team-b/models/secret", b).status_code == 200


# role → operation → allowed?
MATRIX = [
    # (operation, minimal role)
    ("list models", "viewer"),
    ("get workspace", "viewer"),
    ("list members", "viewer"),
    ("upload model", "editor"),
    ("create pipeline", "editor"),
    ("configure model", "editor"),
    ("delete version", "editor"),
    ("add member", "admin"),
    ("service key", "admin"),
    ("audit", "admin"),
]
RANK = {"viewer": 1, "editor": 2, "admin": 3}


def _operation(api: Api, key: str, op: str, tmp_path: Path) -> int:
    ws = f"{WS}/team"
    if op == "list models":
        return int(api.call("GET", f"{ws}/models", key).status_code)
    if op == "get workspace":
        return int(api.call("GET", ws, key).status_code)
    if op == "list members":
        return int(api.call("GET", f"{ws}/members", key).status_code)
    if op == "upload model":
        path = make_affine(tmp_path / f"{op}.onnx", 4, output_name="out")
        return int(_upload(api, key, "team", "fresh", path).status_code)  # type: ignore[attr-defined]
    if op == "create pipeline":
        body = {"name": "pipe", "steps": ["base"]}
        return int(api.call("POST", f"{ws}/pipelines", key, json=body).status_code)
    if op == "configure model":
        return int(
            api.call("PUT", f"{ws}/models/base/serving", key, json={"instances": 2}).status_code
        )
    if op == "delete version":
        return int(api.call("DELETE", f"{ws}/models/spare/versions/1", key).status_code)
    if op == "add member":
        return int(api.call("PUT", f"{ws}/members/carol", key, json={"role": "viewer"}).status_code)
    if op == "service key":
        body = {"name": "ci", "role": "editor"}
        return int(api.call("POST", f"{ws}/service-keys", key, json=body).status_code)
    if op == "audit":
        return int(api.call("GET", "/api/v1/audit", key, params={"workspace": "team"}).status_code)
    raise AssertionError(op)


@pytest.mark.parametrize("role", ["viewer", "editor", "admin"])
def test_role_matrix(api: Api, tmp_path: Path, role: str) -> None:
    api.workspace("team")
    api.user("carol")
    key = api.user(f"user-{role}", "team", role)
    owner = api.owner_key
    assert (
        _upload(api, owner, "team", "base", make_affine(tmp_path / "b.onnx", 4)).status_code == 201
    )
    spare = make_affine(tmp_path / "s.onnx", 3)
    assert _upload(api, owner, "team", "spare", spare).status_code == 201  # type: ignore[attr-defined]
    for op, needed in MATRIX:
        status = _operation(api, key, op, tmp_path)
        if RANK[role] >= RANK[needed]:
            assert status < 400, (role, op, status)
        else:
            assert status == 403, (role, op, status)


def test_every_mutating_call_leaves_an_audit_row(api: Api, tmp_path: Path) -> None:
    api.workspace("team")
    key = api.user("dora", "team", "editor")
    calls = [
        ("POST", f"{WS}/team/pipelines", {"name": "p", "steps": ["ghost"]}, 404),
        ("PUT", f"{WS}/team/members/dora", {"role": "admin"}, 403),
        ("POST", f"{WS}/team/pipelines", {"name": "Bad Name", "steps": ["x"]}, 422),
        ("DELETE", "/api/v1/keys/000000000000", None, 404),
    ]
    for method, path, body, status in calls:
        r = api.call(method, path, key, json=body, headers={"x-request-id": f"req-{status}"})
        assert r.status_code == status, (method, path, r.text)
        assert r.headers["x-request-id"] == f"req-{status}"
    r = _upload(api, key, "team", "m", make_affine(tmp_path / "m.onnx", 4))
    assert r.status_code == 201  # type: ignore[attr-defined]
    unauth = api.client.post(f"{WS}/team/pipelines", json={"name": "p", "steps": ["m"]})
    assert unauth.status_code == 401

    rows = api.call("GET", "/api/v1/audit", params={"workspace": "team"}).json()["items"]
    by_request = {row["request_id"]: row for row in rows}
    for _method, _path, _body, status in calls[:3]:
        row = by_request[f"req-{status}"]
        assert row["principal"] == "user-dora" or row["principal"] == "dora"
        assert row["status"] == status and row["outcome"] == "refused"
        assert row["workspace"] == "team"
    upload = next(r for r in rows if "versions" in r["action"])
    assert upload["outcome"] == "ok" and upload["action"].startswith("POST /api/v1/workspaces/")
    assert upload["key_id"] == key.split("_")[1]
    anonymous = [r for r in rows if r["principal"] == "" and r["status"] == 401]
    assert anonymous, rows
    # an editor cannot read the audit log; the owner sees everything
    assert api.call("GET", "/api/v1/audit", key).status_code == 403
    assert len(api.call("GET", "/api/v1/audit").json()["items"]) >= len(rows)


def test_workspaces_members_and_last_admin(api: Api) -> None:
    api.workspace("team")
    key = api.user("erin", "team", "admin")
    api.user("frank")
    assert api.call("POST", WS, key, json={"name": "mine"}).status_code == 403
    assert api.call("POST", WS, json={"name": "team"}).status_code == 409
    r = api.call("PUT", f"{WS}/team/members/frank", key, json={"role": "editor"})
    assert r.status_code == 200 and r.json()["role"] == "editor"
    members = {m["principal"]: m["role"] for m in api.call("GET", f"{WS}/team/members", key).json()}
    assert members == {"erin": "admin", "frank": "editor"}
    r = api.call("PUT", f"{WS}/team/members/erin", key, json={"role": "viewer"})
    assert r.status_code == 409 and "last admin" in r.json()["detail"]
    r = api.call("PUT", f"{WS}/team/members/frank", key, json={"role": "owner"})
    assert r.status_code == 422 and "role" in r.json()["detail"]
    assert api.call("DELETE", f"{WS}/team/members/frank", key).status_code == 204
    assert api.call("DELETE", f"{WS}/team", key).status_code == 204
    assert api.call("GET", f"{WS}/team", key).status_code == 404


def test_service_key_is_scoped_to_its_workspace(api: Api) -> None:
    api.workspace("team")
    api.workspace("other")
    admin = api.user("gail", "team", "admin")
    made = api.call("POST", f"{WS}/team/service-keys", admin, json={"name": "ci", "role": "viewer"})
    assert made.status_code == 201, made.text
    ci = made.json()["key"]
    assert made.json()["principal"] == "team-ci"
    assert api.call("GET", f"{WS}/team/models", ci).status_code == 200
    assert api.call("GET", f"{WS}/other/models", ci).status_code == 404
    assert (
        api.call("POST", f"{WS}/team/pipelines", ci, json={"name": "p", "steps": ["x"]}).status_code
        == 403
    )
    listed = api.call("GET", f"{WS}/team/service-keys", admin).json()
    assert [k["principal"] for k in listed] == ["team-ci"]
    revoked = api.call("DELETE", f"/api/v1/keys/{made.json()['key_id']}", admin)
    assert revoked.status_code == 200
    assert api.call("GET", f"{WS}/team/models", ci).status_code == 401
