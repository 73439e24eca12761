"""Matmul FLOPs of a compiled XLA program, read from its optimised HLO text.

XLA's own `cost_analysis()` counts the body of a while loop once, so a step that scans over
layers (or over microbatches, attention blocks, loss chunks) reports a fraction of its work.
This counts every dot and convolution of every computation, times the number of times it
runs: while bodies by their trip count (JAX's loops count an s32 from 0 while `i < N`),
fusions and calls once per call site. Only matmuls are counted (like the model FLOPs they are
compared with); the numbers are per device of the SPMD program.
"""
from __future__ import annotations

import math
import re
from typing import Iterator

_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%(\S+)\s+\(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s+=\s+(.+?)\s+([\w\-]+)\((.*)$")
_SHAPE = re.compile(r"^[a-z]\w*\[([\d,]*)\]")
_CALLEES = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


def _dims(shape_text: str) -> list[int] | None:
    match = _SHAPE.match(shape_text)
    if match is None:  # tuples, tokens
        return None
    return [int(d) for d in match.group(1).split(",") if d]


def _operands(args: str) -> list[str]:
    """Names of the operands: the `%name`s before the closing parenthesis of the call."""
    depth, end = 1, len(args)
    for i, ch in enumerate(args):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            end = i
            break
    return re.findall(r"%([\w.\-]+)", args[:end])


class _Computation:
    def __init__(self, name: str):
        self.name = name
        self.shapes: dict[str, list[int] | None] = {}
        self.lines: list[tuple[str, str, str, str]] = []  # (name, type, opcode, rest)


def _parse(text: str) -> tuple[dict[str, _Computation], str]:
    computations: dict[str, _Computation] = {}
    entry, current = "", None
    for line in text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = computations.setdefault(header.group(1), _Computation(header.group(1)))
            if line.startswith("ENTRY"):
                entry = header.group(1)
            continue
        if line.startswith("}"):
            current = None
            continue
        instruction = _INSTRUCTION.match(line) if current is not None else None
        if instruction:
            name, type_text, opcode, rest = instruction.groups()
            current.shapes[name] = _dims(type_text)
            current.lines.append((name, type_text, opcode, rest))
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return computations, entry


def _matmul_flops(comp: _Computation, name: str, opcode: str, rest: str) -> float:
    out = comp.shapes.get(name)
    operands = _operands(rest)
    if out is None or len(operands) < 2:
        return 0.0
    lhs, rhs = comp.shapes.get(operands[0]), comp.shapes.get(operands[1])
    if opcode == "dot":
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
        if lhs is None or contracting is None:
            return 0.0
        depth = math.prod(lhs[int(d)] for d in contracting.group(1).split(",") if d)
        return 2.0 * math.prod(out) * depth
    labels = re.search(r"dim_labels=\w*_(\w+)->", rest)  # convolution: kernel labels, e.g. "io" or "01io"
    if rhs is None or labels is None or len(labels.group(1)) != len(rhs):
        return 0.0
    per_output = math.prod(size for size, label in zip(rhs, labels.group(1)) if label != "o")
    return 2.0 * math.prod(out) * per_output


def _trip_count(computations: dict[str, _Computation], condition: str) -> int | None:
    """N of a `counter < N` loop condition (JAX's scans and maps), or None if it is not one."""
    comp = computations.get(condition)
    if comp is None:
        return None
    constants = {}
    for name, _, opcode, rest in comp.lines:
        if opcode == "constant":
            value = re.match(r"\s*(-?\d+)\)", rest)
            if value:
                constants[name] = int(value.group(1))
    for _, _, opcode, rest in comp.lines:
        if opcode == "compare" and "direction=LT" in rest:
            operands = _operands(rest)
            if len(operands) == 2 and operands[1] in constants:
                return constants[operands[1]]
    return None


def _callees(rest: str) -> Iterator[tuple[str, str]]:
    for kind, callee in _CALLEES.findall(rest):
        yield kind, callee
    for branches in _BRANCHES.findall(rest):
        for callee in re.findall(r"%([\w.\-]+)", branches):
            yield "branch", callee


def matmul_flops(hlo_text: str) -> dict[str, float | int]:
    """{"flops": matmul FLOPs of one run of the ENTRY computation, "loops": while loops seen,
    "unknown_trip_counts": loops counted once because their trip count could not be read}."""
    computations, entry = _parse(hlo_text)
    memo: dict[str, float] = {}
    stats = {"loops": 0, "unknown_trip_counts": 0}

    def total(name: str) -> float:
        if name in memo:
            return memo[name]
        memo[name] = 0.0  # guards against cycles (there are none in valid HLO)
        comp = computations.get(name)
        flops = 0.0
        for inst, _, opcode, rest in comp.lines if comp else ():
            if opcode in ("dot", "convolution"):
                flops += _matmul_flops(comp, inst, opcode, rest)
            callees = dict(_callees(rest)) if opcode != "while" else {}
            if opcode == "while":
                body = re.search(r"body=%([\w.\-]+)", rest)
                condition = re.search(r"condition=%([\w.\-]+)", rest)
                trips = _trip_count(computations, condition.group(1)) if condition else None
                stats["loops"] += 1
                if trips is None:
                    stats["unknown_trip_counts"] += 1
                flops += (trips or 1) * (total(body.group(1)) if body else 0.0)
            elif opcode == "conditional":
                flops += max((total(c) for k, c in _callees(rest)), default=0.0)
            else:
                flops += sum(total(c) for k, c in callees.items() if k in ("calls", "to_apply"))
        memo[name] = flops
        return flops

    return {"flops": total(entry), **stats}
