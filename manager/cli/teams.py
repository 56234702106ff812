"""``lastmile login / whoami / workspace / member / key / principal / audit``."""

from __future__ import annotations

import getpass
import sys

import typer

from manager.cli.common import JsonOpt, WorkspaceOpt, client, emit, err, kv_table, settings, table
from manager.errors import InvalidInput
from manager.names import KEY_RE
from manager.private_files import write_secret
from manager.sdk import Lastmile, read_credentials

workspace_app = typer.Typer(help="Workspaces: one per team.", no_args_is_help=True)
member_app = typer.Typer(help="Who is in a workspace, with which role.", no_args_is_help=True)
key_app = typer.Typer(help="API keys: yours, or (owner) anyone's.", no_args_is_help=True)
principal_app = typer.Typer(help="Users of this server (owner).", no_args_is_help=True)


def login(
    key: str | None = typer.Option(
        None, "--key", help="API key (default: read from standard input, or prompted)."
    ),
    api_url: str | None = typer.Option(
        None, "--api-url", help="Management API (default: LASTMILE_API_URL or the local one)."
    ),
    as_json: JsonOpt = False,
) -> None:
    """Check an API key against the API and store it (mode 0600) for later commands."""
    s = settings()
    if key is None:
        key = getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.readline()
    key = key.strip()
    if not KEY_RE.fullmatch(key):
        raise InvalidInput("that is not a Lastmile API key", hint="keys look like lm_<id>_<secret>")
    from manager.sdk import resolve_connection

    url = api_url or (s.api_url or resolve_connection(s)[0])
    with Lastmile(url, api_key=key) as lm:
        me = lm.whoami()
    path = s.credentials_path
    data = read_credentials(path)
    data.setdefault("servers", {})[url.rstrip("/")] = {"key": key, "principal": me["principal"]}
    import json

    write_secret(path, json.dumps(data, indent=2))
    emit(
        me | {"stored_in": str(path)},
        as_json,
        f"logged in to {url} as [bold]{me['principal']}[/bold]; key stored in {path}",
    )


def logout(as_json: JsonOpt = False) -> None:
    """Forget the stored key for the API this would talk to."""
    s = settings()
    from manager.sdk import resolve_connection

    url = (s.api_url or resolve_connection(s)[0]).rstrip("/")
    path = s.credentials_path
    data = read_credentials(path)
    removed = data.get("servers", {}).pop(url, None) is not None
    if removed:
        import json

        write_secret(path, json.dumps(data, indent=2))
    emit({"removed": removed}, as_json, "logged out" if removed else "no key was stored")


def whoami(as_json: JsonOpt = False) -> None:
    """Who the API takes you for, and your roles."""
    with client() as lm:
        me = lm.whoami()
    rows = [("principal", me["principal"]), ("key", me["key_id"]), ("owner", me["is_owner"])]
    rows += [(f"workspace {ws}", role) for ws, role in me["workspaces"].items()]
    emit(me, as_json, kv_table("You", rows))


@workspace_app.command("create")
def workspace_create(name: str = typer.Argument(...), as_json: JsonOpt = False) -> None:
    """Create a workspace (server owner)."""
    with client() as lm:
        info = lm.create_workspace(name)
    emit(info, as_json, f"workspace [bold]{name}[/bold] created")


@workspace_app.command("list")
def workspace_list(as_json: JsonOpt = False) -> None:
    """Workspaces you are a member of."""
    with client() as lm:
        items = lm.workspaces()
    emit(
        items,
        as_json,
        table(
            "Workspaces",
            ["name", "your role", "created"],
            [[w["name"], w["role"], w["created_at"]] for w in items],
        ),
    )


@workspace_app.command("delete")
def workspace_delete(name: str = typer.Argument(...), as_json: JsonOpt = False) -> None:
    """Delete an empty workspace (its admin)."""
    with client() as lm:
        lm.delete_workspace(name)
    emit({"deleted": name}, as_json, f"workspace {name} deleted")


