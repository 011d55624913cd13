"""Keras layers on the fused ops: drop-in replacements for keras.layers.LSTM and keras.layers.GRU.

    lstm = tf_ops.FusedLSTM(256, return_sequences=True)
    lstm.set_weights(keras_lstm.get_weights())            # same weights, same order, same outputs
    bi = tf_ops.FusedLSTM(256, bidirectional=True)        # both directions in one op call; weights in the
                                                          # order of keras.layers.Bidirectional(LSTM(256))
    elmo_lstm = tf_ops.FusedLSTM(4096, num_proj=512, cell_clip=3, proj_clip=3, bidirectional=True)
    fast = tf_ops.quantize_model(model, "bfloat16")        # 16-bit recurrent weights for inference (or "int8")

Masks (right-padded, e.g. from Embedding(mask_zero=True)) become sequence lengths. Outputs at masked steps follow
Keras: the last valid output is carried forward (zeros with zero_output_for_mask=True, as inside Bidirectional;
bidirectional=True behaves as keras.layers.Bidirectional, which sets zero_output_for_mask to return_sequences).
stateful=True carries each batch row's final states into the next call, as the stock layers do (a static batch size,
states reset by layer.reset_states()). Arguments the fused op cannot honour (another activation, recurrent_dropout,
GRU reset_after=False) raise a ValueError at construction.
"""
import keras
import numpy as np
import tensorflow as tf
from keras.src.utils import tracking  # keras.layers.RNN's own way to hold untracked state variables

from tf_ops import ops

_SUPPORTED_MERGE = ("concat", "sum", "ave", "mul", None)
# The activations the op computes, under the names Keras, TF and keras.ops give them.
_TANH = ("tanh", keras.activations.tanh, keras.ops.tanh, tf.nn.tanh, tf.math.tanh)
_SIGMOID = ("sigmoid", keras.activations.sigmoid, keras.ops.sigmoid, tf.nn.sigmoid, tf.math.sigmoid)
_WEIGHT_DTYPES = ("float32", "float16", "bfloat16")


def _stack(variables):
    """Stacks Keras variables along a new direction axis (Keras 3 variables are not tf.stack's inputs). One direction
    is a reshape that shares the variable's buffer: tf.stack copied the whole matrix on every call (16 MB for an
    LSTM recurrent kernel at H=1024)."""
    if len(variables) == 1:
        return tf.expand_dims(tf.convert_to_tensor(variables[0]), 0)
    return tf.stack([tf.convert_to_tensor(v) for v in variables])


def _concat(variables, axis):
    tensors = [tf.convert_to_tensor(v) for v in variables]
    return tensors[0] if len(tensors) == 1 else tf.concat(tensors, axis=axis)


@tf.custom_gradient
def _affine(x_nxi, kernel_ixg, bias_g):
    """x @ kernel + bias, whose gradient gets the bias's share from the kernel's product: [x, 1]^T @ dy gives
    d_kernel and d_bias in one pass over dy. The stock gradient reduces dy (the whole [B*T, D*G*H] gradient of the
    fused op's input) separately, and on a training step that reduction sat on the critical path between the
    fused backward op and the d_kernel product (0.4-1 ms of a 13-23 ms step on 2 cores)."""
    y_nxg = tf.nn.bias_add(tf.matmul(x_nxi, kernel_ixg), bias_g)

    def grad(dy_nxg):
        dx_nxi = tf.matmul(dy_nxg, kernel_ixg, transpose_b=True)
        x1_nxi1 = tf.concat([x_nxi, tf.ones([tf.shape(x_nxi)[0], 1], x_nxi.dtype)], axis=1)
        dkb_i1xg = tf.matmul(x1_nxi1, dy_nxg, transpose_a=True)
        return dx_nxi, dkb_i1xg[:-1], dkb_i1xg[-1]

    return y_nxg, grad


def _is_one_of(fn, names):
    return fn == names[0] if isinstance(fn, str) else any(fn is a for a in names[1:])


def _check(condition, message):
    if not condition:
        raise ValueError(message)


def _positive_int(value, what):
    """value as an int when it is a positive integer (Python or NumPy; not a bool, a float or a string), else a
    ValueError naming the argument: int(4.5) would quietly build a 4-unit layer."""
    _check(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0,
           f"{what} must be a positive integer, got {value!r}")
    return int(value)


