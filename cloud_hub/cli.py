"""``cloud-hub``: run the hub."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from sqlalchemy.engine import make_url

from cloud_hub.api.keys import create_api_key
from cloud_hub.console.accounts import AccountError, Accounts
from cloud_hub.registry import Registry
from cloud_hub.registry.migrate import head_revision
from cloud_hub.server import serve
from cloud_hub.settings import HubSettings
from iot_runtime import ConfigError, configure_logging, load_settings

app = typer.Typer(
    help="The cloud hub: registry, ingest, commands and the HTTP API.", no_args_is_help=True
)
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML settings file (HUB_* environment variables override it)."
    ),
]


def _settings(config: Path | None) -> HubSettings:
    try:
        return load_settings(HubSettings, config)
    except ConfigError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc


@app.command("serve")
def serve_command(config: ConfigOption = None) -> None:
    """Serve the API and ingest agents' messages until interrupted."""
    settings = _settings(config)
    configure_logging(settings.log_level, settings.log_format)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_terminated(settings))


async def _serve_until_terminated(settings: HubSettings) -> None:
    """Serve; SIGTERM (systemd, Kubernetes, a supervisor) stops it as Ctrl-C does: cleanly,
    so the hub flushes its queues and hands its leader lease over at once."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serve(settings)


@app.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate the settings and print them (secrets hidden)."""
    settings = _settings(config)
    typer.echo(settings.model_dump_json(indent=2))


@app.command("create-admin-key")
def create_admin_key(
    config: ConfigOption = None,
    name: Annotated[str, typer.Option(help="Who or what the key is for.")] = "admin",
) -> None:
    """Create an admin API key in the registry and print it (shown once); standard error
    says which registry it was written to."""
    settings = _settings(config)
    new_file = _sqlite_file(settings.registry_url)
    is_new = new_file is not None and not new_file.exists()
    secret = asyncio.run(_create_admin_key(settings, name))
    where = make_url(settings.registry_url).render_as_string(hide_password=True)
    note = " (a new registry: the file did not exist)" if is_new else ""
    typer.echo(f"admin key {name!r} written to registry {where}{note}", err=True)
    typer.echo(secret)


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


async def _create_admin_key(settings: HubSettings, name: str) -> str:
    registry = Registry(settings.registry_url)
    await registry.start()
    try:
        _, secret = await create_api_key(registry, name, "admin")
    finally:
        await registry.close()
    return secret


@app.command()
def migrate(config: ConfigOption = None) -> None:
    """Bring the registry database to this version's schema (Alembic), then exit."""
    settings = _settings(config)
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(_migrate(settings))
    typer.echo(f"registry at revision {head_revision()}")


async def _migrate(settings: HubSettings) -> None:
    registry = Registry(settings.registry_url, auto_migrate=True)
    await registry.start()
    await registry.close()


@app.command("create-user")
def create_user(
    username: Annotated[str, typer.Argument(help="The person's sign-in name.")],
    role: Annotated[
        str, typer.Option(help="viewer, integration, operator, technician or admin.")
    ] = "viewer",
    site: Annotated[str | None, typer.Option(help="Confine the person to one site.")] = None,
    language: Annotated[str, typer.Option(help="zh or en: the console's language.")] = "zh",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Create a console account (a person, not an API key): the password is asked for twice,
    or read from standard input, and stored as an argon2 hash; audited as ``cli``."""
    settings = _settings(config)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        asyncio.run(_create_user(settings, username, password, role, site, language))
    except (AccountError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    scope = f", site {site}" if site else ""
    typer.echo(f"user {username!r} created (role {role}{scope})")


async def _create_user(
    settings: HubSettings, username: str, password: str, role: str, site: str | None, language: str
) -> None:
    registry = Registry(settings.registry_url)
    await registry.start()
    try:
        await Accounts(registry).create_user("cli", username, password, role, site, language)
    finally:
        await registry.close()
