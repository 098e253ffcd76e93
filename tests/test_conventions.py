"""Coefficients from other libraries, translated into reglab's flags: each row of the table in
docs/regularization.md ("Coefficients from other libraries") checked numerically.

Every row is checked against a hand computation of the source's own formula (with where it is
defined), and against the library itself where it can run here: torch.optim always; Keras 3 on
the torch backend (``pip install keras``, in the test extra; skipped without it); optax (needs
jax, several hundred MB, so not in the test extra; skipped without it). TensorFlow 1 is too large
to install for a test: its formulas are written out from its source.

The reglab side always starts from the flags as a user types them (``reglab train ...``), then
runs reglab's step on a tiny float64 conv net (conv -> BN -> conv with bias -> linear), so that
the only differences left are the regularizers'. Keras coefficients and learning rates are powers
of two: Keras keeps some of them in float32 variables, and a power of two is the same number in
float32 and float64.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reglab.cli import build_parser, config_from_args
from reglab.config import TrainConfig
from reglab.regularization import build_regularization, default_scope
from reglab.training.loop import train_step
from reglab.training.optim import build_optimizer

ATOL = 1e-12  # float64; what is left is rounding (the same operations give 0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is several times faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Net(nn.Module):
    """Conv without bias -> BN -> conv with bias -> linear: every kind of parameter a scope can
    tell apart (conv.weight, conv.bias, norm.weight, norm.bias, linear.weight, linear.bias)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


def net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    model = Net().double()
    with torch.no_grad():  # BN's γ and β away from 1 and 0, so that decay on them shows
        model.bn1.weight.uniform_(0.5, 1.5)
        model.bn1.bias.uniform_(-0.5, 0.5)
    return model


def batches(n: int = 3, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(8, 3, 5, 5, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (8,), generator=g),
        )
        for _ in range(n)
    ]


def flags(*argv: str) -> TrainConfig:
    """The settings ``reglab train ARGV`` runs with, parsed as the command line parses them."""
    return config_from_args(build_parser().parse_args(["train", *argv]))


def default_names(model: nn.Module) -> set[str]:
    """reglab's default scope: conv and linear weights."""
    return {n for n, _ in default_scope(model)}


# ------------------------------------------------------------------------------ reglab's side


def reglab_grads(model: nn.Module, cfg: TrainConfig, x, y, lr: float = 0.125):
    """The gradient reglab hands to the optimizer (docs: "The step"): backward of
    data loss + plan.loss_term(), then plan.before_step(lr) (where the closed-form penalty
    gradients are added). Returns (grads by name, the penalty's value)."""
    plan = build_regularization(cfg, model)
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    term = plan.loss_term()
    (loss if term is None else loss + term).backward()
    plan.before_step(lr)
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}, plan.penalty()


def data_grads(model: nn.Module, x, y) -> dict[str, torch.Tensor]:
    """The gradient of the data loss alone (on a copy: the model is not touched)."""
    model = copy.deepcopy(model)
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def reglab_run(model: nn.Module, cfg: TrainConfig, data, lr: float) -> nn.Module:
    """Train as ``reglab train`` does: its plan, its optimizer, its train_step."""
    plan = build_regularization(cfg, model)
    opt = build_optimizer(cfg.optimizer, model.parameters(), lr, cfg.momentum)
    model.train()
    for x, y in data:
        train_step(model, x, y, plan, opt, lr)
    return model


# ----------------------------------------------------------------------------- the other side


def run_by_hand(model: nn.Module, data, update: Callable) -> nn.Module:
    """Data-loss gradients from autograd, then ``update(name, p, g, state)`` (under no_grad) per
    parameter: a library's update written out from its source."""
    state: dict[str, dict] = {n: {} for n, _ in model.named_parameters()}
    model.train()
    for t, (x, y) in enumerate(data, start=1):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for n, p in model.named_parameters():
                state[n]["t"] = t
                update(n, p, p.grad.clone(), state[n])
    return model


