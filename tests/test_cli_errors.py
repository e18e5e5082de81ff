"""The one-line promise over every command (#30): bad arguments, bad config files and keys,
configs that cannot run, and paths that are missing or in the way each print one line,
`upgen <command>: error: <what and where>`, and exit 2, before anything is written."""
import os

import pytest

from tests import token_data
from upgen import cli

HERE = os.path.abspath(__file__)


def _count_cases():
  """Every count flag of every command, each with values below its floor or not numbers."""
  w, d = "/nonexistent/run", "/nonexistent/data"
  sample = ["sample", "--workdir", w, "--prompts", HERE, "--out", "/nonexistent/out"]
  tokenize = ["tokenize", "--source", d, "--out", "/nonexistent/out"]
  commands = [
      (sample, ["--per-prompt", "--unconditional", "--batch-size", "--candidates"], 1),
      (tokenize, ["--batch-size", "--num-shards", "--image-size"], 1),
      (["data", "shapes", "--out", d], ["--num-train", "--image-size"], 1),
      (["data", "shapes", "--out", d], ["--num-val"], 0),
      (["data", "profile", d], ["--max-images", "--image-size"], 1),
      (["quickstart", "--workdir", w], ["--num-train", "--vqgan-steps", "--rerank",
                                        "--per-prompt", "--codebook-size"], 1),
      (["eval", "nll", "--workdir", w], ["--num", "--batch-size"], 1),
      (["eval", "captions", "--workdir", w, "--data", d], ["--batch-size"], 1),
      (["eval", "captions", "--workdir", w, "--data", d], ["--num"], 0),
      (["eval", "fid", "--real", d, "--fake", d, "--features", "x"], ["--limit"], 0),
      (["eval", "probe", "--workdir", w, "--data", d, "--label", "x"], ["--steps"], 1),
      (["eval", "text-ppl", "--workdir", w, "--text", HERE], ["--batch-size"], 1),
      (["align", "--workdir", w, "--data", d], ["--steps", "--batch-size"], 1),
      (["tokenizer", "text", "--captions", d, "--out", d], ["--vocab-size"], 1),
      (["demo", "--workdir", w], ["--max-samples"], 1),
      (["bench", "data", "--data-dir", d], ["--batch-size"], 1),
  ]
  for argv, flags, floor in commands:
    for flag in flags:
      for value in (str(floor - 1), "two"):
        yield argv + [flag, value], f"argument {flag}: {value!r} is not a whole number >= {floor}"


def _other_cases():
  w, d = "/nonexistent/run", "/nonexistent/data"
  tokenize = ["tokenize", "--source", d, "--out", "/nonexistent/out"]
  return [
      (tokenize + ["--val-fraction", "1.5"], "argument --val-fraction: '1.5' is not a number "
       ">= 0 and < 1"),
      (tokenize + ["--kind", "pairs"], "argument --kind: invalid choice: 'pairs'"),
      (["tokenize", "--out", d], "the following arguments are required: --source"),
      (tokenize, "--text-tokenizer is required for --kind paired"),
      (["quickstart", "--workdir", w, "--minutes", "-1"], "argument --minutes: '-1' is not a "
       "number > 0"),
      (["quickstart", "--workdir", w, "--minutes", "nan"], "'nan' is not a number > 0"),
      (["quickstart", "--workdir", w, "--family", "nope"], "--family nope: no configs/nope.py"),
      (["eval", "probe", "--workdir", w, "--data", d, "--label", "x", "--lr", "0"],
       "argument --lr: '0' is not a number > 0"),
      (["bench", "data", "--data-dir", d, "--seconds", "-3"], "'-3' is not a number > 0"),
      (["sample", "--workdir"], "argument --workdir: expected one argument"),
      (["import", "hf", "--from", d], "the following arguments are required: --family, --out"),
      (["export", "hf", "--workdir", w], "the following arguments are required: --out"),
      (["eval", "fit", "--workdir", w, "--data"], "argument --data: expected one argument"),
      (["sample", "--workdir", w, "--prompts", HERE, "--out", d, "--region", "1,2"],
       "argument --region: '1,2' is not X0,Y0,X1,Y1"),
      (["data", "profile", "/nonexistent/folder"], "/nonexistent/folder: No such file or "
       "directory"),
      (["train", "--config", "configs/nope.py", "--workdir", w],
       "--config configs/nope.py: no such config file"),
      (["train", "--config=configs/nope.py:tiny", "--workdir", w],
       "--config configs/nope.py:tiny: no such config file"),
      (["train", "--config", "configs/upgen.py:nosuch", "--workdir", w],
       "configs/upgen.py: unknown variant 'nosuch'; choose from ['base', 'large', 'small', "
       "'tiny']"),
      (["train", "--config", "configs/upgen.py:tiny", "--workdir", w, "--config.train.stepz=3"],
       "--config.train.stepz: no such config key (did you mean 'steps'?); configs are locked"),
      (["train", "--config", "configs/upgen.py:tiny", "--workdir", w, "--config.optim.lr=fast"],
       "flag --config.optim.lr=fast: could not convert string to float: 'fast'"),
      (["train", "--workdir", w], "--config and --workdir are required"),
  ]


@pytest.mark.parametrize("argv,message", list(_count_cases()) + _other_cases(),
                         ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_bad_arguments_are_one_line(argv, message, capsys):
  assert cli.main(list(argv)) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1, err
  words = argv[:2] if argv[0] in ("data", "eval", "import", "export", "tokenizer", "bench") \
      else argv[:1]
  assert err[0].startswith(f"upgen {' '.join(words)}: error: "), err[0]
  assert message in err[0], err[0]
  assert "Traceback" not in err[0] and "\\n" not in err[0]


def test_help_still_prints_help(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["sample", "--help"])
  assert e.value.code == 0 and capsys.readouterr().out.startswith("usage: upgen sample")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return token_data.write(str(tmp_path_factory.mktemp("records")), num_train=16, num_val=8)


@pytest.mark.parametrize("override,message", [
    ("--config.mesh.data=3", "config.mesh: data*fsdp*tensor = 3 but there are "),
    ("--config.mesh.replica=2", "config.mesh.replica=2 does not divide the 1 process(es) of "
     "this job"),
    ("--config.optim.grad_accum_steps=3", "config.optim.grad_accum_steps=3: must be >= 1 and "
     "divide config.data.batch_size=8"),
])
def test_configs_that_cannot_run_are_refused_before_anything_is_written(
    tmp_path, data_dir, override, message, capsys):
  workdir = tmp_path / "run"
  flags = [f"--config.{k}={v}" for k, v in token_data.tiny_overrides(data_dir).items()]
  assert cli.main(["train", "--config", "configs/upgen.py:tiny", "--workdir", str(workdir),
                   *flags, override]) == 2
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith("upgen train: error: ") and message in line, line
  assert not os.path.exists(workdir / "config.json")
  assert not os.path.exists(workdir / "checkpoints")


def test_paths_in_the_way_are_one_line(tmp_path, capsys):
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  assert cli.main(["data", "shapes", "--out", str(a_file), "--num-train", "4"]) == 2
  assert capsys.readouterr().err.splitlines() == [
      f"upgen data shapes: error: {a_file}: a file is there; a directory is wanted"]
  # An OSError that is not about a path the user named stays a bug, with its traceback.
  assert cli.path_error(OSError(5, "Input/output error")) is None
  assert cli.path_error(FileNotFoundError(2, "No such file or directory", "/x")) == (
      "/x: No such file or directory")
