"""`python -m shopstream.write_keys create|list|revoke` (and `invoke keys ...`): the key file of the settings."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from shopstream.settings import get_settings

from . import WriteKeyError, create_key, read_keys, revoke_key

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Manage the ingestion API's write keys.")


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="the key's name, stamped on its records as Source")],
    rate: Annotated[float | None, typer.Option(help="requests per second at most (default 2000)", min=0.001)] = None,
    burst: Annotated[
        float | None, typer.Option(help="requests at once at most (default: one second's worth)", min=1)
    ] = None,
) -> None:
    """Create a key and print it, once: it is stored only as a hash."""
    path = get_settings().write_keys_file
    try:
        key = create_key(path, name, rate_per_s=rate, burst=burst)
    except (WriteKeyError, ValueError) as e:
        Console(stderr=True).print(f"shopstream: {e}", markup=False)
        raise typer.Exit(1) from None
    Console(stderr=True).print(
        f"created write key {name!r} in {path}; it is shown only now. Send it as `Authorization: Bearer <key>`:",
        markup=False,
        soft_wrap=True,
    )
    print(key)


@app.command("list")
def list_keys() -> None:
    """Show every key (name, created, revoked, rate, hash prefix): never a key itself."""
    path = get_settings().write_keys_file
    table = Table(title=f"write keys in {path}")
    for column in ("name", "created", "revoked", "rate/s", "burst", "sha256"):
        table.add_column(column, no_wrap=True)
    for k in read_keys(path):
        table.add_row(
            k.name,
            f"{k.created:%Y-%m-%d %H:%M:%S}Z",
            f"{k.revoked:%Y-%m-%d %H:%M:%S}Z" if k.revoked else "",
            f"{k.rate_per_s:g}",
            f"{k.capacity:g}",
            k.hash_prefix + "…",
        )
    Console().print(table)


@app.command()
def revoke(name: Annotated[str, typer.Argument(help="the key's name")]) -> None:
    """Revoke the live key of NAME: the API answers 403 to it within about a second."""
    path = get_settings().write_keys_file
    try:
        revoke_key(path, name)
    except WriteKeyError as e:
        Console(stderr=True).print(f"shopstream: {e}", markup=False)
        raise typer.Exit(1) from None
    Console(stderr=True).print(f"revoked write key {name!r}", markup=False)


def main(argv: list[str] | None = None) -> None:
    app(args=argv, prog_name="shopstream.write_keys")


if __name__ == "__main__":
    main()
