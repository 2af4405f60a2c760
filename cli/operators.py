"""`payledger operators`: the console's named operators (add, list, disable, enable, passwd, role).

A password is read from standard input when it is not a terminal (its first line), else asked
twice without echo; it is never an argument (it would sit in the shell's history and `ps`).
Changing a password, a role, or disabling ends the operator's console sessions at once.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from cli.common import SubParsers, load_settings, services_for
from cli.exits import OK, exit_codes
from cli.output import BAD, GOOD, Column, add_json_flag, emit_json, table
from ledger.errors import InvalidRequest
from ledger.operators import Operator, Role, checked_password

__all__ = ["register"]


def _password(prompt: str) -> str:
    if not sys.stdin.isatty():
        return checked_password(sys.stdin.readline().rstrip("\r\n"))
    first = getpass.getpass(prompt)
    if getpass.getpass("again: ") != first:
        raise InvalidRequest("the two passwords differ")
    return checked_password(first)


def _row(op: Operator) -> dict[str, object]:
    return {"name": op.name, "role": op.role.value, "disabled": op.disabled, "created_at": op.created_at}


def cmd_operators(args: argparse.Namespace) -> int:
    settings = load_settings(args, require_merchant=False)
    with services_for(settings) as services:
        operators = services.operators
        if args.action == "add":
            added = operators.add(args.name, Role(args.role), _password(f"password for {args.name}: "))
            print(f"operator {added.name} added ({added.role})")
        elif args.action == "list":
            found = operators.all()
            if args.json:
                emit_json([_row(op) for op in found])
            else:
                rows = [(op.name, op.role.value, "disabled" if op.disabled else "enabled") for op in found]
                table(
                    rows,
                    [Column("name", fold=False), "role", Column("state", styles={"enabled": GOOD, "disabled": BAD})],
                )
        elif args.action == "passwd":
            operators.get(args.name)
            operators.set_password(args.name, _password(f"new password for {args.name}: "))
            print(f"password of {args.name} changed; their sessions have ended")
        elif args.action == "role":
            operators.set_role(args.name, Role(args.role))
            print(f"{args.name} is now {args.role}; their sessions have ended")
        else:
            changed = operators.disable(args.name) if args.action == "disable" else operators.enable(args.name)
            done = "disabled" if args.action == "disable" else "enabled"
            print(f"operator {args.name} {done}" if changed else f"operator {args.name} was already {done}")
    return 0


def register(sub: SubParsers) -> None:
    parser = sub.add_parser(
        "operators",
        help="the console's named operators and their roles",
        description="Roles: viewer (reads), operator (also re-queries, refunds, closes, acknowledges anomalies, "
        "resends and recovers messages), admin (also enables and disables endpoints).",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION", help="what to do")
    refused = exit_codes(OK, (1, "refused: the name exists, a password too short, no such operator"))
    add = actions.add_parser(
        "add", help="add an operator (password from stdin, or asked twice on a terminal)", epilog=refused
    )
    add.add_argument("name", help="1-32 of a-z, 0-9, '.', '_', '-': the name the history records")
    add.add_argument("--role", choices=[r.value for r in Role], required=True, help="what the operator may do")
    listing = actions.add_parser("list", help="every operator with role and status", epilog=refused)
    add_json_flag(listing, "print JSON: [{name, role, disabled, created_at}]")
    passwd = actions.add_parser("passwd", help="set a new password (ends the operator's sessions)", epilog=refused)
    passwd.add_argument("name", help="the operator")
    role = actions.add_parser("role", help="change an operator's role (ends their sessions)", epilog=refused)
    role.add_argument("name", help="the operator")
    role.add_argument("role", choices=[r.value for r in Role], help="the new role")
    for name, text in (("disable", "no more logins; their sessions end at once"), ("enable", "may log in again")):
        switch = actions.add_parser(name, help=text, epilog=refused)
        switch.add_argument("name", help="the operator")
    parser.set_defaults(func=cmd_operators)