@member_app.command("list")
def member_list(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Members of the workspace and their roles."""
    with client(workspace) as lm:
        items = lm.members()
    emit(
        items,
        as_json,
        table(
            "Members",
            ["principal", "kind", "role", "since"],
            [[m["principal"], m["kind"], m["role"], m["since"]] for m in items],
        ),
    )


@member_app.command("add")
def member_add(
    principal: str = typer.Argument(...),
    role: str = typer.Option(..., "--role", help="viewer, editor or admin."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a member or change their role (workspace admin)."""
    with client(workspace) as lm:
        info = lm.set_member(principal, role)
    emit(info, as_json, f"{principal} is {role} in {lm.workspace}")


@member_app.command("remove")
def member_remove(
    principal: str = typer.Argument(...), workspace: WorkspaceOpt = None, as_json: JsonOpt = False
) -> None:
    """Remove a member (workspace admin)."""
    with client(workspace) as lm:
        lm.remove_member(principal)
    emit({"removed": principal}, as_json, f"{principal} removed from {lm.workspace}")


def _show_key(info: dict, as_json: bool) -> None:  # type: ignore[type-arg]
    if as_json:
        emit(info, True)
        return
    err.print("[yellow]this key is shown once: keep it now[/yellow]")
    print(info["key"])  # plain stdout so that `… | lastmile login` works


@key_app.command("create")
def key_create(
    label: str = typer.Option("", "--label", help="What the key is for."),
    principal: str | None = typer.Option(None, "--principal", help="Owner: for someone else."),
    expires_in_days: int | None = typer.Option(None, "--expires-in-days"),
    service: str | None = typer.Option(
        None, "--service", help="A service account of the workspace instead (workspace admin)."
    ),
    role: str = typer.Option("editor", "--role", help="The service account's role."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make an API key: yours, someone's (owner), or a workspace service account's (--service)."""
    with client(workspace) as lm:
        if service:
            info = lm.create_service_key(service, role=role, expires_in_days=expires_in_days)
        else:
            info = lm.create_key(label=label, principal=principal, expires_in_days=expires_in_days)
    _show_key(info, as_json)


@key_app.command("list")
def key_list(
    principal: str | None = typer.Option(None, "--principal", help="Owner: someone else's."),
    service: bool = typer.Option(False, "--service", help="The workspace's service keys."),
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """API keys (never the keys themselves)."""
    with client(workspace) as lm:
        items = lm.service_keys() if service else lm.keys(principal=principal)
    rows = [
        [
            k["key_id"],
            k["principal"],
            k["label"],
            k["expires_at"],
            k["revoked_at"],
            k["last_used_at"],
        ]
        for k in items
    ]
    emit(
        items,
        as_json,
        table("API keys", ["id", "principal", "label", "expires", "revoked", "last used"], rows),
    )


@key_app.command("revoke")
def key_revoke(key_id: str = typer.Argument(...), as_json: JsonOpt = False) -> None:
    """Revoke a key at once."""
    with client() as lm:
        info = lm.revoke_key(key_id)
    emit(info, as_json, f"key {key_id} revoked")


@principal_app.command("create")
def principal_create(
    name: str = typer.Argument(...),
    workspace: WorkspaceOpt = None,
    role: str | None = typer.Option(None, "--role", help="Make them a member with this role."),
    expires_in_days: int | None = typer.Option(None, "--expires-in-days"),
    as_json: JsonOpt = False,
) -> None:
    """Create a user and their first key (server owner)."""
    with client() as lm:
        info = lm.create_principal(
            name, workspace=workspace if role else None, role=role, expires_in_days=expires_in_days
        )
    _show_key(info, as_json)


@principal_app.command("list")
def principal_list(as_json: JsonOpt = False) -> None:
    """Every user and service account (server owner)."""
    with client() as lm:
        items = lm.principals()
    emit(
        items,
        as_json,
        table(
            "Principals",
            ["name", "kind", "owner", "created"],
            [[p["name"], p["kind"], p["is_owner"], p["created_at"]] for p in items],
        ),
    )


def audit(
    workspace: str | None = typer.Option(None, "--workspace", "-w", help="Only this workspace."),
    action: str | None = typer.Option(None, "--action", help="Actions containing this text."),
    principal: str | None = typer.Option(None, "--principal"),
    limit: int = typer.Option(50, "--limit"),
    as_json: JsonOpt = False,
) -> None:
    """The audit log: every mutating call, newest first (admins and the owner)."""
    with client() as lm:
        items = lm.audit(workspace=workspace, action=action, principal=principal, limit=limit)
    rows = [
        [
            e["ts"],
            e["principal"] or "-",
            e["workspace"],
            e["action"],
            e["status"],
            e["outcome"],
            e["request_id"][:12],
        ]
        for e in items
    ]
    emit(
        items,
        as_json,
        table(
            "Audit log",
            ["when", "who", "workspace", "action", "status", "outcome", "request"],
            rows,
        ),
    )


def events(
    kind: str | None = typer.Option(
        None, "--kind", help="restart, failed, recovered or reconcile."
    ),
    limit: int = typer.Option(50, "--limit"),
    as_json: JsonOpt = False,
) -> None:
    """What the system did on its own, newest first: restarts and why, repairs (owner)."""
    with client() as lm:
        items = lm.events(kind=kind, limit=limit)
    rows = [[e["ts"], e["kind"], e["component"], e["message"]] for e in items]
    emit(items, as_json, table("System events", ["when", "kind", "component", "message"], rows))