def run_torch(model: nn.Module, opt: torch.optim.Optimizer, data) -> nn.Module:
    """Plain torch: the data loss only, the optimizer's own decay."""
    model.train()
    for x, y in data:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def run_library(model: nn.Module, data, step: Callable) -> nn.Module:
    """Data-loss gradients from torch, the update by another library: ``step(grads)`` takes the
    gradients in ``model.parameters()`` order and returns the new values (tensors or arrays)."""
    model.train()
    for x, y in data:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        new = step([p.grad.detach().clone() for p in model.parameters()])
        with torch.no_grad():
            for p, v in zip(model.parameters(), new, strict=True):
                p.copy_(v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v)))
    return model


def assert_same(a: nn.Module, b: nn.Module, atol: float = ATOL) -> None:
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.allclose(p, q, rtol=0, atol=atol), f"{n}: max diff {(p - q).abs().max():.3g}"


def assert_differ(a: nn.Module, b: nn.Module, name: str, by: float = 1e-6) -> None:
    p, q = dict(a.named_parameters())[name], dict(b.named_parameters())[name]
    assert (p - q).abs().max() > by, f"{name}: expected different trajectories"


# ------------------------------------------------------------- TensorFlow 1 / tf-slim (by hand)


def test_tf_slim_l2_regularizer_is_l2_half():
    """tf.contrib.layers.l2_regularizer (= slim.regularizers.l2_regularizer), regularizers.py:
    ``standard_ops.multiply(my_scale, nn.l2_loss(weights))``; tf.nn.l2_loss (api_def_L2Loss):
    ``output = sum(t ** 2) / 2``. As weights_regularizer of conv2d and fully_connected it sees
    their weights only: reglab's default scope."""
    s = 3e-3
    model, ((x, y),) = net(), batches(1)
    g0 = data_grads(model, x, y)
    grads, penalty = reglab_grads(model, flags("--reg", f"l2-half={s}"), x, y)
    inside = default_names(model)
    params = dict(model.named_parameters())
    tf_penalty = sum(s * (params[n] ** 2).sum() / 2 for n in inside)  # scale * l2_loss(w)
    assert torch.allclose(penalty, tf_penalty, rtol=1e-14, atol=0)
    for n, p in params.items():
        want = g0[n] + s * p if n in inside else g0[n]  # d/dw of s·Σw²/2
        assert torch.allclose(grads[n], want, rtol=0, atol=ATOL), n
    # the same thing written in reglab's other units: l2 = s/2, or coupled decay wd = s
    for other in (f"l2={s / 2}", f"wd={s}"):
        again, _ = reglab_grads(net(), flags("--reg", other), x, y)
        for n in params:
            assert torch.allclose(again[n], grads[n], rtol=0, atol=ATOL), (other, n)


def test_tf1_momentumw_is_decay_per_step():
    """tf.contrib.opt.MomentumWOptimizer(weight_decay=d, learning_rate=lr, momentum=mu),
    weight_decay_optimizers.py: ``var.assign_sub(self._weight_decay * var)`` before the
    MomentumOptimizer update (accum = mu·accum + g; var -= lr·accum), on every variable it
    optimizes unless decay_var_list is given. d is not multiplied by lr."""
    d, lr, mu, data = 1e-2, 0.125, 0.9, batches()

    def momentumw(n, p, g, s):
        p -= d * p  # _decay_weights_op
        s["accum"] = mu * s.get("accum", torch.zeros_like(p)) + g
        p -= lr * s["accum"]

    cfg = flags("--optimizer", "sgd", "--momentum", str(mu), "--reg", f"decay-per-step={d}@*")
    ours = reglab_run(net(), cfg, data, lr)
    assert_same(ours, run_by_hand(net(), data, momentumw))

    # d is per step whatever lr: at half the lr (plain SGD) the decay is still d, not lr·d
    def plain(n, p, g, s):
        p -= d * p
        p -= lr / 2 * g

    cfg = flags("--momentum", "0", "--reg", f"decay-per-step={d}@*")
    assert_same(reglab_run(net(), cfg, data, lr / 2), run_by_hand(net(), data, plain))


# -------------------------------------------------------------------------------------- Keras 3


