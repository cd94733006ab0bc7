"""Results a user takes away, without Ray: a checkpoint's backbone exported in its library's own form (export:
state_dict, TorchScript, ONNX, with model.json and a parity check) and the pure half of `raysl embed` (embedding:
which backbone, which rows, features per batch; ray_glue/embed.py runs it as Ray Data batch inference).
Named outputs, not export, so that `raysl.export(...)`, the API function, is not shadowed by a subpackage.
Imports the stages below it (config, ingest, views, data, methods, training, report).
"""
