"""Layer outputs of a TorchScript model, which takes no Python forward hooks once scripted and saved.

The model's ``forward`` graph is copied and its return value replaced by a tuple ``(original output, v_1, …,
v_L)`` where each ``v_l`` is the input or the output of a ``prim::CallMethod[name="forward"]`` node that calls
the requested module; the new graph becomes a function called with the model itself as ``self``. So the
values come from the same single forward pass, but only for modules that the top-level ``forward`` calls
directly (``self.head(...)``, ``self.body.fc(...)``, each child of a scripted ``nn.Sequential``): a module
called inside another module's own forward is not visible at this level, and asking for one is an error that
lists the visible ones.

Example
-------
>>> import io, torch
>>> from torch import nn
>>> buffer = io.BytesIO(); torch.jit.save(torch.jit.script(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))), buffer)
>>> model = torch.jit.load(io.BytesIO(buffer.getvalue()))
>>> run = layer_runner(model, ["1:input"])
>>> out, values = run(torch.ones(3, 4))
>>> out.shape, values["1:input"].shape
(torch.Size([3, 2]), torch.Size([3, 8]))
>>> visible_layers(model)
['0', '1']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeGuard, cast

import torch
from torch import Tensor

INPUT_SUFFIX = ":input"


def is_torchscript(model: Any) -> TypeGuard[torch.jit.ScriptModule]:
    """Whether ``model`` is a scripted or traced module (no Python hooks)."""
    return isinstance(model, torch.jit.ScriptModule)


def _module_path(value: Any, self_value: Any) -> str | None:
    """``"a.b"`` for a value made by ``prim::GetAttr`` chains from ``self``; ``None`` otherwise."""
    parts = []
    while value is not self_value:
        node = value.node()
        if node.kind() != "prim::GetAttr":
            return None
        parts.append(node.s("name"))
        value = next(iter(node.inputs()))
    return ".".join(reversed(parts))


def _calls(graph: Any) -> dict[str, Any]:
    """Module path → the ``CallMethod[forward]`` node of the top-level graph that calls it (the last one)."""
    self_value = next(iter(graph.inputs()))
    calls = {}
    for node in graph.nodes():
        if node.kind() == "prim::CallMethod" and node.s("name") == "forward":
            path = _module_path(next(iter(node.inputs())), self_value)
            if path:
                calls[path] = node
    return calls


def _forward(model: torch.jit.ScriptModule) -> Any:
    """The model's scripted ``forward`` method (a ``ScriptMethod`` with a ``graph``; the stubs say Callable)."""
    return cast(Any, model.forward)


def visible_layers(model: torch.jit.ScriptModule) -> list[str]:
    """Modules whose input and output the top-level forward exposes (called directly from it)."""
    return list(_calls(_forward(model).graph))


def layer_runner(model: torch.jit.ScriptModule, layers: Sequence[str]) -> Callable[[Tensor], tuple[Any, dict]]:
    """A function ``x -> (model(x), {layer: tensor})`` from one run of the model's rewritten forward graph."""
    graph = _forward(model).graph.copy()
    calls = _calls(graph)
    values = []
    for layer in layers:
        name = layer[: -len(INPUT_SUFFIX)] if layer.endswith(INPUT_SUFFIX) else layer
        if name not in calls:
            raise ValueError(
                f"layer {layer!r} of this TorchScript model is not called by its top-level forward, so its "
                f"tensors cannot be recorded; layers it calls: {', '.join(calls) or 'none'} (add ':input' for a "
                "layer's input)"
            )
        node = calls[name]
        values.append(list(node.inputs())[1] if layer.endswith(INPUT_SUFFIX) else node.output())
    ret = graph.return_node()
    original = next(iter(ret.inputs()))
    packed = graph.create("prim::TupleConstruct", [original, *values])
    packed.insertBefore(ret)
    packed.output().setType(torch._C.TupleType([original.type(), *(v.type() for v in values)]))
    ret.replaceInput(0, packed.output())
    function = torch._C._create_function_from_graph("forward_with_layers", graph)

    def run(x: Tensor) -> tuple[Any, dict[str, Any]]:
        output, *recorded = function(model._c, x)
        return output, dict(zip(layers, recorded, strict=True))

    return run