@pytest.fixture(scope="module")
def keras(tmp_path_factory):
    """Keras 3 on the torch backend and the CPU, or a skip. KERAS_HOME is a temporary folder
    during the import, so that the import writes no ~/.keras/keras.json."""
    if "keras" not in sys.modules:
        env = {"KERAS_BACKEND": "torch", "KERAS_TORCH_DEVICE": "cpu",
               "KERAS_HOME": str(tmp_path_factory.mktemp("keras-home"))}  # fmt: skip
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            keras = pytest.importorskip("keras", reason="Keras 3 not installed: pip install keras")
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    else:
        keras = sys.modules["keras"]
    if not keras.__version__.startswith("3.") or keras.backend.backend() != "torch":
        pytest.skip(f"needs Keras 3 on the torch backend (got {keras.__version__}, "
                    f"{keras.backend.backend()})")  # fmt: skip
    return keras


def test_keras_l2_is_l2_by_hand():
    """keras.regularizers.L2 (keras/src/regularizers/regularizers.py):
    ``ops.cast(self.l2, dtype=x.dtype) * ops.sum(ops.square(x))``: c·Σw², not halved; gradient
    2c·w. As kernel_regularizer of every Conv/Dense layer: reglab's default scope."""
    c = 2.0**-8
    model, ((x, y),) = net(), batches(1)
    g0 = data_grads(model, x, y)
    params, inside = dict(model.named_parameters()), default_names(model)
    keras_penalty = sum(c * (params[n] ** 2).sum() for n in inside)
    for argv in (["--reg", f"l2={c}"], ["--l2", str(c)], ["--reg", f"l2-half={2 * c}"],
                 ["--reg", f"wd={2 * c}"]):  # fmt: skip
        grads, penalty = reglab_grads(model, flags(*argv), x, y)
        if argv[1] != f"wd={2 * c}":  # coupled decay has no penalty term, only its gradient
            assert torch.allclose(penalty, keras_penalty, rtol=1e-14, atol=0), argv
        for n, p in params.items():
            want = g0[n] + 2 * c * p if n in inside else g0[n]
            assert torch.allclose(grads[n], want, rtol=0, atol=ATOL), (argv, n)


def test_keras_l2_against_keras(keras):
    c = 2.0**-8
    model, ((x, y),) = net(), batches(1)
    grads, penalty = reglab_grads(model, flags("--reg", f"l2={c}"), x, y)
    g0 = data_grads(model, x, y)
    reg = keras.regularizers.L2(l2=c)
    for n, p in model.named_parameters():
        w = p.detach().clone().requires_grad_(True)
        keras_penalty = reg(w)  # a torch tensor on the torch backend, differentiable
        (keras_grad,) = torch.autograd.grad(keras_penalty, w)
        if n in default_names(model):
            assert torch.allclose(grads[n] - g0[n], keras_grad, rtol=0, atol=ATOL), n
    keras_total = sum(reg(p.detach()) for n, p in model.named_parameters()
                      if n in default_names(model))  # fmt: skip
    assert torch.allclose(penalty, torch.as_tensor(keras_total), rtol=1e-14, atol=0)


def test_keras_optimizer_weight_decay_is_decoupled(keras):
    """keras.optimizers.*(weight_decay=wd), base_optimizer.py _apply_weight_decay:
    ``variable.assign(variable - variable * wd * lr)`` on every trainable variable (unless
    exclude_from_weight_decay), before the update: reglab's decoupled-wd on scope *."""
    wd, lr, mu, data = 2.0**-4, 2.0**-3, 0.875, batches()

    def keras_sgd(model):
        variables = [keras.Variable(p.detach().numpy().copy(), dtype="float64")
                     for p in model.parameters()]  # fmt: skip
        opt = keras.optimizers.SGD(learning_rate=lr, momentum=mu, weight_decay=wd)

        def step(grads):
            opt.apply_gradients(list(zip(grads, variables)))
            return [v.value.detach() for v in variables]

        return step

    theirs = net()
    run_library(theirs, data, keras_sgd(theirs))
    cfg = flags("--optimizer", "sgd", "--momentum", str(mu), "--reg", f"decoupled-wd={wd}@*")
    assert_same(reglab_run(net(), cfg, data, lr), theirs)

    # by hand: w <- w - w·wd·lr, then Keras' SGD (m = mu·m - lr·g; w += m)
    def by_hand(n, p, g, s):
        p -= p * wd * lr
        s["m"] = mu * s.get("m", torch.zeros_like(p)) - lr * g
        p += s["m"]

    assert_same(run_by_hand(net(), data, by_hand), theirs)

    # AdamW: Keras adds Adam's ε to √v before the bias correction, torch after it, so the
    # trajectories differ by ε; the decay itself is the same: one step with it minus one step
    # without it is -lr·wd·w in Keras and in reglab.
    ((x, y),) = batches(1)

    def keras_adamw_step(decay):
        model = net()
        variables = [keras.Variable(p.detach().numpy().copy(), dtype="float64")
                     for p in model.parameters()]  # fmt: skip
        opt = keras.optimizers.AdamW(learning_rate=lr, weight_decay=decay, beta_1=0.875)
        F.cross_entropy(model(x), y).backward()
        opt.apply_gradients([(p.grad, v) for p, v in zip(model.parameters(), variables)])
        return [v.value.detach() for v in variables]

    def reglab_adamw_step(decay):
        rule = f"decoupled-wd={decay}@*"
        cfg = flags("--optimizer", "adamw", "--momentum", "0.875", "--reg", rule)
        return list(reglab_run(net(), cfg, [(x, y)], lr).parameters())

    keras_change = [a - b for a, b in zip(keras_adamw_step(wd), keras_adamw_step(0.0))]
    our_change = [a - b for a, b in zip(reglab_adamw_step(wd), reglab_adamw_step(0.0))]
    for (n, w), ours, theirs in zip(net().named_parameters(), our_change, keras_change):
        assert torch.allclose(ours, -lr * wd * w, rtol=0, atol=ATOL), n
        assert torch.allclose(theirs, -lr * wd * w, rtol=0, atol=ATOL), n


