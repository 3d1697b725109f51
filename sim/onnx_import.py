"""BERT-family encoders from ONNX files: the weights of ``sim.transformer.BertWeights``.

:func:`load_onnx` reads a graph with ``onnx``, rejects what it cannot run (every node's op must
be one this importer knows; the error names the node, its op and why), resolves every weight
that is computed from constants alone (initializers, ``Constant`` nodes, and constant
sub-graphs such as ``DequantizeLinear`` of int8 initializers or ``Cast`` then ``Mul`` by
per-channel scales, evaluated with onnx's reference evaluator), and maps the graph's pieces
onto a BERT encoder:

- embeddings: the ``Gather`` of a 2-D table by ``input_ids`` (words), by ``token_type_ids`` or
  by constants (token types: the smallest table), and the remaining one (positions);
- ``LayerNormalization`` nodes, or the decomposed form (``ReduceMean``, ``Sub``, ``Pow``,
  ``ReduceMean``, ``Add`` eps, ``Sqrt``, ``Div``, ``Mul`` gamma, ``Add`` beta), in graph order:
  the embeddings' first, then two per layer;
- ``MatMul`` (or ``Gemm``) by a constant matrix, with the following ``Add`` of a constant
  vector as its bias, in graph order: six per layer (query, key, value, attention output, the
  two FFN projections; q, k and v read the same tensor);
- the head count: the one value for which the imported float encoder reproduces the graph.

Only the nodes the last hidden state depends on (the output named ``last_hidden_state``, else
the first) are considered: a pooler or other heads beside it are left out.

The result is then checked numerically: the graph run by ``onnxruntime`` (or onnx's reference
evaluator when onnxruntime is missing) on random token ids must equal the imported encoder's
float forward pass (``sim.transformer.bert_forward``) to within 1e-3 relative; otherwise the
import fails, so a graph that only looks like BERT is never run. The shape-only parts (Shape,
Gather of shapes, Range, Unsqueeze, Concat, Expand, ConstantOfShape, Where, Cast, mask
arithmetic) need no folding: they are not mapped, only allowed.
"""

from pathlib import Path

import numpy as np

from . import transformer as tr

__all__ = ["ONNX_OPS", "OnnxImportError", "load_onnx", "graph_runner"]

#: Ops a BERT export may contain, and what the importer does with them.
ONNX_OPS = {
    "MatMul": "linear layers (constant weights) and attention products",
    "Gemm": "linear layers", "Add": "biases, residuals, the mask", "Gather": "embeddings, shapes",
    "LayerNormalization": "LayerNorm", "ReduceMean": "decomposed LayerNorm",
    "Sub": "decomposed LayerNorm, the mask", "Pow": "decomposed LayerNorm",
    "Sqrt": "decomposed LayerNorm, the attention scale", "Div": "decomposed LayerNorm, scale",
    "Mul": "gamma, GELU, the mask, the attention scale", "Softmax": "attention",
    "Erf": "GELU (erf form)", "Tanh": "GELU (tanh form)", "Reshape": "heads",
    "Transpose": "heads", "Shape": "shape arithmetic", "Unsqueeze": "shape arithmetic",
    "Squeeze": "shape arithmetic", "Concat": "shape arithmetic", "Slice": "shape arithmetic",
    "Range": "position ids", "Expand": "position ids", "ConstantOfShape": "token types",
    "Constant": "constants", "Cast": "masks, quantized weights", "Where": "masks",
    "Equal": "masks", "Not": "masks", "Identity": "no-op",
    "DequantizeLinear": "quantized weights",
    # seen in torch.onnx exports of transformers' BertModel (opset 14 TorchScript, opset 18
    # dynamo): the buffered token types and the mask's construction, and the guard that
    # zeroes a fully masked row's NaN probabilities
    "GatherElements": "token types, positions", "GatherND": "masks", "Flatten": "shapes",
    "GreaterOrEqual": "masks", "And": "masks", "Max": "masks",
    "IsNaN": "the softmax's guard for fully masked rows",
}


class OnnxImportError(ValueError):
    """The graph cannot be imported; the message names the node and why."""


def _constants(model):
    """``value(name)``: the numpy value of a tensor computed from constants alone, or None."""
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    known = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    inputs = {i.name for i in graph.input} - set(known)
    memo: dict = {}

    def value(name: str):
        if name in known:
            return known[name]
        if name in memo:
            return memo[name]
        node = producer.get(name)
        result = None
        if node is not None and name not in inputs and node.op_type not in ("Shape",):
            args = [value(i) if i else None for i in node.input]
            if all(a is not None for a, i in zip(args, node.input) if i):
                outs = ReferenceEvaluator(node).run(
                    None, {i: a for i, a in zip(node.input, args) if i})
                for o, v in zip(node.output, outs):
                    memo[o] = np.asarray(v)
                result = memo[name]
        memo[name] = result
        return result

    return value, producer


