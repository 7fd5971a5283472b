"""Subprocess driver for tests/test_distribute.py.

Device counts must be fixed before JAX or TensorFlow initialise, so every
multi-device or multi-process case runs in a fresh interpreter:

    # one process, N devices: 1-device baseline vs N-device data parallel,
    # plus a BatchNorm statistics probe
    XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax \
        python tests/_dist_run.py equivalence --devices 2 --data DIR
    # one worker of a multi-process run (cluster from the environment:
    # KERAS_DISTRIBUTION_* on JAX, TF_CONFIG on TensorFlow)
    python tests/_dist_run.py worker --data DIR

The last stdout line is `RESULT <json>`.
"""

import argparse
import gzip
import json
import os
import re
import sys
import tempfile
import zipfile

SEED = 1337
GLOBAL_BATCH = 50
NUM_IMAGES = 200
EPOCHS = 2


def _setup_devices(devices):
    """Make `devices` CPU devices visible; call before any framework work."""
    backend = os.environ.get("KERAS_BACKEND", "jax")
    if devices == 1:
        return
    if backend == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        wanted = f"--xla_force_host_platform_device_count={devices}"
        if wanted not in flags:
            raise SystemExit(f"set XLA_FLAGS={wanted} before starting (got {flags!r})")
    elif backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
        )


def _mnist(data_dir):
    """200 MNIST test digits in [0, 1]; the second half of every global batch
    is inverted, so each replica's share has very different statistics."""
    import numpy as np

    with gzip.open(os.path.join(data_dir, "t10k-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
    with gzip.open(os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    x = images[:NUM_IMAGES].astype("float32") / 255.0
    y = labels[:NUM_IMAGES].astype("int32")
    second_half = (np.arange(NUM_IMAGES) % GLOBAL_BATCH) >= GLOBAL_BATCH // 2
    x[second_half] = 1.0 - x[second_half]
    return x, y


def _dataset(x, y):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)


def train(mode, data, sync_batchnorm=True):
    """Fit the tiny ViTBNFFN for EPOCHS epochs; return the loss curve."""
    import keras

    import keras_vitbn
    from keras_vitbn.runtime.distribute import distribution_scope

    class LossCurve(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.losses = []

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]))

    keras.utils.set_random_seed(SEED)
    x, y = data
    with distribution_scope(mode, sync_batchnorm=sync_batchnorm) as dist:
        model = keras_vitbn.create_model("vit_bnffn", depth=1, dim=16, heads=2, dim_head=8, mlp_dim=16)
        switched = dist.prepare_model(model)
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        curve = LossCurve()
        model.fit(_dataset(x, y), epochs=EPOCHS, verbose=0, callbacks=[curve])
        restored = [
            layer.synchronized
            for layer in model._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)
        ]
        info = dist.as_dict()
        if keras.backend.backend() == "jax":
            kernel = model.trainable_variables[0].value
            info["variable_devices"] = sorted(str(d) for d in kernel.sharding.device_set)
        info["describe"] = dist.describe()
        info["per_replica_batch"] = dist.per_replica_batch_size(GLOBAL_BATCH)
    info["synchronized_after_scope"] = [
        layer.synchronized for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)
    ]
    info["synchronized_in_scope"] = restored
    info["switched"] = switched
    info["losses"] = curve.losses
    return info


def bn_probe(mode, sync_batchnorm=True):
    """One step on a batch whose halves are 0 and 10: moving statistics with
    momentum 0 are the batch statistics the layer used (global variance 25,
    per-half variance 0)."""
    import keras
    import numpy as np

    from keras_vitbn.runtime.distribute import distribution_scope

    keras.utils.set_random_seed(SEED)
    x = np.concatenate([np.zeros((4, 3)), np.full((4, 3), 10.0)]).astype("float32")
    y = np.zeros((8, 1), "float32")
    seen = []

    class ShardingSpy(keras.layers.Layer):
        """Identity that records, on JAX, how its input is laid out on devices."""

        def call(self, inputs):
            if keras.backend.backend() == "jax":
                import jax

                def record(sharding):
                    seen.append(
                        sorted((str(d), str(idx)) for d, idx in sharding.devices_indices_map(inputs.shape).items())
                    )

                jax.debug.inspect_array_sharding(inputs, callback=record)
            return inputs

    with distribution_scope(mode, sync_batchnorm=sync_batchnorm) as dist:
        inputs = keras.Input((3,))
        bn = keras.layers.BatchNormalization(momentum=0.0, epsilon=1e-5)
        model = keras.Model(inputs, keras.layers.Dense(1)(bn(ShardingSpy()(inputs))))
        dist.prepare_model(model)
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        # A functional model saves its layers' configs: a checkpoint written
        # inside the scope must not carry synchronized=True (jax and torch
        # refuse to load that).
        path = os.path.join(tempfile.mkdtemp(), "probe.keras")
        model.save(path)
        with zipfile.ZipFile(path) as archive:
            saved = archive.read("config.json").decode()
        saved_flags = re.findall(r'"synchronized": (true|false)', saved)
        live_flag = bn.synchronized
        mean = keras.ops.convert_to_numpy(bn.moving_mean).tolist()
        variance = keras.ops.convert_to_numpy(bn.moving_variance).tolist()
        # On TensorFlow: the copy of the moving mean each replica holds.
        per_replica = [keras.ops.convert_to_numpy(v).tolist() for v in getattr(bn.moving_mean.value, "values", ())]
    # On JAX: the batch rows each device holds inside the jitted train step.
    return {
        "moving_mean": mean,
        "moving_variance": variance,
        "input_shards": seen[-1:],
        "replica_moving_mean": per_replica,
        "synchronized_in_scope": live_flag,
        "synchronized_saved_in_scope": saved_flags,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["equivalence", "worker"])
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--data", required=True, help="folder with MNIST t10k IDX files")
    args = parser.parse_args(argv)
    _setup_devices(args.devices)

    import keras

    keras.config.disable_traceback_filtering()
    backend = keras.backend.backend()
    data = _mnist(args.data)
    result = {"backend": backend}
    if args.command == "equivalence":
        result["devices"] = len(keras.distribution.list_devices()) if backend == "jax" else None
        result["baseline"] = train("none", data)
        result["data_parallel"] = train("data_parallel", data)
        result["probe_sync"] = bn_probe("data_parallel")
        if backend == "tensorflow":
            result["data_parallel_no_sync"] = train("data_parallel", data, sync_batchnorm=False)
            result["probe_no_sync"] = bn_probe("data_parallel", sync_batchnorm=False)
    else:
        result["multi_worker"] = train("multi_worker", data)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