# ---------------------------------------------------------------------------------- torch.optim


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_torch_sgd_weight_decay(momentum):
    """torch.optim.SGD(weight_decay=wd): g <- g + wd·θ before momentum, on every parameter of the
    group: reglab's wd on scope * (all parameters) or on the default scope (a decay group of conv
    and linear weights only). The same as the half penalty l2-half=wd."""
    wd, lr, data = 1e-2, 0.125, batches()
    mu = str(momentum)
    ref = net()
    run_torch(ref, torch.optim.SGD(ref.parameters(), lr=lr, momentum=momentum, weight_decay=wd),
              data)  # fmt: skip
    assert_same(reglab_run(net(), flags("--momentum", mu, "--reg", f"wd={wd}@*"), data, lr), ref)
    assert_same(reglab_run(net(), flags("--momentum", mu, "--reg", f"l2-half={wd}@*"), data, lr),
                ref)  # fmt: skip

    # the torch docs' algorithm by hand: g <- g + λθ; b <- μb + g (b = g at first); θ <- θ - γb
    def by_hand(n, p, g, s):
        g = g + wd * p
        s["b"] = g if "b" not in s else momentum * s["b"] + g
        p -= lr * s["b"]

    assert_same(run_by_hand(net(), data, by_hand), ref)

    # nanoGPT/timm's split: decay on conv and linear weights, none on biases and BN
    ref = net()
    inside = default_names(ref)
    groups = [
        {"params": [p for n, p in ref.named_parameters() if n in inside], "weight_decay": wd},
        {"params": [p for n, p in ref.named_parameters() if n not in inside]},
    ]
    run_torch(ref, torch.optim.SGD(groups, lr=lr, momentum=momentum), data)
    assert_same(reglab_run(net(), flags("--momentum", mu, "--reg", f"wd={wd}"), data, lr), ref)


def test_torch_adam_weight_decay_is_the_half_penalty_too():
    """torch.optim.Adam(weight_decay=wd) adds wd·θ to the gradient before Adam's moments, as a
    penalty wd·Σθ²/2 does: coupled decay and the L2 penalty coincide under Adam as well."""
    wd, lr, data = 1e-2, 2.0**-7, batches()
    ref = net()
    run_torch(ref, torch.optim.Adam(ref.parameters(), lr=lr, weight_decay=wd), data)
    for rule in (f"wd={wd}@*", f"l2-half={wd}@*", f"l2={wd / 2}@*"):
        assert_same(reglab_run(net(), flags("--optimizer", "adamw", "--reg", rule), data, lr), ref)