def _consumers(graph) -> dict:
    out: dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            out.setdefault(i, []).append(node)
    return out


def load_onnx(path, *, check: bool = True) -> tr.BertWeights:
    """The encoder of an ONNX BERT export (see the module docstring). Raises
    ``FileNotFoundError`` for a missing file and :class:`OnnxImportError` naming the node (or
    the missing piece) for a graph this importer does not map."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise OnnxImportError(f"{path}: not a valid ONNX model: {exc}") from None
    graph = model.graph
    out_name = _hidden_output(graph)
    nodes = _needed_nodes(graph, out_name)    # (a pooler or other heads are left out)
    for node in nodes:
        if node.op_type not in ONNX_OPS or (node.domain not in ("", "ai.onnx")):
            raise OnnxImportError(
                f"{path}: node {node.name or node.output[0]!r} is a {node.domain + '.' if node.domain else ''}"
                f"{node.op_type}, which the BERT importer does not support (it runs only "
                f"the ops of a BERT encoder: {', '.join(sorted(ONNX_OPS))})")
    value, producer = _constants(model)
    consumers = _consumers(graph)
    inputs = [i.name for i in graph.input if value(i.name) is None]
    ids_name = next((n for n in inputs if "input_ids" in n), inputs[0] if inputs else None)
    if ids_name is None:
        raise OnnxImportError(f"{path}: the graph has no input (input_ids expected)")

    # Embeddings.
    tables = []
    for node in nodes:
        if node.op_type == "Gather":
            t = value(node.input[0])
            if t is not None and t.ndim == 2 and t.dtype.kind == "f":
                tables.append((node, t))
    word = [t for n, t in tables if n.input[1] == ids_name]
    if len(word) != 1 or len(tables) != 3:
        raise OnnxImportError(f"{path}: expected three embedding Gathers (words by "
                              f"{ids_name!r}, positions, token types), found {len(tables)}")
    rest = sorted((t for n, t in tables if n.input[1] != ids_name), key=len)
    token_type, position = rest[0], rest[1]
    word = word[0]
    hidden = word.shape[1]

    # LayerNorms, in graph order.
    lns = []
    for node in nodes:
        if node.op_type == "LayerNormalization":
            eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
            g, b = value(node.input[1]), value(node.input[2]) if len(node.input) > 2 else None
            if g is None:
                raise OnnxImportError(f"{path}: LayerNormalization {node.name!r} has a "
                                      f"non-constant scale")
            lns.append((g, np.zeros_like(g) if b is None else b, eps))
        elif node.op_type == "Sqrt" and producer.get(node.input[0]) is not None:
            add = producer[node.input[0]]
            if add.op_type != "Add":
                continue
            eps_vals = [value(i) for i in add.input if value(i) is not None]
            divs = [c for c in consumers.get(node.output[0], []) if c.op_type == "Div"]
            if not eps_vals or not divs:
                continue
            muls = [c for c in consumers.get(divs[0].output[0], []) if c.op_type == "Mul"]
            gamma = [value(i) for i in muls[0].input if value(i) is not None] if muls else []
            adds = [c for c in consumers.get(muls[0].output[0], []) if c.op_type == "Add"] \
                if muls else []
            beta = [value(i) for i in adds[0].input if value(i) is not None] if adds else []
            if not gamma or not beta:
                raise OnnxImportError(f"{path}: the decomposed LayerNorm at {node.name!r} has "
                                      f"no constant gamma and beta after it")
            lns.append((gamma[0], beta[0], float(np.asarray(eps_vals[0]).reshape(-1)[0])))

    # Linear layers: MatMul or Gemm by a constant matrix, the constant Add after it.
    linears = []
    for node in nodes:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        w = value(node.input[1])
        if w is None or w.ndim != 2:
            continue
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
            w = w.T
        bias = value(node.input[2]) if node.op_type == "Gemm" and len(node.input) > 2 else None
        if bias is None:
            adds = [c for c in consumers.get(node.output[0], []) if c.op_type == "Add"]
            consts = [value(i) for i in adds[0].input if value(i) is not None] if adds else []
            bias = consts[0] if consts else np.zeros(w.shape[1], np.float32)
        linears.append((np.asarray(w, np.float32), np.asarray(bias, np.float32).reshape(-1)))
    if len(linears) % 6 or not linears:
        raise OnnxImportError(f"{path}: found {len(linears)} linear layers by constant "
                              f"weights; a BERT encoder has six per layer")
    n_layers = len(linears) // 6
    if len(lns) != 1 + 2 * n_layers:
        raise OnnxImportError(f"{path}: found {len(lns)} LayerNorms; {n_layers} layers need "
                              f"{1 + 2 * n_layers}")
    inter = linears[4][0].shape[1]
    # GELU: the erf form, or the tanh approximation (the accelerator runs both with its
    # erf-form kernel; the float reference keeps the model's own).
    act = "gelu_tanh" if any(n.op_type == "Tanh" for n in nodes) else "gelu"
    layers = []
    for i in range(n_layers):
        (qw, qb), (kw, kb), (vw, vb), (ow, ob), (f1w, f1b), (f2w, f2b) = linears[6 * i:6 * i + 6]
        (g1, b1, _), (g2, b2, _) = lns[1 + 2 * i], lns[2 + 2 * i]
        f32 = lambda a: np.asarray(a, np.float32).reshape(-1)
        layers.append(tr.EncoderLayerWeights(
            q_w=qw, q_b=qb, k_w=kw, k_b=kb, v_w=vw, v_b=vb, o_w=ow, o_b=ob,
            ln1_g=f32(g1), ln1_b=f32(b1), ffn1_w=f1w, ffn1_b=f1b, ffn2_w=f2w, ffn2_b=f2b,
            ln2_g=f32(g2), ln2_b=f32(b2)))
    eps = float(lns[0][2])
    candidates = [h for h in range(1, hidden + 1) if hidden % h == 0]
    if not check:
        raise OnnxImportError("check=False is not supported: the head count comes from the check")
    reference = _graph_runner(model, inputs, ids_name, out_name)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, word.shape[0], (2, 7))
    want = reference(ids)
    for heads in sorted(candidates, key=lambda h: abs(hidden // h - 64)):
        config = tr.BertConfig(hidden=hidden, heads=heads, intermediate=inter, layers=n_layers,
                               vocab=word.shape[0], max_positions=position.shape[0],
                               type_vocab=token_type.shape[0], eps=eps, hidden_act=act)
        weights = tr.BertWeights(config=config, word=word.astype(np.float32),
                                 position=position.astype(np.float32),
                                 token_type=token_type.astype(np.float32),
                                 emb_ln_g=np.asarray(lns[0][0], np.float32).reshape(-1),
                                 emb_ln_b=np.asarray(lns[0][1], np.float32).reshape(-1),
                                 layers=layers)
        got = tr.bert_forward(weights, ids)
        if np.abs(got - want).max() <= 1e-3 * max(1.0, float(np.abs(want).max())):
            return weights
    raise OnnxImportError(f"{path}: the graph's output is not that of the BERT encoder read "
                          f"from it for any head count (checked with onnxruntime on random "
                          f"ids); the graph is not a BERT encoder this importer maps")


def _hidden_output(graph) -> str:
    """The last hidden state's output: the one named ``last_hidden_state``, else the first."""
    names = [o.name for o in graph.output]
    return "last_hidden_state" if "last_hidden_state" in names else names[0]


