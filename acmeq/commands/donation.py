"""`acmeq donation`: refunds (and a look at one donation)."""

from __future__ import annotations

from typing import Annotated

import typer

from acmeq.commands.common import settings
from acmeq.commands.render import emit_json, line

app = typer.Typer(help="Donations: refund.", no_args_is_help=True)


@app.command()
def refund(
    donation_id: Annotated[int, typer.Argument(help="The donation's id.")],
    amount: Annotated[
        str | None,
        typer.Option(
            help="Amount in the donation's currency, e.g. 12.50 (default: all that is left)."
        ),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why; kept in the audit trail.")] = "",
    key: Annotated[
        str | None, typer.Option(help="Idempotency key: the same key twice refunds once.")
    ] = None,
    inline: Annotated[
        bool,
        typer.Option("--inline", help="Call the gateway now instead of enqueueing process_refund."),
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Refund a completed donation, fully or partly, through its payment gateway."""
    from acmeq.payments.admin import refund_donation

    result = refund_donation(settings(), donation_id, amount, reason, key, inline)
    if json:
        emit_json(result)
        return
    line(result["message"])