def test_torch_adamw():
    """torch.optim.AdamW(weight_decay=wd): θ <- θ - lr·wd·θ, then Adam's update, on every
    parameter of the group: reglab's decoupled-wd on scope *, with --optimizer adamw
    (--momentum is β1)."""
    wd, lr, data = 5e-2, 2.0**-7, batches()
    ref = net()
    run_torch(ref, torch.optim.AdamW(ref.parameters(), lr=lr, betas=(0.9, 0.999),
                                     weight_decay=wd), data)  # fmt: skip
    cfg = flags("--optimizer", "adamw", "--momentum", "0.9", "--reg", f"decoupled-wd={wd}@*")
    assert_same(reglab_run(net(), cfg, data, lr), ref)

    # by hand (torch docs' algorithm): θ <- θ(1 - γλ); Adam with bias corrections
    def by_hand(n, p, g, s):
        b1, b2, eps, t = 0.9, 0.999, 1e-8, s["t"]
        p -= lr * wd * p
        s["m"] = b1 * s.get("m", torch.zeros_like(p)) + (1 - b1) * g
        s["v"] = b2 * s.get("v", torch.zeros_like(p)) + (1 - b2) * g * g
        m_hat, v_hat = s["m"] / (1 - b1**t), s["v"] / (1 - b2**t)
        p -= lr * m_hat / (v_hat.sqrt() + eps)

    assert_same(run_by_hand(net(), data, by_hand), ref)


def test_where_the_equivalences_stop():
    """Penalty and coupled decay are one thing under every optimizer (above). Decoupled decay
    equals them under plain SGD only (with decay-per-step = lr·c at a constant lr); with
    momentum or Adam it is another regularizer."""
    c, lr, data = 2e-2, 0.125, batches()
    plain = [f"wd={c}", f"l2-half={c}", f"l2={c / 2}", f"decoupled-wd={c}",
             f"decay-per-step={lr * c}"]  # fmt: skip
    runs = [reglab_run(net(), flags("--momentum", "0", "--reg", r), data, lr) for r in plain]
    for run in runs[1:]:
        assert_same(run, runs[0])
    for optimizer, momentum, step in (("sgd", "0.9", lr), ("adamw", "0.9", 2.0**-7)):
        coupled = reglab_run(net(), flags("--optimizer", optimizer, "--momentum", momentum,
                                          "--reg", f"wd={c}"), data, step)  # fmt: skip
        decoupled = reglab_run(net(), flags("--optimizer", optimizer, "--momentum", momentum,
                                            "--reg", f"decoupled-wd={c}"), data, step)  # fmt: skip
        assert_differ(coupled, decoupled, "conv1.weight")


# ---------------------------------------------------------------------------------------- optax


def optax_by_hand_sgd(wd, lr, mu):
    """optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=mu)):
    add_decayed_weights (transforms/_adding.py) ``g + s * p``; sgd = chain(trace(decay=mu),
    scale_by_learning_rate(lr)); trace (transform.py) ``g + decay * t`` from t = 0."""

    def update(n, p, g, s):
        u = g + wd * p
        s["trace"] = u + mu * s.get("trace", torch.zeros_like(p))
        p -= lr * s["trace"]

    return update


def optax_by_hand_adamw(wd, lr, b1=0.9, b2=0.999, eps=1e-8):
    """optax.adamw (alias.py) = chain(scale_by_adam(b1, b2, eps), add_decayed_weights(wd),
    scale_by_learning_rate(lr)); scale_by_adam: m̂ / (√v̂ + eps) with bias corrections."""

    def update(n, p, g, s):
        t = s["t"]
        s["m"] = b1 * s.get("m", torch.zeros_like(p)) + (1 - b1) * g
        s["v"] = b2 * s.get("v", torch.zeros_like(p)) + (1 - b2) * g * g
        u = (s["m"] / (1 - b1**t)) / ((s["v"] / (1 - b2**t)).sqrt() + eps) + wd * p
        p -= lr * u

    return update


def test_optax_by_hand():
    wd, data = 1e-2, batches()
    cfg = flags("--momentum", "0.9", "--reg", f"wd={wd}@*")
    assert_same(reglab_run(net(), cfg, data, 0.125),
                run_by_hand(net(), data, optax_by_hand_sgd(wd, 0.125, 0.9)))  # fmt: skip
    cfg = flags("--optimizer", "adamw", "--momentum", "0.9", "--reg", f"decoupled-wd={wd}@*")
    assert_same(reglab_run(net(), cfg, data, 2.0**-7),
                run_by_hand(net(), data, optax_by_hand_adamw(wd, 2.0**-7)))  # fmt: skip