def _needed_nodes(graph, output: str) -> list:
    """The nodes ``output`` depends on, in graph order."""
    producer = {out: node for node in graph.node for out in node.output}
    needed, todo = set(), [output]
    while todo:
        node = producer.get(todo.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            todo.extend(i for i in node.input if i)
    return [node for node in graph.node if id(node) in needed]


def graph_runner(path):
    """``run(ids) -> last hidden state`` (float64): the ONNX file at ``path`` on token ids
    ``[batch, seq]`` (all-ones mask, token type 0), by onnxruntime when it is installed."""
    import onnx
    model = onnx.load(str(path))
    consts = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in consts]
    ids_name = next((n for n in inputs if "input_ids" in n), inputs[0])
    return _graph_runner(model, inputs, ids_name, _hidden_output(model.graph))


def _graph_runner(model, inputs: list[str], ids_name: str, output: str):
    """``run(ids) -> output``: the graph on ``ids`` (all-ones mask, type 0)."""
    def feeds(ids):
        out = {}
        for name in inputs:
            out[name] = ids if name == ids_name else np.ones_like(ids) if "mask" in name \
                else np.zeros_like(ids)
        return out
    try:
        import onnxruntime as ort
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        return lambda ids: np.asarray(session.run([output], feeds(ids))[0], np.float64)
    except ImportError:
        from onnx.reference import ReferenceEvaluator
        ev = ReferenceEvaluator(model)
        return lambda ids: np.asarray(ev.run([output], feeds(ids))[0], np.float64)
