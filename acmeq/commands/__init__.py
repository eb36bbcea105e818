"""The CLI's command groups: one Typer app per module, joined in :mod:`acmeq.cli`.

Commands parse, call one core function, and render; they hold no logic of their own.
"""
