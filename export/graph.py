"""What a SavedModel's graph holds, read from saved_model.pb without loading it (shared by load and export)."""
import os

METADATA_FILE = "fused_rnn_export.json"  # in assets.extra/: what was exported (flavour, model, settings, ops)


def graph_op_types(saved_model_dir):
    """The op types of a SavedModel's graph and of every function in its library."""
    from tensorflow.core.protobuf import saved_model_pb2
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    ops = set()
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        ops.update(node.op for node in graph.node)
        for function in graph.library.function:
            ops.update(node.op for node in function.node_def)
    return ops
