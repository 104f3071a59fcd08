"""compiled_function: one torch.compile per (function, arguments), whatever the arguments hold."""

from neo_rtdetr.modeling.layers.compiled_function import compiled_function

from .test_rtdetr import tiny_model


def _double(x):
    return 2 * x


def test_unhashable_compile_arguments_such_as_options_are_accepted_and_cached():
    # torch.compile's options= is a dict (inductor settings): it must not make the cache key unhashable
    first = compiled_function(_double, {"dynamic": False, "options": {"trace.enabled": False}})
    again = compiled_function(_double, {"options": {"trace.enabled": False}, "dynamic": False})
    other = compiled_function(_double, {"dynamic": False, "options": {"trace.enabled": True}})
    assert first is again and first is not other and first is not _double
    assert compiled_function(_double, None) is _double


def test_decoder_compile_body_takes_torch_compile_options():
    decoder = tiny_model(num_classes=3).decoder
    decoder.compile_body(options={"trace.enabled": False})
    body = decoder._body()  # (compiled lazily: nothing is traced here)
    assert body is decoder._body() and body is not type(decoder)._forward_body