@pytest.fixture(scope="module")
def optax():
    """optax in float64 (jax_enable_x64 for these tests only), or a skip."""
    jax = pytest.importorskip("jax", reason="jax not installed (optax needs it)")
    optax = pytest.importorskip("optax", reason="optax not installed")
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield optax
    jax.config.update("jax_enable_x64", before)


def optax_stepper(optax, tx, model):
    import jax.numpy as jnp

    params = [jnp.asarray(p.detach().numpy()) for p in model.parameters()]
    state = {"params": params, "opt": tx.init(params)}

    def step(grads):
        g = [jnp.asarray(x.numpy()) for x in grads]
        updates, state["opt"] = tx.update(g, state["opt"], state["params"])
        state["params"] = optax.apply_updates(state["params"], updates)
        return state["params"]

    return step


def test_optax_against_optax(optax):
    wd, data = 1e-2, batches()
    theirs = net()
    tx = optax.chain(optax.add_decayed_weights(wd), optax.sgd(0.125, momentum=0.9))
    run_library(theirs, data, optax_stepper(optax, tx, theirs))
    cfg = flags("--momentum", "0.9", "--reg", f"wd={wd}@*")
    assert_same(reglab_run(net(), cfg, data, 0.125), theirs)

    theirs = net()
    tx = optax.adamw(2.0**-7, b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd)
    run_library(theirs, data, optax_stepper(optax, tx, theirs))
    cfg = flags("--optimizer", "adamw", "--momentum", "0.9", "--reg", f"decoupled-wd={wd}@*")
    assert_same(reglab_run(net(), cfg, data, 2.0**-7), theirs)


# ------------------------------------------------------------------------------- the tutorial


def test_tutorial_text_is_l2():
    """The text: f = loss + λ Σ‖p‖², p_j -> p_j - η ∂loss/∂p_j - 2ηλ p_j (one gradient step)."""
    lam, eta = 1e-2, 0.125
    ((x, y),) = data = batches(1)
    p0 = dict(net().named_parameters())
    g0 = data_grads(net(), x, y)
    inside = default_names(net())
    for argv in (["--l2", str(lam)], ["--reg", f"l2={lam}"]):
        ours = reglab_run(net(), flags("--momentum", "0", *argv), data, eta)
        for n, p in ours.named_parameters():
            want = p0[n] - eta * g0[n] - (2 * eta * lam * p0[n] if n in inside else 0)
            assert torch.allclose(p, want, rtol=0, atol=ATOL), (argv, n)


def test_tutorial_code_is_the_preset():
    """The code: slim.regularizers.l2_regularizer(1e-4) on conv2d and fully_connected weights,
    i.e. 1e-4 · Σw²/2: the tutorial preset's rule."""
    model = net()
    plan = build_regularization(flags("--preset", "tutorial"), model)
    assert [r.label for r in plan.regularizers] == ["l2-half=1e-4"]
    ((x, y),) = batches(1)
    grads, _ = reglab_grads(model, flags("--preset", "tutorial"), x, y)
    g0 = data_grads(model, x, y)
    for n, p in model.named_parameters():
        want = g0[n] + 1e-4 * p if n in default_names(model) else g0[n]
        assert torch.allclose(grads[n], want, rtol=0, atol=ATOL), n


def test_the_tutorials_run_had_lambda_zero():
    """Its train op minimised the cross entropy alone: the run it printed is the preset with the
    rule's coefficient at 0, i.e. no regularizer at all. --l2 0 alone is not that run (--l2 is
    already 0; the preset's rule stays)."""
    model = net()
    as_ran = flags("--preset", "tutorial", "--reg", "l2-half=0")
    assert build_regularization(as_ran, model).regularizers == []
    still = build_regularization(flags("--preset", "tutorial", "--l2", "0"), model)
    assert [r.label for r in still.regularizers] == ["l2-half=1e-4"]
    # and its step is the plain momentum-SGD step on the data loss, to the bit
    data = batches()
    ref = net()
    run_torch(ref, torch.optim.SGD(ref.parameters(), lr=as_ran.lr, momentum=as_ran.momentum), data)
    assert_same(reglab_run(net(), as_ran, data, as_ran.lr), ref, atol=0)
