"""Matmul FLOPs of a compiled XLA program, read from its optimised HLO text.

XLA's own `cost_analysis()` counts the body of a while loop once, so a step that scans over
layers (or over microbatches, attention blocks, loss chunks) reports a fraction of its work.
This counts every dot and convolution of every computation, times the number of times it
runs: while bodies by their trip count (`for (i = init; i < N; i += step)`: JAX's scans and
maps, and the loops of XLA's windowed matmuls),
fusions and calls once per call site. Only matmuls are counted (like the model FLOPs they are
compared with); the numbers are per device of the SPMD program.
"""
from __future__ import annotations

import math
import re
from typing import Iterator

import numpy as np

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
        self.instructions: dict[str, tuple[str, str]] = {}  # name -> (opcode, rest)
        self.root: str | None = None


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
            current.instructions[name] = (opcode, rest)
            if line.lstrip().startswith("ROOT"):
                current.root = name
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
    return _convolution_flops(out, lhs, rhs, rest)


def _window(rest: str, key: str, rank: int, default: int) -> list[list[int]]:
    """A window attribute (`size=1x4`, `pad=0_0x3_3`, ...) as one list of ints per spatial dim."""
    window = re.search(r"window=\{([^}]*)\}", rest)
    field = re.search(rf"\b{key}=([\d_x\-]+)", window.group(1)) if window else None
    if field is None:
        return [[default, default] if key == "pad" else [default] for _ in range(rank)]
    return [[int(v) for v in dim.split("_")] for dim in field.group(1).split("x")]


def _valid_pairs(out: int, size: int, stride: int, pad_low: int, lhs_dilate: int, rhs_dilate: int, length: int) -> int:
    """(output position, window position) pairs of one spatial dim that read a real input element
    (not padding, not a hole of lhs dilation): how XLA's cost analysis counts a convolution."""
    position = np.arange(out)[:, None] * stride + np.arange(size)[None, :] * rhs_dilate - pad_low
    valid = (position >= 0) & (position <= (length - 1) * lhs_dilate) & (position % lhs_dilate == 0)
    return int(valid.sum())


def _convolution_flops(out: list[int], lhs: list[int] | None, rhs: list[int] | None, rest: str) -> float:
    """2 x output batch x output features x kernel input features x the valid window positions.
    TPU lowers batched dots to convolutions whose batch dims are padded windows, hence the count."""
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", rest)
    if lhs is None or rhs is None or labels is None:
        return 0.0
    lhs_labels, rhs_labels, out_labels = labels.groups()
    if (len(lhs_labels), len(rhs_labels), len(out_labels)) != (len(lhs), len(rhs), len(out)):
        return 0.0
    spatial = sorted(label for label in out_labels if label.isdigit())
    sizes = _window(rest, "size", len(spatial), 1)
    strides = _window(rest, "stride", len(spatial), 1)
    pads = _window(rest, "pad", len(spatial), 0)
    lhs_dilates = _window(rest, "lhs_dilate", len(spatial), 1)
    rhs_dilates = _window(rest, "rhs_dilate", len(spatial), 1)
    pairs = 1
    for d, label in enumerate(spatial):
        pairs *= _valid_pairs(out[out_labels.index(label)], sizes[d][0], strides[d][0], pads[d][0],
                              lhs_dilates[d][0], rhs_dilates[d][0], lhs[lhs_labels.index(label)])
    outputs = out[out_labels.index("b")] * out[out_labels.index("f")]
    return 2.0 * outputs * rhs[rhs_labels.index("i")] * pairs


def _source(comp: _Computation, name: str) -> tuple[str, str] | None:
    """(opcode, rest) of the instruction `name` comes from, through copies and converts."""
    for _ in range(8):
        found = comp.instructions.get(name)
        if found is None or found[0] not in ("copy", "convert", "bitcast"):
            return found
        name = _operands(found[1])[0]
    return None


def _constant(comp: _Computation, name: str) -> int | None:
    found = _source(comp, name)
    value = re.match(r"\s*(-?\d+)\)", found[1]) if found and found[0] == "constant" else None
    return int(value.group(1)) if value else None


def _tuple_index(comp: _Computation, name: str) -> int | None:
    found = _source(comp, name)
    index = re.search(r"index=(\d+)", found[1]) if found and found[0] == "get-tuple-element" else None
    return int(index.group(1)) if index else None


def _trip_count(computations: dict[str, _Computation], caller: _Computation, rest: str) -> int | None:
    """Iterations of a `for (i = init; i < N; i += step)` while loop (JAX's scans and maps, XLA's
    windowed matmul loops), or None when the loop is not of that form."""
    condition = computations.get(re.search(r"condition=%([\w.\-]+)", rest).group(1))
    body = computations.get(re.search(r"body=%([\w.\-]+)", rest).group(1))
    if condition is None or body is None or condition.root is None or body.root is None:
        return None
    opcode, compare = condition.instructions[condition.root]
    operands = _operands(compare)
    if opcode != "compare" or "direction=LT" not in compare or len(operands) != 2:
        return None
    index, limit = _tuple_index(condition, operands[0]), _constant(condition, operands[1])
    if index is None or limit is None:
        return None
    # The body's new counter: add(get-tuple-element(param, index), step).
    updated = _operands(body.instructions[body.root][1])
    increment = _source(body, updated[index]) if index < len(updated) else None
    if increment is None or increment[0] != "add":
        return None
    terms = _operands(increment[1])
    steps = [_constant(body, t) for t in terms if _tuple_index(body, t) != index]
    if len(steps) != 1 or not steps[0] or not any(_tuple_index(body, t) == index for t in terms):
        return None
    init_operands = _operands(rest)
    initial = caller.instructions.get(init_operands[0]) if init_operands else None
    start = 0  # JAX's loops count from 0; use the initial value when it can be read
    if initial is not None and initial[0] == "tuple":
        value = _constant(caller, _operands(initial[1])[index])
        start = value if value is not None else 0
    return max(0, -(-(limit - start) // steps[0]))


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
                trips = _trip_count(computations, comp, rest)
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
