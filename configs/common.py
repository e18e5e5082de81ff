"""Fields shared by every family's config: trainer, optimizer, mesh, checkpointing.

Each family config (`configs/<family>.py`) starts from `base_config()` and fills in
`config.model` (the architecture: resuming refuses a change), `config.loss` (the objective:
free to change on resume), `config.data` (what to read and how to cut it) and, for families
that sample, `config.sample`. Sizes that come from the data (vocabularies, the token grid,
special ids) are not config fields: the family reads them from the records' metadata.json
(upgen/data/spec.py) and the run saves them in data_spec.json.
"""
import ml_collections

from upgen import errors

# Logical axis name -> mesh axes. Parameters use "embed"/"mlp"/"heads"/"vocab"/"kv";
# activations use "batch"/"length" plus the same feature names. flax skips a mesh axis
# already taken in a spec, so "embed" falls back to replicated on activations whose
# batch dimension is sharded over ("replica", "data", "fsdp"). "replica" (the slices, over
# the slow network) shards the batch only: parameters are whole in every slice.
DEFAULT_RULES = (
    ("batch", ("replica", "data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("length", None),
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("codebook", None),
)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds parameter init, data order, masking and dropout.

  c.model = ml_collections.ConfigDict()
  c.model.family = ""  # Module under upgen.models that supplies model, loss, sampler.
  c.model.dtype = "float32"  # Compute dtype: "float32" or "bfloat16".
  c.model.param_dtype = "float32"  # Parameter storage dtype.

  c.loss = ml_collections.ConfigDict()  # The family's objective settings.

  c.data = ml_collections.ConfigDict()
  c.data.dir = ""  # Directory with metadata.json and record shards (paired image-text).
  c.data.batch_size = 64  # Global batch size (all processes, all devices).
  c.data.num_workers = 0  # grain worker processes per host (0 = in the main process).

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-3  # Peak learning rate.
  c.optim.warmup_steps = 100  # Linear warmup from 0 to lr.
  # "cosine" or "linear" (to lr * final_lr_frac at train.steps after warmup), or "constant".
  c.optim.decay = "cosine"
  c.optim.final_lr_frac = 0.1  # Final learning rate as a fraction of lr.
  c.optim.b1 = 0.9  # AdamW beta1.
  c.optim.b2 = 0.95  # AdamW beta2.
  c.optim.eps = 1e-8  # AdamW epsilon.
  c.optim.weight_decay = 0.05  # Decoupled weight decay on matrices (not biases/norms).
  c.optim.grad_clip = 1.0  # Clip by global norm; 0 disables.
  c.optim.grad_accum_steps = 1  # Micro-batches per optimizer step (batch_size divisible).
  # Exponential moving average of the parameters, kept in checkpoints and sampled from by
  # `upgen sample`, previews and evaluators (0 = none; warm-up: min(d, (1+n)/(10+n))).
  c.optim.ema_decay = 0.0
  # Parameter groups kept as they are (comma-separated, e.g. "encoder"; the family names its
  # groups): no update and no weight decay, so they stay bit-identical.
  c.optim.freeze = ""

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000  # Optimizer steps to train for.
  c.train.log_every = 25  # Write metrics.jsonl / TensorBoard every N steps.
  c.train.checkpoint_every = 250  # Save an orbax checkpoint every N steps (and at the end).
  c.train.keep_checkpoints = 3  # Keep the newest N checkpoints.
  c.train.eval_every = 0  # Validation loss every N steps (0 = only at the end).
  c.train.eval_batches = 4  # Validation batches per evaluation.
  c.train.sample_every = 0  # Sample grid to TensorBoard every N steps and at the end (0 = never).
  c.train.sample_examples = 8  # Validation examples in the grid (references above samples).
  c.train.on_nonfinite = "stop"  # Non-finite loss: "stop" (error, no checkpoint) or "skip".
  c.train.max_minutes = 0.0  # Stop (with a checkpoint) after this much wall time; 0 = no limit.
  # With max_minutes: fit the run's steps (config.train.steps is then the most) to the budget
  # at the speed of its own first steps, measured within the warm-up, so the learning-rate
  # schedule ends when the time does (fitted_steps.json in the run; a resume keeps it).
  c.train.fit_to_time = False
  # Multi-process: how often the processes agree on SIGTERM / max_minutes (a host sync).
  c.train.stop_check_every = 10
  c.train.progress = True  # Console progress bar.
  # A directory of `upgen import hf`, or a run of the same family, whose parameters start a
  # new run (docs/families.md); init_groups limits it to some parameter groups ("encoder").
  c.train.init_from = ""
  c.train.init_groups = ""
  # Rows a table gains over INIT's (a language model's token table expanded with image
  # codes): "random" (fresh init), "mean" (of INIT's rows) or "contrastive" (`upgen align`).
  c.train.init_new_rows = "random"

  # Evaluators by name: `type` is a module under upgen/evaluators/ (registry.py), run with
  # the validation loss and logged as ENTRY/metric, e.g.
  # c.evals.held_out = ml_collections.ConfigDict(dict(type="text_ppl", text="lines.txt")).
  c.evals = ml_collections.ConfigDict()
  # Sample quality (upgen/evaluators/samples.py), off until one of its scores is asked for:
  # --config.evals.samples.scorer=CLIP_RUN (CLIP score and FID in its features),
  # .inception=WEIGHTS (FID in pytorch-fid's Inception features), .shapes_fidelity=true.
  c.evals.samples = ml_collections.ConfigDict(dict(
      type="samples", num=64, scorer="", inception="", shapes_fidelity=False))

  c.mesh = ml_collections.ConfigDict()
  # Slices joined by the slow data-center network (DCN): TPU slices of a multislice job, or
  # groups of processes (GPU hosts over Ethernet). Data parallel across them (mesh axis
  # "replica", outermost); 1 = one slice. Must equal the number of TPU slices, or divide the
  # number of processes. See docs/scaling.md, "Several slices".
  c.mesh.replica = 1
  # Mesh shape inside each slice (data*fsdp*tensor = devices per slice); one entry may be -1
  # to take the remaining devices.
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.rules = DEFAULT_RULES  # Logical axis -> mesh axis table.
  return c


def token_records(c: ml_collections.ConfigDict, text_dropout: float) -> None:
  """config.data of the families that read pre-tokenized records (readers.TOKEN_RECORDS)."""
  c.data.train_split = "train"  # Split trained on.
  c.data.val_split = "val"  # Split for validation loss.
  c.data.text_seq_len = 12  # Caption tokens per example (longer captions are cut, shorter padded).
  # Extra record sources mixed with data.dir, "kind:weight:dir" comma separated, kind in
  # paired|image|text. data.dir has weight data.paired_weight.
  c.data.extra_sources = ""
  c.data.paired_weight = 1.0
  c.data.image_dropout = 0.0  # Fraction of paired examples shown as text-only.
  # Fraction of paired examples shown as image-only (the unconditional stream of guidance).
  c.data.text_dropout = text_dropout


def train_recipe(c: ml_collections.ConfigDict, *, batch_size: int | None = None,
                 text_seq_len: int | None = None, lr: float | None = None,
                 warmup_steps: int | None = None, weight_decay: float | None = None,
                 steps: int | None = None, log_every: int | None = None,
                 checkpoint_every: int | None = None, sample_every: int | None = None) -> None:
  """A variant's training recipe: sets each of these fields (described where base_config()
  and token_records() define them) to the value given; None leaves it as it is."""
  for group, field, value in (
      (c.data, "batch_size", batch_size), (c.data, "text_seq_len", text_seq_len),
      (c.optim, "lr", lr), (c.optim, "warmup_steps", warmup_steps),
      (c.optim, "weight_decay", weight_decay), (c.train, "steps", steps),
      (c.train, "log_every", log_every), (c.train, "checkpoint_every", checkpoint_every),
      (c.train, "sample_every", sample_every)):
    if value is not None:
      setattr(group, field, value)


def accelerator_recipe(c: ml_collections.ConfigDict) -> None:
  """The base / large variants of the token families: batch 512, bf16, dropout, 64-token
  captions, a 200k-step schedule."""
  train_recipe(c, batch_size=512, text_seq_len=64, lr=4e-4, warmup_steps=5000, steps=200_000,
               log_every=100, checkpoint_every=2000, sample_every=5000)
  c.model.dtype = "bfloat16"
  c.model.dropout_rate = 0.1


def autoregressive_recipe(c: ml_collections.ConfigDict, variant: str) -> None:
  """config.sample of the families that decode one image code at a time
  (upgen/sampling/ar_sampler.py), and their training recipe: batch 64 on CPU for tiny,
  accelerator_recipe for the others."""
  c.sample = ml_collections.ConfigDict()
  c.sample.temperature = 1.0  # Softmax temperature (0 = greedy).
  c.sample.top_k = 0  # Sample among the k most likely codes (0 = all).
  c.sample.top_p = 1.0  # Nucleus: the most likely codes holding this much mass (1 = all).
  # Classifier-free guidance on the logits: (1 + s) * cond - s * uncond (0 = unguided;
  # DALL-E mini's "condition scale" is 1 + s).
  c.sample.guidance_scale = 2.0
  c.sample.beam_size = 0  # > 0: beam search with this many beams instead of sampling.
  c.sample.per_prompt = 4  # Samples per prompt in `upgen sample`.
  if variant != "tiny":
    accelerator_recipe(c)
    return
  train_recipe(c, batch_size=64, lr=2e-3, warmup_steps=50, weight_decay=0.01, steps=1000,
               log_every=10, checkpoint_every=200, sample_every=250)
  # Measured on the quickstart's models (docs/notes/2026-11-30-three-token-families.md): the
  # decoder-only one drew 0.71 of the validation captions at temperature 1 with guidance 2 and 0.965
  # at temperature 0.5 with guidance 1; the first encoder-decoder one 0.50, 0.69 and 0.72 greedy
  # (greedy gives every sample of a prompt the same image).
  c.sample.temperature = 0.5
  c.sample.guidance_scale = 1.0


def transformer_model(c: ml_collections.ConfigDict, family: str, variant: str,
                      sizes: dict[str, tuple[int, int, int, int]]) -> None:
  """config.model of a token family's transformer (upgen/models/layers.py TransformerConfig)
  at `sizes[variant]` = (num_layers, emb_dim, num_heads, mlp_dim)."""
  if variant not in sizes:
    raise errors.ConfigError(f"configs/{family}.py: unknown variant {variant!r}; choose from "
                             f"{sorted(sizes)}")
  c.model.family = family
  c.model.size = variant  # Name of the size variant (informational).
  (c.model.num_layers,  # Transformer blocks.
   c.model.emb_dim,  # Residual stream width.
   c.model.num_heads,  # Attention heads.
   c.model.mlp_dim) = sizes[variant]  # Hidden width of the MLP.
  c.model.dropout_rate = 0.0  # Dropout on residual branches and embeddings.
  c.model.attention_dropout_rate = 0.0  # Dropout on attention weights.
  c.model.attention_impl = ""  # jax.nn.dot_product_attention: "" (jax picks), "xla", "cudnn".
  # nn.scan over blocks: one compiled block instead of N (faster compiles for deep models).
  c.model.scan_layers = False
  c.model.remat = "none"  # Rematerialization: "none", "full", "dots", "dots_no_batch".
