"""LoRA's in-place update (fastpaths.add_lora_in_place): the same numbers as peft's forward, fewer tensors."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import Linear as LoraLinear
from torch.utils._python_dispatch import TorchDispatchMode

from rlhflab.fastpaths import add_lora_in_place


class Block(torch.nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.up = torch.nn.Linear(12, 20, dtype=dtype)
        self.down = torch.nn.Linear(20, 12, bias=False, dtype=dtype)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


def lora_block(dtype=torch.float32, dropout=0.0, seed=0, **extra):
    """A two-layer block with two LoRA adapters whose B is not zero (so the update changes the output)."""
    torch.manual_seed(seed)
    settings = dict(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["up", "down"], init_lora_weights=False)
    model = get_peft_model(Block(dtype), LoraConfig(**settings, **extra), adapter_name="first")
    model.add_adapter("second", LoraConfig(**{**settings, "lora_alpha": 3}, **extra))
    return model


def run(model, x, seed=0, **kwargs):
    """Output, input gradient and every trainable parameter's gradient of one forward + backward."""
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same dropout masks for both forwards
    out = model(x, **kwargs)
    (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("active", [["first"], ["first", "second"]])
def test_in_place_lora_gives_bit_identical_outputs_and_gradients(dtype, dropout, active):
    """Same roundings in the same order: in fp32, and with a bf16 base whose adapters peft keeps in fp32 (the sum
    is taken in fp32 and rounded to bf16 once, in place as in peft's ``(result + update).to(bf16)``). Two active
    adapters keep peft's forward (it rounds their sum once)."""
    x = torch.randn(3, 5, 12).to(dtype)
    results = []
    for in_place in (False, True):
        model = lora_block(dtype, dropout)
        model.base_model.set_adapter(active)
        model.train()
        if in_place:
            add_lora_in_place(model)
        results.append(run(model, x))
    (out, x_grad, grads), (out_ip, x_grad_ip, grads_ip) = results
    assert out.dtype == out_ip.dtype == dtype
    with model.disable_adapter():
        assert not torch.equal(out, model(x).detach())  # the adapters change the output
    assert torch.equal(out_ip, out) and torch.equal(x_grad_ip, x_grad)
    assert len(grads) == 4 * len(active) and all(g.abs().sum() > 0 for g in grads)
    for g, g_ip in zip(grads, grads_ip):
        assert g_ip.dtype == g.dtype and torch.equal(g_ip, g)


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_in_place_lora_makes_no_scaled_copy_and_no_new_sum():
    """peft's forward makes a scaled copy of the update and a new sum per adapted layer; the in-place one makes
    neither, in the passes with and without gradients."""
    x = torch.randn(3, 5, 12)
    for grad in (True, False):
        ops = []
        for in_place in (False, True):
            model = lora_block()
            if in_place:
                add_lora_in_place(model)
            with torch.set_grad_enabled(grad), OpRecorder() as recorder:
                model(x)
            ops.append([op for op in recorder.ops if op.startswith(("add", "mul"))])
        peft_ops, in_place_ops = ops
        assert peft_ops.count("mul.Tensor") == 2 and peft_ops.count("add.Tensor") == 2, peft_ops
        assert in_place_ops.count("mul_.Tensor") == 2 and in_place_ops.count("add_.Tensor") == 2, in_place_ops
        assert "mul.Tensor" not in in_place_ops and "add.Tensor" not in in_place_ops


def test_in_place_lora_leaves_peft_variants_mixed_batches_and_disabled_or_merged_adapters_to_peft():
    x = torch.randn(4, 5, 12)
    for case in ("dora", "adapter_names", "disabled", "merged"):
        results = []
        for in_place in (False, True):
            model = lora_block(use_dora=True) if case == "dora" else lora_block()
            if in_place:
                add_lora_in_place(model)
            if case == "dora":
                out, x_grad, grads = run(model, x)
            elif case == "adapter_names":
                model.eval()  # peft takes adapter_names in eval mode only
                out, x_grad, grads = run(model, x, adapter_names=["first", "second", "__base__", "first"])
            elif case == "disabled":
                with model.disable_adapter():
                    out, x_grad, grads = run(model, x)
            else:
                model.base_model.merge_adapter(["first"])
                with torch.no_grad():
                    out, x_grad, grads = model(x), None, []
            results.append([out, x_grad, *grads])
        for peft_tensor, in_place_tensor in zip(*results, strict=True):
            assert (in_place_tensor is None and peft_tensor is None) or torch.equal(in_place_tensor, peft_tensor), case


def test_a_deep_copy_runs_its_own_lora_weights():
    model = lora_block()
    add_lora_in_place(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in twin.named_parameters():
            if "lora_B" in name:
                p.zero_()
    x = torch.randn(2, 12)
    with torch.no_grad():
        with twin.disable_adapter():
            base = twin(x)
        assert torch.equal(twin(x), base)  # its own (zeroed) adapters, not the original's
        assert not torch.equal(model(x), twin(x))
    assert all(m.forward.__self__ is m for m in twin.modules() if type(m) is LoraLinear)
