"""`payledger verify`: the whole log re-checked after the fact.

`integrity` recomputes every hash chain and re-verifies every stored signature; `rederive`
replays each order's evidence through today's domain code and compares the decisions.
"""
