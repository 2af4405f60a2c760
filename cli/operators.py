"""`payledger operators`: the console's named operators (add, list, disable, enable, passwd, role).

A password is read from standard input when it is not a terminal (its first line), else asked
twice without echo; it is never an argument (it would sit in the shell's history and `ps`).
Changing a password, a role, or disabling ends the operator's console sessions at once.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from cli.common import SubParsers, load_settings, print_json, services_for
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
                print_json([_row(op) for op in found])
            else:
                for op in found:
                    print(f"{op.name:<32} {op.role.value:<8} {'disabled' if op.disabled else 'enabled'}")
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
        "resends and recovers messages), admin (also enables and disables endpoints). "
        "Exit 0 done, 1 refused (e.g. the name exists), 2 usage error.",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add an operator (password from stdin, or asked twice on a terminal)")
    add.add_argument("name", help="1-32 of a-z, 0-9, '.', '_', '-': the name the history records")
    add.add_argument("--role", choices=[r.value for r in Role], required=True, help="what the operator may do")
    listing = actions.add_parser("list", help="every operator with role and status")
    listing.add_argument("--json", action="store_true", help="print JSON: [{name, role, disabled, created_at}]")
    passwd = actions.add_parser("passwd", help="set a new password (ends the operator's sessions)")
    passwd.add_argument("name", help="the operator")
    role = actions.add_parser("role", help="change an operator's role (ends their sessions)")
    role.add_argument("name", help="the operator")
    role.add_argument("role", choices=[r.value for r in Role], help="the new role")
    for name, text in (("disable", "no more logins; their sessions end at once"), ("enable", "may log in again")):
        switch = actions.add_parser(name, help=text)
        switch.add_argument("name", help="the operator")
    parser.set_defaults(func=cmd_operators)
