"""The names of what a run directory (and an `upgen import hf` INIT directory) holds.

A leaf: every layer may read these, so the writer of a file and its readers agree without
importing each other.

  W/config.json        the run's config (CONFIG_FILE)
  W/data_spec.json     the sizes the data fixed (SPEC_FILE)
  W/checkpoints/       orbax steps (CHECKPOINT_DIR)
  W/metrics.jsonl      one JSON line per logged step (METRICS_FILE)
  W/fitted_steps.json  the step count config.train.fit_to_time chose (FITTED_FILE)
  INIT/import.json     what `upgen import hf` imported (REPORT_FILE)
  INIT/init_params/    its parameters, Flax msgpack (PARAMS_DIR)
  INIT/tokenizer/      its text tokenizer (TOKENIZER_DIR)
  INIT/aligned_params/ `upgen align`'s token table (ALIGNED_DIR)
"""

CONFIG_FILE = "config.json"
SPEC_FILE = "data_spec.json"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
FITTED_FILE = "fitted_steps.json"
REPORT_FILE = "import.json"
PARAMS_DIR = "init_params"
TOKENIZER_DIR = "tokenizer"
ALIGNED_DIR = "aligned_params"
