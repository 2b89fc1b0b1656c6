"""unroll_recurrent: LSTM, GRU and RNN as the ops of their equations, one step after another.

TVM 0.27's importer has no recurrent converter; once --input-shape fixes the sequence length,
every step is known and the layer is a chain of MatMul, Add and activations. The semantics are
the ONNX spec's (and onnxruntime's), gate orders included:

    LSTM (gates i, o, f, c):  i = f(x Wi' + h Ri' + Wbi + Rbi + Pi * c)
                              f = f(x Wf' + h Rf' + Wbf + Rbf + Pf * c)
                              g = g(x Wc' + h Rc' + Wbc + Rbc)
                              c' = f * c + i * g
                              o = f(x Wo' + h Ro' + Wbo + Rbo + Po * c');   h' = o * h(c')
    GRU (gates z, r, h):      z = f(x Wz' + h Rz' + Wbz + Rbz);   r = f(x Wr' + h Rr' + Wbr + Rbr)
                              n = g(x Wh' + (r * h) Rh' + Rbh + Wbh)      linear_before_reset=0
                              n = g(x Wh' + r * (h Rh' + Rbh) + Wbh)      linear_before_reset=1
                              h' = (1 - z) * n + z * h
    RNN:                      h' = f(x Wi' + h Ri' + Wbi + Rbi)

`clip` bounds every gate's input to the activation; directions forward, reverse and
bidirectional; `layout` 0 ([seq, batch, ...]) and 1 ([batch, seq, ...]); initial states; and
`sequence_lens` as a mask: past a batch entry's length its state holds and its output is 0 (a
reverse pass starts at its last valid step, as onnxruntime's does). The input projection x W' of
all steps is one MatMul; each step adds h R'. Needs constant W, R, B and P and a static input
shape; a node with anything else (input_forget=1, an unknown activation) stays, with its reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgepress.passes.naming import add_initializer
from edgepress.passes.registry import PassResult, register_pass
from edgepress.passes.rewrite import onnx_opset, replace_node

log = logging.getLogger(__name__)

OPS = {"LSTM": 4, "GRU": 3, "RNN": 1, "DynamicQuantizeLSTM": 4}  # op -> gates
DOMAINS = {"LSTM": ("", "ai.onnx"), "GRU": ("", "ai.onnx"), "RNN": ("", "ai.onnx"),
           "DynamicQuantizeLSTM": ("com.microsoft",)}  # fmt: skip
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"),
                       "RNN": ("Tanh",), "DynamicQuantizeLSTM": ("Sigmoid", "Tanh", "Tanh")}  # fmt: skip
# DynamicQuantizeLSTM's inputs after the LSTM's eight: W_scale, W_zero_point, R_scale, R_zero_point
QUANTIZED_INPUTS = {"W": (8, 9), "R": (10, 11)}
# Activations that take alpha, beta (consumed in order from the attribute lists, as onnxruntime
# does), with the defaults of the ONNX operators of the same name.
ALPHA = {"LeakyRelu": 0.01, "ThresholdedRelu": 1.0, "ScaledTanh": 1.0, "HardSigmoid": 0.2,
         "Elu": 1.0, "Affine": 1.0}  # fmt: skip
BETA = {"ScaledTanh": 1.0, "HardSigmoid": 0.5, "Affine": 0.0}
PLAIN = ("Sigmoid", "Tanh", "Relu", "Softsign", "Softplus")


@dataclass
class _Activation:
    name: str
    alpha: float | None = None
    beta: float | None = None


def _activations(node: ir.Node) -> list[_Activation]:
    op, attrs = node.op_type, node.attributes
    directions = 2 if attrs.get_string("direction", "forward") == "bidirectional" else 1
    names = list(attrs.get_strings("activations", ())) or list(DEFAULT_ACTIVATIONS[op]) * directions
    alphas = list(attrs.get_floats("activation_alpha", ()))
    betas = list(attrs.get_floats("activation_beta", ()))
    known = {n.lower(): n for n in (*PLAIN, *ALPHA)}
    out = []
    for name in names:
        canonical = known.get(name.lower())
        if canonical is None:
            raise ValueError(f"activation '{name}' is not one of {', '.join(known.values())}")
        act = _Activation(canonical)
        if canonical in ALPHA:
            act.alpha = alphas.pop(0) if alphas else ALPHA[canonical]
        if canonical in BETA:
            act.beta = betas.pop(0) if betas else BETA[canonical]
        out.append(act)
    if len(out) != len(DEFAULT_ACTIVATIONS[op]) * directions:
        raise ValueError(f"{len(out)} activations for {directions} direction(s)")
    return out


class _Builder:
    """Appends nodes to a list; constants become initializers of the graph."""

    def __init__(self, graph: ir.Graph, opset: int, prefix: str) -> None:
        self.tape = ir.tape.Tape()
        self.graph, self.opset, self.prefix = graph, opset, prefix
        self._small: dict[tuple, ir.Value] = {}  # scalars and step indices, made once

    def op(self, op_type: str, *inputs, **attributes) -> ir.Value:
        return self.tape.op(op_type, list(inputs), attributes or None)

    def const(self, array, what: str) -> ir.Value:
        array = np.asarray(array)
        key = (what, array.dtype.str, array.shape, array.tobytes()) if array.size <= 4 else None
        if key is not None and key in self._small:
            return self._small[key]
        value = add_initializer(self.graph, f"{self.prefix}_{what}", array)
        if key is not None:
            self._small[key] = value
        return value

    def split(self, x: ir.Value, parts: int, axis: int = 1) -> list[ir.Value]:
        """Equal parts along `axis` (Split, not Gather: TVM warns on every Gather it imports)."""
        if parts == 1:
            return [x]
        attrs = {"axis": axis, **({"num_outputs": parts} if self.opset >= 18 else {})}
        return list(self.tape.op_multi_out("Split", [x], attrs, num_outputs=parts))

    def activate(self, x: ir.Value, act: _Activation, clip: float | None) -> ir.Value:
        if clip is not None:
            x = self.op("Max", self.op("Min", x, self.scalar(clip)), self.scalar(-clip))
        name = act.name
        if name in PLAIN:
            return self.op(name, x)
        if name == "Affine":
            return self.op("Add", self.op("Mul", x, self.scalar(act.alpha)), self.scalar(act.beta))
        if name == "ScaledTanh":
            tanh = self.op("Tanh", self.op("Mul", x, self.scalar(act.beta)))
            return self.op("Mul", tanh, self.scalar(act.alpha))
        if name == "HardSigmoid":
            return self.op(name, x, alpha=act.alpha, beta=act.beta)
        return self.op(name, x, alpha=act.alpha)

    def scalar(self, value: float) -> ir.Value:
        return self.const(np.float32(value), "scalar")


def _constant(value: ir.Value | None, what: str) -> np.ndarray | None:
    if value is None:
        return None
    if value.const_value is None:
        raise ValueError(f"{what} is not a constant")
    return np.asarray(value.const_value.numpy())


class _Weights:
    """x W' (kind "W") or h R' (kind "R") of one direction, as onnxruntime computes it.

    LSTM, GRU, RNN: W is [D, G*H, I], a float MatMul. onnxruntime's DynamicQuantizeLSTM holds W
    as [D, I, G*H] in 8 bits with per-direction (or per-column) scales and zero points, and
    quantizes its operand per call (all steps' inputs at once, the state once a step): here
    DynamicQuantizeLinear, then the integer product, computed exactly in float32 (products of
    9-bit integers summed over fewer than 256 terms), times the two scales.
    """

    def __init__(self, node: ir.Node) -> None:
        self.node = node
        self.quantized = node.op_type == "DynamicQuantizeLSTM"
        self.float: dict[str, np.ndarray] = {}
        self.scale: dict[str, np.ndarray] = {}
        for kind, index in (("W", 1), ("R", 2)):
            weights = _constant(node.inputs[index], kind)
            if weights is None:
                raise ValueError(f"{kind} is missing")
            if not self.quantized:
                self.float[kind] = np.swapaxes(weights.astype(np.float32), 1, 2)  # [D, in, G*H]
                continue
            s_index, z_index = QUANTIZED_INPUTS[kind]
            scale = _constant(node.inputs[s_index], f"{kind}_scale").astype(np.float32)
            zero = _constant(node.inputs[z_index], f"{kind}_zero_point").astype(np.float32)
            directions = weights.shape[0]
            zero = zero.reshape(directions, 1, -1)  # [D] or [D, G*H]
            self.float[kind] = weights.astype(np.float32) - zero
            self.scale[kind] = scale.reshape(directions, -1)

    def hidden(self) -> int:
        return self.float["R"].shape[1]

    def directions(self) -> int:
        return self.float["W"].shape[0]

    def project(self, b: "_Builder", x: ir.Value, d: int, kind: str) -> ir.Value:
        weight = b.const(np.ascontiguousarray(self.float[kind][d]), kind)
        if not self.quantized:
            return b.op("MatMul", x, weight)
        q, x_scale, x_zero = b.tape.op_multi_out("DynamicQuantizeLinear", [x], num_outputs=3)
        centered = b.op("Sub", b.op("Cast", q, to=ir.DataType.FLOAT),
                        b.op("Cast", x_zero, to=ir.DataType.FLOAT))  # fmt: skip
        scale = b.op("Mul", x_scale, b.const(self.scale[kind][d], f"{kind}_scale"))
        return b.op("Mul", b.op("MatMul", centered, weight), scale)


def why_not_unrollable(node: ir.Node) -> str | None:
    """None when the node can be unrolled, else why not."""
    attrs = node.attributes
    if node.op_type.endswith("LSTM") and attrs.get_int("input_forget", 0):
        return "input_forget=1 is not supported"
    x = node.inputs[0]
    if x is None or x.shape is None or not all(isinstance(d, int) for d in x.shape):
        return "its input's shape is not static (fix it with --input-shape)"
    if x.dtype != ir.DataType.FLOAT:
        return f"its input is {x.dtype}, not float32"
    try:
        _activations(node)
        _Weights(node)
        for i, what in ((3, "B"), (7, "P")):
            if i < len(node.inputs):
                _constant(node.inputs[i], what)
    except ValueError as err:
        return str(err)
    return None


def _zero(value: ir.Value | None) -> bool:
    """Whether an initial state is a constant of zeros (a missing one is zeros too)."""
    if value is None or value.const_value is None:
        return value is None
    return not np.any(value.const_value.numpy())


def _plus(b: "_Builder", gates: ir.Value, recurrent: ir.Value | None) -> ir.Value:
    return gates if recurrent is None else b.op("Add", gates, recurrent)


def _cell_lstm(b: _Builder, gates, h, c, recur, peep, acts, clip):
    i, o, f, g = b.split(_plus(b, gates, recur(h)), 4)
    if peep is not None:
        i = b.op("Add", i, b.op("Mul", c, peep[0]))
        f = b.op("Add", f, b.op("Mul", c, peep[2]))
    i, f = b.activate(i, acts[0], clip), b.activate(f, acts[0], clip)
    c_new = b.op("Add", b.op("Mul", f, c), b.op("Mul", i, b.activate(g, acts[1], clip)))
    if peep is not None:
        o = b.op("Add", o, b.op("Mul", c_new, peep[1]))
    h_new = b.op("Mul", b.activate(o, acts[0], clip), b.activate(c_new, acts[2], None))
    return h_new, c_new


def _cell_gru(b: _Builder, gates, h, r_t, rb_h, acts, clip, before_reset: bool):
    xz, xr, xh = b.split(gates, 3)
    rz, rr, rh_w = r_t  # [H, H] each (transposed)
    z = b.activate(b.op("Add", xz, b.op("MatMul", h, rz)), acts[0], clip)
    r = b.activate(b.op("Add", xr, b.op("MatMul", h, rr)), acts[0], clip)
    if before_reset:
        recurrent = b.op("Mul", r, b.op("Add", b.op("MatMul", h, rh_w), rb_h))
    else:
        recurrent = b.op("Add", b.op("MatMul", b.op("Mul", r, h), rh_w), rb_h)
    n = b.activate(b.op("Add", xh, recurrent), acts[1], clip)
    # h' = (1 - z) * n + z * h = n + z * (h - n)
    return b.op("Add", n, b.op("Mul", z, b.op("Sub", h, n)))


def _unroll(node: ir.Node, graph: ir.Graph, opset: int, prefix: str):
    """(the new nodes, the values that replace `node`'s outputs)."""
    op, attrs = node.op_type, node.attributes
    gates_n = OPS[op]
    direction = attrs.get_string("direction", "forward")
    layout = attrs.get_int("layout", 0)
    clip = attrs.get_float("clip") if "clip" in attrs else None
    acts = _activations(node)
    inputs = list(node.inputs) + [None] * (8 - len(node.inputs))
    lstm = op in ("LSTM", "DynamicQuantizeLSTM")
    weights = _Weights(node)
    num_dir, hidden = weights.directions(), weights.hidden()
    bias = _constant(inputs[3], "B")
    bias = np.zeros((num_dir, 2 * gates_n * hidden), np.float32) if bias is None else bias
    peepholes = _constant(inputs[7], "P") if lstm else None
    b = _Builder(graph, opset, prefix)
    x = inputs[0]
    if layout == 1:
        x = b.op("Transpose", x, perm=[1, 0, 2])
    seq, batch = (int(d) for d in node.inputs[0].shape[:2])
    if layout == 1:
        seq, batch = batch, seq
    lens = inputs[4]
    if lens is not None:
        lens = b.op("Cast", lens, to=ir.DataType.INT32)
    zeros = b.const(np.zeros((batch, hidden), np.float32), "zeros")
    rows = b.const(np.array([batch, hidden], np.int64), "shape")
    step_rows = b.const(np.array([batch, gates_n * hidden], np.int64), "shape")

    def per_direction(state: ir.Value | None) -> list[ir.Value] | None:
        """[D, B, H] (or [B, D, H] in layout 1) -> D values of [B, H]."""
        if state is None:
            return None
        return [b.op("Reshape", v, rows) for v in b.split(state, num_dir, axis=layout)]

    initial_h = None if _zero(inputs[5]) else per_direction(inputs[5])
    initial_c = (None if _zero(inputs[6]) else per_direction(inputs[6])) if lstm else None
    ys, hs, cs = [], [], []
    for d in range(num_dir):
        reverse = direction == "reverse" or d == 1
        acts_d = acts[d * len(DEFAULT_ACTIVATIONS[op]) : (d + 1) * len(DEFAULT_ACTIVATIONS[op])]
        w_b, r_b = bias[d, : gates_n * hidden], bias[d, gates_n * hidden :]
        input_bias = w_b + (r_b if op != "GRU" else np.concatenate([r_b[: 2 * hidden],
                                                                    np.zeros(hidden, np.float32)]))
        projected = b.op(
            "Add",
            weights.project(b, x, d, "W"),
            b.const(input_bias.astype(np.float32), "bias"),
        )  # [S, B, G*H]
        steps = b.split(projected, seq, axis=0)  # [1, B, G*H] each
        h = initial_h[d] if initial_h else zeros
        c = (initial_c[d] if initial_c else zeros) if lstm else None
        if op == "GRU":  # the reset gate multiplies h R_h': R' by gate
            r = weights.float["R"][d]
            r_t = [b.const(np.ascontiguousarray(r[:, k * hidden : (k + 1) * hidden]), "R")
                   for k in range(3)]  # fmt: skip
            rb_h = b.const(r_b[2 * hidden :].astype(np.float32), "Rbh")

        def recur(h, d=d):
            """h R' of the state; None for the zero state (a first step's, unless given):
            the product is 0, and a dynamic quantization of zeros divides by their range."""
            return None if h is zeros else weights.project(b, h, d, "R")

        peep = None
        if peepholes is not None:
            peep = [b.const(peepholes[d, k * hidden : (k + 1) * hidden], "P") for k in range(3)]
        outputs = [None] * seq
        for t in reversed(range(seq)) if reverse else range(seq):
            gates = b.op("Reshape", steps[t], step_rows)  # [B, G*H]
            if lstm:
                h_new, c_new = _cell_lstm(b, gates, h, c, recur, peep, acts_d, clip)
            elif op == "GRU":
                before_reset = bool(attrs.get_int("linear_before_reset", 0))
                h_new, c_new = _cell_gru(b, gates, h, r_t, rb_h, acts_d, clip, before_reset), None
            else:
                h_new, c_new = b.activate(_plus(b, gates, recur(h)), acts_d[0], clip), None
            if lens is not None:
                valid = b.op("Reshape", b.op("Less", b.const(np.int32(t), "t"), lens),
                             b.const(np.array([batch, 1], np.int64), "shape"))  # fmt: skip
                outputs[t] = b.op("Where", valid, h_new, zeros)
                h_new = b.op("Where", valid, h_new, h)
                if c_new is not None:
                    c_new = b.op("Where", valid, c_new, c)
            else:
                outputs[t] = h_new
            h, c = h_new, c_new
        step_shape = b.const(np.array([1, 1, batch, hidden], np.int64), "shape")
        ys.append(b.op("Concat", *[b.op("Reshape", y, step_shape) for y in outputs], axis=0))
        state_shape = b.const(np.array([1, batch, hidden], np.int64), "shape")
        hs.append(b.op("Reshape", h, state_shape))
        if c is not None:
            cs.append(b.op("Reshape", c, state_shape))
    y = ys[0] if num_dir == 1 else b.op("Concat", *ys, axis=1)  # [S, D, B, H]
    y_h = hs[0] if num_dir == 1 else b.op("Concat", *hs, axis=0)  # [D, B, H]
    y_c = (cs[0] if num_dir == 1 else b.op("Concat", *cs, axis=0)) if cs else None
    if layout == 1:
        y = b.op("Transpose", y, perm=[2, 0, 1, 3])
        y_h = b.op("Transpose", y_h, perm=[1, 0, 2])
        y_c = b.op("Transpose", y_c, perm=[1, 0, 2]) if y_c is not None else None
    return b.tape.nodes, [y, y_h, y_c][: len(node.outputs)]


@register_pass("unroll_recurrent")
def unroll_recurrent(model: ir.Model) -> PassResult:
    """LSTM / GRU / RNN (static input shape, constant weights) => their steps as plain ops.

    Each unrolled node is one change; a node that cannot be unrolled stays, logged with why (the
    backend's unsupported-op scan then names it).
    """
    changes = 0
    opset = onnx_opset(model)
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.domain not in DOMAINS.get(node.op_type, ()):
            continue
        if reason := why_not_unrollable(node):
            log.info("keep %s '%s': %s", node.op_type, node.name, reason)
            continue
        nodes, outputs = _unroll(node, model.graph, opset, node.name or node.op_type.lower())
        replace_node(node, nodes, outputs)
        changes += 1
    return PassResult(model, changes)