class _FusedRNN(keras.layers.Layer):
    """Shared machinery of FusedLSTM and FusedGRU; subclasses set _GATES and implement _run."""

    _GATES = None
    _STOCK = None  # name of the stock layer, for messages

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", bias_initializer="zeros",
                 kernel_regularizer=None, recurrent_regularizer=None, bias_regularizer=None,
                 kernel_constraint=None, recurrent_constraint=None, bias_constraint=None, dropout=0.0,
                 recurrent_dropout=0.0, seed=None, return_sequences=False, return_state=False,
                 go_backwards=False, stateful=False, unroll=False, zero_output_for_mask=False,
                 bidirectional=False, merge_mode="concat", use_cudnn="auto", int8_weights=False,
                 recurrent_weight_dtype="float32", implementation=None, **kwargs):
        # The op computes in float32 whatever the dtype policy: Keras must not round the inputs to a mixed policy's
        # compute dtype (call() casts them to float32 itself) nor the weights (added with autocast=False).
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        name = type(self).__name__
        policy = self.dtype_policy
        _check(policy.variable_dtype == "float32" and policy.compute_dtype in ("float32", "float16", "bfloat16"),
               f"{name}: the fused op keeps float32 weights and computes in float32; dtype policy "
               f"{policy.name!r} (variables {policy.variable_dtype}, compute {policy.compute_dtype}) is not "
               "supported. Use float32, mixed_float16 or mixed_bfloat16 (outputs in the compute dtype), and "
               "recurrent_weight_dtype='float16'/'bfloat16' for 16-bit recurrent weights")
        # No XLA kernel exists for the fused ops. Keras 3 compiles model.fit/predict with XLA by default when a GPU
        # is present (jit_compile="auto"); this makes it fall back to the graph executor instead of failing.
        self.supports_jit = False
        units = _positive_int(units, f"{name}: units")
        _check(_is_one_of(activation, _TANH),
               f"{name}: the fused op computes activation='tanh' only, got {activation!r}")
        _check(_is_one_of(recurrent_activation, _SIGMOID),
               f"{name}: the fused op computes recurrent_activation='sigmoid' only, got {recurrent_activation!r}")
        _check(not recurrent_dropout,
               f"{name}: recurrent_dropout={recurrent_dropout} needs a new mask inside every step, which the fused "
               "op does not do; use dropout (on the inputs) or a Dropout layer between recurrent layers")
        _check(0.0 <= dropout < 1.0, f"{name}: dropout must be in [0, 1), got {dropout}")
        _check(merge_mode in _SUPPORTED_MERGE, f"{name}: merge_mode must be one of {_SUPPORTED_MERGE}")
        _check(not (bidirectional and go_backwards), f"{name}: bidirectional=True already runs both directions; "
                                                     "go_backwards must be False")
        self.units = int(units)
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = keras.regularizers.get(recurrent_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.recurrent_constraint = keras.constraints.get(recurrent_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.dropout = float(dropout)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.return_sequences = return_sequences
        self.return_state = return_state
        self.go_backwards = go_backwards
        # stateful: the final states of each call are the next call's initial states, held in non-trainable
        # variables outside the layer's weights (as the stock RNN keeps them), so get_weights()/set_weights() stay
        # those of the stock layer.
        self.stateful = bool(stateful)
        self._state_variables = None
        self.unroll = unroll  # accepted for compatibility; the fused op never unrolls
        self.use_cudnn = use_cudnn  # accepted for compatibility
        self.implementation = implementation  # keras.layers.LSTM's (1 or 2): accepted, the fused op has one
        self.zero_output_for_mask = zero_output_for_mask
        self.bidirectional = bidirectional
        self.merge_mode = merge_mode
        # INT8 recurrent (and projection) weights with per-row scales (tf_ops.quantize): non-trainable, no gradient
        # (gradients still flow through the op to the inputs, states, input kernel and biases), and
        # tf_ops.quantize_model fills them from a trained float layer.
        self.int8_weights = bool(int8_weights)
        # float16 / bfloat16 recurrent (and projection) kernels: half the weight bytes per step, float32 math on the
        # exact 16-bit values; non-trainable, as the int8 ones (tf_ops.quantize_model(model, "bfloat16") converts).
        # A NumPy/TF dtype (np.float16, np.dtype("float16"), tf.bfloat16) becomes its name: the config must be
        # JSON for model.save, and the code compares against the strings.
        if recurrent_weight_dtype is not None and not isinstance(recurrent_weight_dtype, str):
            try:
                recurrent_weight_dtype = keras.backend.standardize_dtype(recurrent_weight_dtype)
            except (TypeError, ValueError):
                pass  # not a dtype: the check below names it
        _check(recurrent_weight_dtype in _WEIGHT_DTYPES,
               f"{name}: recurrent_weight_dtype must be one of {_WEIGHT_DTYPES}, got {recurrent_weight_dtype!r}")
        _check(not (self.int8_weights and recurrent_weight_dtype != "float32"),
               f"{name}: int8_weights and recurrent_weight_dtype={recurrent_weight_dtype!r} exclude each other")
        self.recurrent_weight_dtype = recurrent_weight_dtype
        self.supports_masking = True
        self.input_spec = keras.layers.InputSpec(ndim=3)  # as the stock layers: a wrong rank fails at build
        # The stock layers' attributes (their only values here), for code that inspects a layer.
        self.activation = keras.activations.tanh
        self.recurrent_activation = keras.activations.sigmoid
        self.recurrent_dropout = 0.0

    @property
    def states(self):
        """The state variables of a stateful layer, [h, c] (LSTM) or [h] (GRU) per direction, forward first; None
        otherwise (keras.layers.Bidirectional asks)."""
        return self._state_variables

    def reset_state(self):
        """Zeroes a stateful layer's states (nothing to do otherwise)."""
        for variable in self._state_variables or ():
            variable.assign(tf.zeros(variable.shape, variable.dtype))

    def reset_states(self):  # the stock layers' alias
        self.reset_state()

    @property
    def state_size(self):
        """One direction's state widths, as the stock layers give them: [R, H] (LSTM, R = num_proj or H), [H] (GRU)."""
        return list(self._state_widths())

    def get_initial_state(self, batch_size):
        """Zero states for `batch_size` rows, in initial_state's order (h, c per direction, forward first), in the
        compute dtype as the stock layers give them (float16 under mixed_float16)."""
        return [tf.zeros([batch_size, width], self.compute_dtype) for _ in range(self._num_dirs)
                for width in self._state_widths()]

    @tracking.no_automatic_dependency_tracking
    def _create_state_variables(self, batch):
        # As keras.layers.RNN holds them: outside the layer's weights (so the stock weight list and order hold), yet
        # saved with it (tf.saved_model.save and model.export carry them).
        with keras.name_scope(self.name, caller=self):
            self._state_variables = [
                keras.Variable(np.zeros((batch, width), np.float32), trainable=False, dtype="float32",
                               name="rnn_state")
                for _ in range(self._num_dirs) for width in self._state_widths()]

    # -- subclass hooks --
    @property
    def _width(self):  # recurrent width R
        return self.units

    @property
    def _num_states(self):
        return 1

    def _add_cell_weights(self, prefix, input_dim):
        raise NotImplementedError

    def _run(self, x_proj, lengths, initial_states, direction, training):
        raise NotImplementedError

    # -- Keras API --
    @property
    def _num_dirs(self):
        return 2 if self.bidirectional else 1

    def build(self, sequences_shape):
        input_dim = sequences_shape[-1]
        _check(input_dim is not None, f"{type(self).__name__}: the last input dimension must be known")
        prefixes = ("forward_", "backward_") if self.bidirectional else ("",)
        # Building a built layer again keeps its weights, as the stock layers (whose cell is built once) do: adding
        # them again failed on Keras' state lock, and a stateful layer never reached the reset below.
        if getattr(self, "_weight_names", None) is None:
            self._weight_names = [self._add_cell_weights(p, input_dim) for p in prefixes]
        if self.stateful:
            if self._state_variables is not None:
                self.reset_state()
            else:
                batch = sequences_shape[0]
                _check(batch is not None, f"{type(self).__name__}: stateful=True needs a static batch size; give "
                       f"the model's input one (keras.Input(batch_shape=(batch, time, features))), got input "
                       f"shape {tuple(sequences_shape)}")
                self._create_state_variables(int(batch))
        self.built = True

    @property
    def _dir_weights(self):
        """Per direction, {role: variable}; the variables themselves are attributes (so SavedModel tracks them)."""
        return [{role: getattr(self, name) for role, name in names.items()} for names in self._weight_names]

    def _add(self, name, shape, initializer, regularizer, constraint):
        variable = self.add_weight(name=name, shape=shape, initializer=initializer, regularizer=regularizer,
                                   constraint=constraint, autocast=False)
        setattr(self, name, variable)
        return name

    def _add_recurrent(self, weights, role, prefix, shape, initializer, regularizer, constraint):
        """A recurrent or projection kernel: float, 16-bit (non-trainable), or (int8_weights) int8 rows plus one
        scale per row."""
        if self.recurrent_weight_dtype != "float32":
            def init16(shape, dtype=None):  # initializers (orthogonal: a QR) run in float32, then round
                return tf.cast(initializer(shape, dtype="float32"), dtype)

            variable = self.add_weight(name=prefix + role, shape=shape, initializer=init16,
                                       dtype=self.recurrent_weight_dtype, trainable=False, autocast=False)
            setattr(self, prefix + role, variable)
            weights[role] = prefix + role
            return
        if not self.int8_weights:
            weights[role] = self._add(prefix + role, shape, initializer, regularizer, constraint)
            return
        scale_role = role.replace("_kernel", "_scale")  # recurrent_scale, projection_scale
        for sub_role, sub_shape, dtype in ((role + "_q8", shape, "int8"), (scale_role, shape[:1], "float32")):
            variable = self.add_weight(name=prefix + sub_role, shape=sub_shape, initializer="zeros", dtype=dtype,
                                       trainable=False, autocast=False)
            setattr(self, prefix + sub_role, variable)
            weights[sub_role] = prefix + sub_role

    def _x_proj(self, sequences, training):
        """x @ kernel + bias for every timestep and direction: one matrix product over the directions' kernels
        side by side, or one per direction when the kernels are larger than the products."""
        x = sequences
        if training and self.dropout > 0:
            # One mask per sequence, shared by every timestep, as Keras' DropoutRNNCell does; and one per direction,
            # as keras.layers.Bidirectional's two cells draw their own: then each direction multiplies its own x.
            shape = tf.stack([tf.shape(x)[0], 1, tf.shape(x)[2]])
            dropped = []
            for _ in range(self._num_dirs):
                keep = keras.random.uniform(shape, seed=self.seed_generator) >= self.dropout
                dropped.append(x * tf.cast(keep, x.dtype) / (1.0 - self.dropout))
            if self._num_dirs == 2:
                return self._x_proj_per_direction(dropped)
            x = dropped[0]
        dims = tf.shape(x)
        x_2d = tf.reshape(x, [-1, dims[2]])
        width = sum(w["kernel"].shape[1] for w in self._dir_weights)

        def one_product():  # the directions' kernels side by side: one GEMM
            kernel = _concat([w["kernel"] for w in self._dir_weights], axis=1)
            return _affine(x_2d, kernel, self._input_bias()) if self.use_bias else tf.matmul(x_2d, kernel)

        def per_direction():  # a GEMM per direction, outputs side by side
            parts = [_affine(x_2d, tf.convert_to_tensor(w["kernel"]), self._dir_input_bias(w))
                     if self.use_bias else tf.matmul(x_2d, tf.convert_to_tensor(w["kernel"]))
                     for w in self._dir_weights]
            return tf.concat(parts, axis=1)

        # Both ways copy once: the kernels (input width x D*G*H) or the products (B*T x D*G*H). At B=1 the
        # kernels are the larger: an ELMo layer's 2 x [512, 16384] concat cost 3.5 ms of a 15 ms product.
        rows, in_width = x_2d.shape[0], x_2d.shape[1]
        if self._num_dirs == 1 or in_width is None or (rows is not None and rows >= in_width):
            x_proj = one_product()
        elif rows is not None:
            x_proj = per_direction()
        elif in_width >= 256:
            x_proj = tf.cond(tf.shape(x_2d)[0] < in_width, per_direction, one_product)
        else:
            x_proj = one_product()
        return tf.reshape(x_proj, [dims[0], dims[1], width])

    def _x_proj_per_direction(self, xs):
        """x_proj from a different input per direction (dropout masks): a GEMM per direction, side by side."""
        dims = tf.shape(xs[0])
        parts = []
        for x, w in zip(xs, self._dir_weights):
            x_2d = tf.reshape(x, [-1, dims[2]])
            kernel = tf.convert_to_tensor(w["kernel"])
            parts.append(_affine(x_2d, kernel, self._dir_input_bias(w)) if self.use_bias else tf.matmul(x_2d, kernel))
        width = sum(w["kernel"].shape[1] for w in self._dir_weights)
        return tf.reshape(tf.concat(parts, axis=1), [dims[0], dims[1], width])

    def _dir_input_bias(self, w):
        return tf.convert_to_tensor(w["bias"])

    def _input_bias(self):
        return _concat([self._dir_input_bias(w) for w in self._dir_weights], axis=0)

    def _lengths(self, mask, batch, max_time, inputs_shape):
        if mask is None:
            return tf.fill([batch], max_time)
        mask = tf.cast(mask, tf.bool)
        # The shape is checked here: a wrong one otherwise fails inside the reductions below, naming no argument.
        expected = (f"{type(self).__name__}: mask must have the shape [batch, time] of the inputs, "
                    f"{list(inputs_shape[:2])} (or [batch, time, 1])")
        shape = mask.shape
        if shape.rank is not None:
            _check(shape.rank == 2 or (shape.rank == 3 and shape[2] in (1, None)), f"{expected}, got {shape}")
            _check(all(m is None or i is None or m == i for m, i in zip(shape[:2], inputs_shape[:2])),
                   f"{expected}, got {shape}")
            if shape.rank == 3 and shape[2] == 1:
                mask = mask[:, :, 0]  # as the stock layers, which read a [B, T, 1] mask as the [B, T] one
        if not mask.shape.is_fully_defined() or None in inputs_shape[:2]:  # checked when the graph runs
            dims = tf.concat([tf.shape(mask), [1, 1]], axis=0)[:3]
            ok = tf.logical_and(tf.reduce_all(tf.equal(dims, tf.stack([batch, max_time, 1]))),
                                tf.equal(tf.size(mask), batch * max_time))
            check = tf.debugging.Assert(ok, [expected + ", got", tf.shape(mask), "for inputs [batch, time] =",
                                             tf.stack([batch, max_time])])
            with tf.control_dependencies([check]):
                mask = tf.reshape(mask, [batch, max_time])
        lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
        right_padded = tf.reduce_all(tf.equal(mask, tf.sequence_mask(lengths, max_time)))
        tf.debugging.assert_equal(right_padded, True, message=(
            f"{type(self).__name__} needs right-padded masks (every True before every False in each row)"))
        return lengths

    def _initial_states(self, initial_state, batch):
        """Returns one [D, B, width] tensor per state kind (h, then c for the LSTM)."""
        widths = self._state_widths()
        n = len(widths)
        if initial_state is None:
            return [tf.zeros([self._num_dirs, batch, w]) for w in widths]
        states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
        _check(len(states) == n * self._num_dirs,
               f"{type(self).__name__}: initial_state needs {n * self._num_dirs} tensors, got {len(states)}")
        states = [tf.cast(s, tf.float32) for s in states]
        return [tf.stack([states[d * n + k] for d in range(self._num_dirs)]) for k in range(n)]

    def _state_widths(self):
        raise NotImplementedError

    def _op_training(self, training):
        # The 16-bit op keeps no reserve: its gradient (to the inputs and states) re-runs the float32 forward on the
        # widened weights, as the int8 op's does.
        return bool(training) and self.recurrent_weight_dtype == "float32"

    def call(self, sequences, initial_state=None, mask=None, training=None):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        sequences = tf.cast(sequences, tf.float32)
        dims = tf.shape(sequences)
        batch, max_time = dims[0], dims[1]
        if self.stateful:
            if initial_state is not None:
                initial_state = self._check_state_batch(initial_state)
            expected = self._state_variables[0].shape[0]
            _check(sequences.shape[0] is None or sequences.shape[0] == expected,
                   f"{type(self).__name__}: a stateful layer built for batch size {expected} got a batch of "
                   f"{sequences.shape[0]}")
            if sequences.shape[0] is None:  # e.g. predict()/fit() batches: checked when it runs
                tf.debugging.assert_equal(batch, expected, message=(
                    f"{type(self).__name__}: a stateful layer built for batch size {expected} got another batch "
                    "size (with predict/fit, make the number of samples a multiple of the batch size)"))
            if initial_state is None:
                initial_state = self._state_variables
        lengths = self._lengths(mask, batch, max_time, sequences.shape)
        x_proj = self._x_proj(sequences, training)
        direction = "bidirectional" if self.bidirectional else ("reverse" if self.go_backwards else "forward")
        out, finals = self._run(x_proj, lengths, self._initial_states(initial_state, batch), direction,
                                training is True)
        if self.stateful:
            for variable, state in zip(self._state_variables, self._flat_states(finals)):
                variable.assign(state)
        width = self._width
        final_h = finals[0]
        if self.return_sequences:
            if self.go_backwards:
                out = tf.reverse(out, axis=[1])  # Keras returns a backwards layer's outputs in processing order
            elif mask is not None and not self.zero_output_for_mask and not self.bidirectional:
                # Keras carries the last valid output over masked steps.
                last = tf.gather(out, tf.maximum(lengths - 1, 0), axis=1, batch_dims=1)
                valid = tf.sequence_mask(lengths, max_time)[:, :, None]
                out = tf.where(valid, out, last[:, None, :])
            output = out
        else:
            # The last output of a masked sequence is its final h (zeros for an empty one, as Keras). With
            # zero_output_for_mask, Keras gives zeros for every row whose last processed step is masked: in the
            # forward direction every row shorter than the batch's time dimension. Not when bidirectional: Keras'
            # Bidirectional sets its layers' zero_output_for_mask to return_sequences, False here.
            has_steps = (lengths > 0)[None, :, None]
            if self.zero_output_for_mask and mask is not None and not self.bidirectional and not self.go_backwards:
                has_steps = tf.logical_and(has_steps, (lengths >= max_time)[None, :, None])
            last = tf.where(has_steps, final_h, tf.zeros_like(final_h))
            output = tf.concat(tf.unstack(last, num=self._num_dirs), axis=-1) if self.bidirectional else last[0]
        if self.bidirectional and self.merge_mode != "concat":
            fw, bw = output[..., :width], output[..., width:]
            output = {"sum": lambda: fw + bw, "ave": lambda: (fw + bw) / 2, "mul": lambda: fw * bw,
                      None: lambda: [fw, bw]}[self.merge_mode]()
        if not self.return_state:
            return self._to_compute_dtype(tuple(output) if isinstance(output, list) else output)
        states = self._flat_states(finals)
        outputs = output if isinstance(output, list) else [output]
        return self._to_compute_dtype(tuple(outputs + states))  # a tuple, as the stock layers return

    def _check_state_batch(self, initial_state):
        """initial_state of a stateful layer, each tensor checked to have the states' batch size (now, or when the
        graph runs): the final states are assigned to the state variables, whose own error names neither."""
        expected = self._state_variables[0].shape[0]
        name = type(self).__name__
        states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
        checked = []
        for state in states:
            state = tf.convert_to_tensor(state)
            got = state.shape[0] if state.shape.rank else None
            _check(got is None or got == expected,
                   f"{name}: initial_state has batch size {got}, but this stateful layer's states have batch size "
                   f"{expected}")
            if got is None:
                check = tf.debugging.assert_equal(tf.shape(state)[0], expected, message=(
                    f"{name}: initial_state has another batch size than this stateful layer's states, {expected}"))
                with tf.control_dependencies([check]):
                    state = tf.identity(state)
            checked.append(state)
        return checked

    def load_own_variables(self, store):
        # Keras matches a weights file to the variables by position. A file from another weight form of this layer
        # (float32, int8, float16/bfloat16 recurrent kernels) has its entries in another order and dtype: matched
        # by position it fails on a shape that names neither, or (FusedGRU(units=2): every shape alike) loads the
        # bias into the recurrent kernel silently. The stored dtypes' sizes tell the forms apart.
        variables = self._trainable_variables + self._non_trainable_variables
        for i, variable in enumerate(variables):
            key = str(i)
            try:
                stored = store[key]
            except (KeyError, ValueError):
                break  # a count mismatch: Keras' own check below says so
            attrs = getattr(stored, "attrs", None)  # h5: bfloat16 is stored opaque (|V2) with a dtype attribute
            stored_dtype = attrs["dtype"] if attrs is not None and "dtype" in attrs else None
            if stored_dtype is None:
                stored_dtype = np.dtype(getattr(stored, "dtype", np.float32)).name
            stored_dtype = stored_dtype.decode() if isinstance(stored_dtype, bytes) else str(stored_dtype)
            want = keras.backend.standardize_dtype(variable.dtype)
            if stored_dtype != want:
                form = "int8" if self.int8_weights else self.recurrent_weight_dtype
                raise ValueError(
                    f"{type(self).__name__} {self.name!r} ({form} recurrent weights): the weights being loaded hold "
                    f"another weight form (entry {i} is {stored_dtype}, the layer's {variable.path} is {want}). "
                    "Load a float file into the float model and convert it with tf_ops.quantize_model, or load the "
                    "file saved from a model of this form")
        super().load_own_variables(store)

    def _flat_states(self, finals):
        """[D, B, width] per state kind -> per direction, per kind (h, c, then the backward's h, c)."""
        return [finals[k][d] for d in range(self._num_dirs) for k in range(len(finals))]

    def _to_compute_dtype(self, tensors):
        # Under a mixed policy the layer's outputs follow its compute dtype, as the stock layers' do.
        if self.compute_dtype == "float32":
            return tensors
        return tf.nest.map_structure(lambda t: tf.cast(t, self.compute_dtype), tensors)

    def compute_output_shape(self, sequences_shape, initial_state_shape=None):
        batch, time = sequences_shape[0], sequences_shape[1]
        width = self._width * (self._num_dirs if self.merge_mode == "concat" else 1)
        out = (batch, time, width) if self.return_sequences else (batch, width)
        outs = [out, out] if self.bidirectional and self.merge_mode is None else [out]
        if not self.return_state:
            return outs[0] if len(outs) == 1 else tuple(outs)
        state_shapes = [(batch, w) for _ in range(self._num_dirs) for w in self._state_widths()]
        # A tuple, as keras.layers.RNN returns: keras.layers.Bidirectional concatenates state shapes to it.
        return tuple(outs + state_shapes)

    def compute_mask(self, sequences, mask=None):
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        out_mask = mask if self.return_sequences else None
        extra = 1 if self.bidirectional and self.merge_mode is None else 0  # two outputs: [forward, backward]
        if self.return_state:
            n = len(self._state_widths()) * self._num_dirs
            return [out_mask] * (1 + extra) + [None] * n
        return [out_mask, out_mask] if extra else out_mask

    def get_config(self):
        config = super().get_config()
        ser = keras.initializers.serialize
        reg = keras.regularizers.serialize
        con = keras.constraints.serialize
        config.update({
            "units": self.units, "use_bias": self.use_bias,
            "kernel_initializer": ser(self.kernel_initializer),
            "recurrent_initializer": ser(self.recurrent_initializer),
            "bias_initializer": ser(self.bias_initializer),
            "kernel_regularizer": reg(self.kernel_regularizer),
            "recurrent_regularizer": reg(self.recurrent_regularizer),
            "bias_regularizer": reg(self.bias_regularizer),
            "kernel_constraint": con(self.kernel_constraint),
            "recurrent_constraint": con(self.recurrent_constraint),
            "bias_constraint": con(self.bias_constraint),
            "dropout": self.dropout, "seed": self.seed, "return_sequences": self.return_sequences,
            "return_state": self.return_state, "go_backwards": self.go_backwards, "stateful": self.stateful,
            "unroll": self.unroll,
            "zero_output_for_mask": self.zero_output_for_mask, "bidirectional": self.bidirectional,
            "merge_mode": self.merge_mode, "int8_weights": self.int8_weights,
            "activation": "tanh", "recurrent_activation": "sigmoid", "recurrent_dropout": 0.0,
            "recurrent_weight_dtype": self.recurrent_weight_dtype,
        })
        return config


@keras.saving.register_keras_serializable(package="tf_ops")
class FusedLSTM(_FusedRNN):
    """keras.layers.LSTM on the fused op, plus a projection (TF LSTMCell(num_proj=...)) and clips.

    Weights per direction: kernel [input, 4H], recurrent_kernel [R, 4H], bias [4H] (if use_bias), and
    projection_kernel [H, num_proj] (if num_proj); R = num_proj or H. Gate order i, f, c, o.
    """

    _GATES = 4

    def __init__(self, units, unit_forget_bias=True, num_proj=None, cell_clip=None, proj_clip=None,
                 projection_initializer="glorot_uniform", projection_regularizer=None, projection_constraint=None,
                 **kwargs):
        super().__init__(units, **kwargs)
        if num_proj is not None:
            num_proj = _positive_int(num_proj, "FusedLSTM: num_proj")
        _check(proj_clip is None or num_proj, "FusedLSTM: proj_clip needs num_proj")
        _check(cell_clip is None or cell_clip >= 0, "FusedLSTM: cell_clip must be >= 0")
        _check(proj_clip is None or proj_clip >= 0, "FusedLSTM: proj_clip must be >= 0")
        self.unit_forget_bias = unit_forget_bias
        self.num_proj = int(num_proj) if num_proj else None
        self.cell_clip = cell_clip
        self.proj_clip = proj_clip
        self.projection_initializer = keras.initializers.get(projection_initializer)
        self.projection_regularizer = keras.regularizers.get(projection_regularizer)
        self.projection_constraint = keras.constraints.get(projection_constraint)

    @property
    def _width(self):
        return self.num_proj or self.units

    def _state_widths(self):
        return (self._width, self.units)

    def _add_cell_weights(self, prefix, input_dim):
        h = self.units
        w = {"kernel": self._add(prefix + "kernel", (input_dim, 4 * h), self.kernel_initializer,
                                 self.kernel_regularizer, self.kernel_constraint)}
        self._add_recurrent(w, "recurrent_kernel", prefix, (self._width, 4 * h), self.recurrent_initializer,
                            self.recurrent_regularizer, self.recurrent_constraint)
        if self.use_bias:
            if self.unit_forget_bias:
                base = self.bias_initializer

                def bias_init(shape, dtype=None):
                    return tf.concat([base((h,), dtype=dtype), tf.ones((h,), dtype=dtype),
                                      base((2 * h,), dtype=dtype)], axis=0)
            else:
                bias_init = self.bias_initializer
            w["bias"] = self._add(prefix + "bias", (4 * h,), bias_init, self.bias_regularizer, self.bias_constraint)
        if self.num_proj:
            self._add_recurrent(w, "projection_kernel", prefix, (h, self.num_proj), self.projection_initializer,
                                self.projection_regularizer, self.projection_constraint)
        return w

    def _run(self, x_proj, lengths, initial_states, direction, training):
        if self.int8_weights:
            dw = self._dir_weights
            out, h, c = ops.lstm_sequence_int8(
                x_proj, _stack([w["recurrent_kernel_q8"] for w in dw]), _stack([w["recurrent_scale"] for w in dw]),
                lengths, initial_states[0], initial_states[1],
                projection_kernel_q8=_stack([w["projection_kernel_q8"] for w in dw]) if self.num_proj else None,
                projection_scale=_stack([w["projection_scale"] for w in dw]) if self.num_proj else None,
                direction=direction, cell_clip=self.cell_clip or 0.0, proj_clip=self.proj_clip or 0.0)
            return out, (h, c)
        rec = _stack([w["recurrent_kernel"] for w in self._dir_weights])
        proj = _stack([w["projection_kernel"] for w in self._dir_weights]) if self.num_proj else None
        out, h, c = ops.lstm_sequence(x_proj, rec, lengths, initial_states[0], initial_states[1],
                                      projection_kernel=proj, direction=direction, cell_clip=self.cell_clip or 0.0,
                                      proj_clip=self.proj_clip or 0.0, training=self._op_training(training))
        return out, (h, c)

    def get_config(self):
        config = super().get_config()
        config.update({
            "unit_forget_bias": self.unit_forget_bias, "num_proj": self.num_proj, "cell_clip": self.cell_clip,
            "proj_clip": self.proj_clip,
            "projection_initializer": keras.initializers.serialize(self.projection_initializer),
            "projection_regularizer": keras.regularizers.serialize(self.projection_regularizer),
            "projection_constraint": keras.constraints.serialize(self.projection_constraint),
        })
        return config


@keras.saving.register_keras_serializable(package="tf_ops")
class FusedGRU(_FusedRNN):
    """keras.layers.GRU (reset_after=True, the cuDNN-compatible variant) on the fused op.

    Weights per direction: kernel [input, 3H], recurrent_kernel [H, 3H], bias [2, 3H] (input bias, recurrent
    bias; if use_bias). Gate order z, r, n.
    """

    _GATES = 3

    def __init__(self, units, reset_after=True, **kwargs):
        _check(reset_after, "FusedGRU: only reset_after=True (the cuDNN-compatible GRU) is fused")
        super().__init__(units, **kwargs)
        self.reset_after = True

    def _state_widths(self):
        return (self.units,)

    def _add_cell_weights(self, prefix, input_dim):
        h = self.units
        w = {"kernel": self._add(prefix + "kernel", (input_dim, 3 * h), self.kernel_initializer,
                                 self.kernel_regularizer, self.kernel_constraint)}
        self._add_recurrent(w, "recurrent_kernel", prefix, (h, 3 * h), self.recurrent_initializer,
                            self.recurrent_regularizer, self.recurrent_constraint)
        if self.use_bias:
            w["bias"] = self._add(prefix + "bias", (2, 3 * h), self.bias_initializer, self.bias_regularizer,
                                  self.bias_constraint)
        return w

    def _dir_input_bias(self, w):
        return tf.convert_to_tensor(w["bias"])[0]  # row 1 is the recurrent bias (reset_after)

    def _run(self, x_proj, lengths, initial_states, direction, training):
        if self.use_bias:
            rec_bias = tf.stack([tf.convert_to_tensor(w["bias"])[1] for w in self._dir_weights])
        else:
            rec_bias = tf.zeros([self._num_dirs, 3 * self.units])
        if self.int8_weights:
            dw = self._dir_weights
            out, h = ops.gru_sequence_int8(x_proj, _stack([w["recurrent_kernel_q8"] for w in dw]),
                                           _stack([w["recurrent_scale"] for w in dw]), rec_bias, lengths,
                                           initial_states[0], direction=direction)
            return out, (h,)
        rec = _stack([w["recurrent_kernel"] for w in self._dir_weights])
        out, h = ops.gru_sequence(x_proj, rec, rec_bias, lengths, initial_states[0], direction=direction,
                                  training=self._op_training(training))
        return out, (h,)

    def get_config(self):
        config = super().get_config()
        config["reset_after"] = True
        return config
