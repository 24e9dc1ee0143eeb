"""Mirrors modules/hypernetworks/hypernetwork.py's `apply_hypernetworks`: each loaded hypernetwork maps the
context for keys and for values, chosen by the context width."""


def apply_single_hypernetwork(hypernetwork, context_k, context_v, layer=None):
    modules = hypernetwork.layers.get(context_k.shape[2], None)
    if modules is None:
        return context_k, context_v
    if layer is not None:
        layer.hyper_k = modules[0]
        layer.hyper_v = modules[1]
    return modules[0](context_k), modules[1](context_v)


def apply_hypernetworks(hypernetworks, context, layer=None):
    context_k = context
    context_v = context
    for hypernetwork in hypernetworks:
        context_k, context_v = apply_single_hypernetwork(hypernetwork, context_k, context_v, layer)
    return context_k, context_v
