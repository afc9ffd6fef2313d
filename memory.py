"""The GPU memory plan: each phase of an SQLM step's peak memory, predicted from the model config
and the run's settings (arithmetic only, nothing allocated), and the rollout rows and micro-batch
that fit a card. `harness.fit_to_memory` applies it on a GPU (--fit-memory); `python bench.py
memory` prints it for the Qwen2.5 shapes; tests/test_memory.py checks its coefficients against
allocations measured on CPU. docs/memory.md has the table and what it leaves out.
"""

USABLE = 0.9  # of a card, for fit_memory: the rest for the CUDA context, kernels, fragmentation


def attention_widths(config):
    """(q_width, kv_width): the output widths of the query and the key (or value) projections."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim


def parameter_count(config):
    """Weights of a Qwen2/Llama-style decoder (q/k/v biases where the family has them, tied or
    untied head)."""
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    q_width, kv_width = attention_widths(config)
    bias = config.model_type == "qwen2" or getattr(config, "attention_bias", False)
    qkv = q_width + 2 * kv_width
    attention = hidden * qkv + q_width * hidden + bias * qkv  # q, k, v (and their biases), o
    per_layer = attention + 3 * hidden * inter + 2 * hidden  # + MLP (gate, up, down) + two RMSNorms
    return root_weights(config) + layers * per_layer


def critic_parameter_count(config):
    """Weights of the critic (sqlm.Critic): the decoder with its embedding, no lm-head, and a
    scalar head (hidden + 1)."""
    lm_head = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    return parameter_count(config) - lm_head + config.hidden_size + 1


def root_weights(config):
    """Weights outside the decoder layers: embedding, lm-head unless tied, final norm."""
    heads = 1 if config.tie_word_embeddings else 2  # the embedding, and an untied lm-head
    return config.vocab_size * config.hidden_size * heads + config.hidden_size


def memory_plan(config, *, rollout_rows, microbatch, max_prompt, max_response, n=4, kl=True,
                grad_checkpointing=False, gpu=True, fused_adamw=False, chunk_tokens=4096, world=1,
                kl_bytes=4, critic=False):
    """Predicted peak memory (bytes) of each phase of an SQLM step, per process, from the model
    config and the run's settings.

    gpu=True is sqlm.py's CUDA path: fp32 weights under bf16 autocast, a bf16 sampling copy, bf16
    KV cache; gpu=False is its CPU path (everything fp32, sampling on the trained model). N weights:

      resident    4N fp32 weights + 8N AdamW moments + 4N fp32 KL reference (kl > 0; 2N in bf16,
                  kl_bytes=2)
      rollout     + 2N bf16 sampling copy (freed during the update: sqlm.release_sampler)
                  + the decoding peak (`rollout_bytes`)
      logprobs    (old and reference log-probs, no grad) + 2N autocast's bf16 weight casts + the
                  final hidden states + the larger of the lm-head chunk (chunk x vocab fp32 logits
                  and their exp) and an MLP's three I-wide transients
      update      + 4N gradients + 2N autocast casts + the activations autograd keeps for backward
                  and what backward adds (`activation_bytes`)
      optimizer   + 4N gradients + 4N (AdamW's default foreach step holds sqrt(v) for every weight
                  at once; fused_adamw=True, AdamW(fused=True) on CUDA, has no such copy)

    critic=True (--critic, C = `critic_parameter_count` weights): resident + 4C fp32 weights + 8C
    AdamW moments; its value pass is smaller than the log-prob pass (no vocabulary-wide chunk), and
    its own update and AdamW step (value_update, value_optimizer) are the policy's phases with C
    weights and no lm-head chunk (they run before the policy's update, its gradients freed).

    Counted from Qwen2's decoder layer and checked against allocations measured on CPU
    (tests/test_memory.py); on a GPU the attention kernel's own workspace, the CUDA context
    (~0.5 GB) and allocator fragmentation are not counted: `fit_memory` leaves headroom for them.
    Assumes the gradients are freed after each update (optimizer.zero_grad(set_to_none=True)).
    world > 1 (torchrun, FSDP2; predicted, not measured): see `update_weight_bytes`; each process
    keeps a whole sampling copy (fp32 on CPU). Rollout rows and micro-batches are per process.
    """
    weights = parameter_count(config)
    e = 2 if gpu else 4  # bytes per element of what autocast computes (and of the sampler's cache)
    tokens, scored = microbatch * (max_prompt + max_response), microbatch * max_response

    shard = weights / world
    critic_weights = critic_parameter_count(config) if critic else 0
    resident = {"weights": 4 * shard, "adamw": 8 * shard,
                "kl_reference": kl_bytes * shard if kl else 0, "critic": 12 * critic_weights / world}
    sampler_copy = 2 * weights if gpu else 4 * weights if world > 1 else 0  # 1 CPU process: no copy
    kv_cache, decoding = rollout_bytes(config, rollout_rows, n, max_prompt, max_response, e)
    chunk = min(chunk_tokens, scored) * config.vocab_size * 4  # the fp32 logits of an lm-head chunk
    grads, casts = update_weight_bytes(config, weights, gpu, world)
    saved, backward = activation_bytes(config, tokens, chunk, e, grad_checkpointing)
    final_hidden = tokens * 12 * config.hidden_size  # 3 fp32 H-wide a token, as in activation_bytes
    mlp_transients = tokens * e * 3 * config.intermediate_size  # of one MLP, no grad
    phases = {
        "rollout": sampler_copy + decoding,
        "logprobs": casts + final_hidden + max(2 * chunk, mlp_transients),
        "update": grads + casts + saved + backward,
        "optimizer": 4 * shard * (1 if fused_adamw else 2),
    }
    if critic:
        critic_grads, critic_casts = update_weight_bytes(config, critic_weights, gpu, world)
        critic_saved, critic_backward = activation_bytes(config, tokens, 0, e, grad_checkpointing)
        phases["value_update"] = critic_grads + critic_casts + critic_saved + critic_backward
        phases["value_optimizer"] = 4 * critic_weights / world * (1 if fused_adamw else 2)
    plan = dict(resident, resident=sum(resident.values()), sampler_copy=sampler_copy,
                kv_cache=kv_cache, activations=saved, logprob_chunk=chunk, grads=4 * shard)
    plan.update({f"{name}_peak": plan["resident"] + extra for name, extra in phases.items()})
    plan["peak"] = max(plan[f"{name}_peak"] for name in phases)
    plan["peak_phase"] = max(phases, key=lambda name: plan[f"{name}_peak"])
    return plan


def rollout_bytes(config, rows, n, max_prompt, max_response, e):
    """(KV cache, decoding peak) in bytes, for `rows` sequences of n samples per prompt at e bytes
    per element. The peak is the largest of, in time order: the prefill (its own cache of rows / n
    prompts x max_prompt, and one layer's transients); the prefill's cache copied into the
    preallocated one, rows x (max_prompt + max_response) x layers x 2 (K, V) x kv_width x e; that
    cache and a decode step's (rows, vocab) sampling buffers (logits bf16 + fp32, log-probs, probs,
    float64 CDF: 26 B per row per vocabulary entry) and one decode layer's transients."""
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv_width = attention_widths(config)[1]
    kv_cache = rows * (max_prompt + max_response) * layers * 2 * kv_width * e
    prompts = -(-rows // n)
    prefill_cache = prompts * max_prompt * layers * 2 * kv_width * e
    prefill_layer = prompts * max_prompt * (16 * hidden + e * 3 * inter)  # a layer's, no grad
    sampling = rows * (config.vocab_size * 26 + e * 3 * inter + 12 * hidden)
    in_time_order = (prefill_cache + prefill_layer, prefill_cache + kv_cache, kv_cache + sampling)
    return kv_cache, max(in_time_order)


def update_weight_bytes(config, weights, gpu, world):
    """(gradients, autocast's bf16 weight casts) in bytes per process during the update: 4N and 2N
    (none on CPU). world > 1 (FSDP2): the gradients are sharded (/ world) like the weights, AdamW
    moments and KL reference; each process keeps autocast's 2N casts (parallel.shard) and adds
    FSDP2's gathered fp32 weights of the root (embedding, final norm, lm-head) and two decoder
    layers (the one computing, the one prefetched), and their unsharded fp32 gradients before the
    reduce-scatter."""
    casts = 2 * weights if gpu else 0
    if world == 1:
        return 4 * weights, casts
    root = root_weights(config)
    gathered = root + 2 * (weights - root) / config.num_hidden_layers
    return 4 * (weights / world) + 4 * gathered, casts + 4 * gathered


def activation_bytes(config, tokens, chunk, e, grad_checkpointing):
    """(activations kept for backward, what backward adds at its peak) in bytes, for a micro-batch
    of `tokens` tokens and an lm-head chunk of `chunk` bytes of fp32 logits.

    Kept per token, per layer: 4 fp32 H-wide tensors (the two RMSNorms' inputs and normalised
    values) and, at e bytes per element (2 under bf16 autocast, 4 in fp32), 3 H-wide (norm
    outputs, attention output), 4 kv-wide (k, v, rotated k, RoPE input) and 4 I-wide (gate, silu,
    up, their product) tensors; plus 3 fp32 H-wide outside the layers (embedding, final norm).
    Backward adds the lm-head chunk recomputed (logits, exp, gradient, softmax). With gradient
    checkpointing only each layer's fp32 input is kept, and backward adds the larger of that chunk
    and one recomputed layer with its gradients (they come one after the other)."""
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = 16 * hidden + e * (3 * hidden + 4 * attention_widths(config)[1] + 4 * inter)
    outside = 12 * hidden  # per token: embedding output, final norm
    if grad_checkpointing:
        saved = tokens * (layers * 4 * hidden + outside)
        return saved, max(7 * chunk // 2, tokens * (per_layer + e * inter))
    return tokens * (layers * per_layer + outside), 4 * chunk  # all layers' activations still kept


def fit_memory(config, device_bytes, *, max_rows=1024, max_microbatch=128, **settings):
    """(rollout_rows, microbatch): the largest powers of two up to the step's sizes whose planned
    peaks fit USABLE x device_bytes, or None when even one row and one sequence do not fit.
    settings: memory_plan's (max_prompt, max_response, n, kl, grad_checkpointing, gpu, fused_adamw,
    chunk_tokens, world, kl_bytes, critic). Rows only touch the rollout phase, the micro-batch only the
    log-prob and update phases, so each is the largest that fits on its own."""
    budget = USABLE * device_bytes

    def largest(top, fits):
        size = 1 << (top.bit_length() - 1)
        while size >= 1 and not fits(size):
            size //= 2
        return size if size >= 1 else None

    rows = largest(max_rows, lambda r: memory_plan(config, rollout_rows=r, microbatch=1,
                                                   **settings)["rollout_peak"] <= budget)
    def micro_peak(m):
        plan = memory_plan(config, rollout_rows=1, microbatch=m, **settings)
        return max(plan[f"{phase}_peak"] for phase in ("logprobs", "update", "optimizer",
                                                       "value_update", "value_optimizer")
                   if f"{phase}_peak" in plan)
    micro = largest(max_microbatch, lambda m: micro_peak(m) <= budget)
    return (rows, micro) if rows and micro else None
