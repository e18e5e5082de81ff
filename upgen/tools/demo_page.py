"""The `upgen demo` page: Gradio components over `upgen.tools.demo.Demo` (the optional demo extra).

One tab per thing the run can do: text->image (every family that draws), image->text and
inpainting (families with an image tokenizer that can). Every input a user can get wrong
comes back as a message under the button (errors.UserError), never as a stack trace. The
element ids (`elem_id`) are the page's interface for tests and scripts.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Optional

import numpy as np

from upgen import errors
from upgen import inference
from upgen.tools import demo as demo_lib

# Gradio, imported when a page is built (`_import_gradio`): the optional demo extra, and heavy,
# so `upgen demo` checks the run (and names what is wrong with it) before it needs Gradio.
gr: Any = None


def _import_gradio() -> None:
  global gr
  if gr is not None:
    return
  # Before Gradio is imported (it reads these at import time): nothing leaves the machine, no
  # usage analytics or version checks, no hub look-ups.
  os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  try:
    import gradio  # The optional demo extra (heavy): only here.
  except ImportError as e:
    raise errors.ConfigError(f"the demo needs Gradio ({e}): pip install -e .[demo] (pinned: "
                             "pip install -r requirements-demo-lock.txt)") from None
  gr = gradio


# Samples are small (32 px at the quickstart's size): shown enlarged, pixels kept sharp.
CSS = ".upgen-samples img { image-rendering: pixelated; }"


def _setting(field: demo_lib.Field, scope: str) -> Any:
  """The form control of one sampler setting, the run's value as default."""
  common = dict(label=field.key, info=field.help or None,
                elem_id=f"{scope}-setting-{field.key}")
  if field.choices:
    return gr.Dropdown(choices=list(field.choices), value=field.default, **common)
  if isinstance(field.default, bool):
    return gr.Checkbox(value=field.default, **common)
  if isinstance(field.default, (int, float)):
    return gr.Number(value=field.default, precision=0 if isinstance(field.default, int)
                     else None, **common)
  return gr.Textbox(value=str(field.default), **common)


def _settings(demo: demo_lib.Demo, scope: str, open_: bool) -> list[Any]:
  with gr.Accordion("Sampling settings (the run's config.sample)", open=open_):
    with gr.Row():
      return [_setting(f, scope) for f in demo.fields]


def _answer(fn: Callable[..., demo_lib.Result], gallery: bool = True
            ) -> Callable[..., tuple]:
  """A handler that shows a UserError as the page's message and clears the results."""
  def handler(*args):
    try:
      result = fn(*args)
    except errors.UserError as e:
      return ([], f"**Not drawn:** {e}") if gallery else ("", [], f"**Not read:** {e}")
    shown = [(np.asarray(x), label) for x, label in zip(result.images, result.labels)]
    if gallery:
      return shown, result.message
    return "\n".join(result.texts), shown, result.message
  return handler


def _results(scope: str) -> tuple[Any, Any]:
  status = gr.Markdown(elem_id=f"{scope}-status")
  gallery = gr.Gallery(label="Samples", columns=8, format="png", object_fit="contain",
                       height="auto", elem_id=f"{scope}-gallery", interactive=False,
                       elem_classes=["upgen-samples"])
  return status, gallery


def build(demo: demo_lib.Demo, title: str) -> gr.Blocks:
  """The page for a loaded run."""
  _import_gradio()
  keys = [f.key for f in demo.fields]
  per_prompt = min(int(demo.run.config.sample.get("per_prompt", 4)), demo.max_samples)
  size = demo.image_size
  with gr.Blocks(title=title, analytics_enabled=False) as page:
    gr.Markdown(f"## {title}\nFamily **{demo.family}**: captions are read up to "
                f"{demo.text_length} tokens; images are {size}x{size}."
                + (" Best-of-N reranking by the CLIP scorer." if demo.scorer else ""))
    if demo.can_generate:
      with gr.Tab("Text to image", elem_id="tab-generate"):
        prompt = gr.Textbox(label="Prompt", placeholder="a caption, as the training captions "
                            "read", elem_id="prompt")
        with gr.Row():
          num = gr.Slider(1, demo.max_samples, value=per_prompt, step=1, label="Samples",
                          elem_id="num-samples")
          seed = gr.Number(0, precision=0, label="Seed", elem_id="seed")
          candidates = gr.Slider(1, 16, value=1, step=1, visible=demo.scorer is not None,
                                 label="Best of N (CLIP score)", elem_id="candidates")
        values = _settings(demo, "generate", True)
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        status, gallery = _results("generate")

        def generate(prompt, num, seed, candidates, *values):
          return demo.generate(prompt, num, dict(zip(keys, values)), candidates=candidates,
                               seed=seed)
        inputs = [prompt, num, seed, candidates, *values]
        button.click(_answer(generate), inputs, [gallery, status])
        prompt.submit(_answer(generate), inputs, [gallery, status])
    if demo.can_caption:
      with gr.Tab("Image to text", elem_id="tab-caption"):
        image = gr.Image(label="Image", type="numpy", image_mode="RGB",
                         sources=["upload", "clipboard"], elem_id="caption-image")
        with gr.Row():
          num_captions = gr.Slider(1, demo.max_samples, value=4, step=1, label="Captions",
                                   elem_id="num-captions")
          caption_seed = gr.Number(0, precision=0, label="Seed", elem_id="caption-seed")
        button = gr.Button("Caption", variant="primary", elem_id="caption")
        captions = gr.Textbox(label="Captions", lines=4, interactive=False,
                              elem_id="captions")
        status, seen = _results("caption")
        button.click(_answer(lambda im, n, s: demo.caption(im, n, seed=s), gallery=False),
                     [image, num_captions, caption_seed], [captions, seen, status])
    if demo.can_inpaint:
      with gr.Tab("Inpaint", elem_id="tab-inpaint"):
        inpaint_prompt = gr.Textbox(label="Prompt for the whole image",
                                    elem_id="inpaint-prompt")
        inpaint_image = gr.Image(label="Image", type="numpy", image_mode="RGB",
                                 sources=["upload", "clipboard"], elem_id="inpaint-image")
        gr.Markdown(f"The box to regenerate, in pixels of the {size}x{size} image (X1, Y1 "
                    "exclusive): every token cell it touches is drawn anew.")
        with gr.Row():
          box = [gr.Number(v, precision=0, label=name, elem_id=f"inpaint-{name.lower()}")
                 for name, v in zip(("X0", "Y0", "X1", "Y1"), (0, 0, size // 2, size))]
        with gr.Row():
          inpaint_num = gr.Slider(1, demo.max_samples, value=per_prompt, step=1,
                                  label="Samples", elem_id="inpaint-num-samples")
          inpaint_seed = gr.Number(0, precision=0, label="Seed", elem_id="inpaint-seed")
        inpaint_values = _settings(demo, "inpaint", False)
        button = gr.Button("Inpaint", variant="primary", elem_id="inpaint")
        status, gallery = _results("inpaint")

        def inpaint(prompt, image, x0, y0, x1, y1, num, seed, *values):
          return demo.inpaint(prompt, image, [x0, y0, x1, y1], num,
                              dict(zip(keys, values)), seed=seed)
        button.click(_answer(inpaint), [inpaint_prompt, inpaint_image, *box, inpaint_num,
                                        inpaint_seed, *inpaint_values], [gallery, status])
  # One request draws at a time; the rest wait in the queue.
  page.queue(default_concurrency_limit=1, max_size=64)
  return page


def serve(demo: demo_lib.Demo, *, title: str, host: str, port: int) -> None:
  """Serves the page until interrupted; everything it loads comes from this server."""
  page = build(demo, title)
  page.launch(server_name=host, server_port=port, share=False, ssr_mode=False, pwa=False,
              mcp_server=False, enable_monitoring=False, show_error=True, inbrowser=False,
              footer_links=["settings"], quiet=True, prevent_thread_lock=True, css=CSS)
  print(f"upgen demo: serving http://{host}:{port} (Ctrl-C stops it)", flush=True)
  try:
    page.block_thread()
  finally:
    page.close()


def main(argv: Optional[list[str]] = None) -> int:
  parser = errors.ArgumentParser(prog="upgen demo", description=demo_lib.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="Run directory of `upgen train`.")
  parser.add_argument("--port", type=errors.whole(0), default=7860)
  parser.add_argument("--host", default="127.0.0.1",
                      help="Address to serve on (default: this machine only).")
  parser.add_argument("--scorer", help="A clip run (configs/clip.py) for best-of-N reranking.")
  parser.add_argument("--no-ema", action="store_true",
                      help="The trained parameters, not their EMA, where the run keeps one.")
  parser.add_argument("--batch-size", type=errors.whole(1), default=8,
                      help="Rows per compiled sampling call (requests are drawn in batches).")
  parser.add_argument("--max-samples", type=errors.whole(1), default=16,
                      help="The most samples one request may ask for.")
  args = parser.parse_args(argv)
  scorer = inference.load_scorer(args.scorer) if args.scorer else None
  run = inference.load_run(args.workdir, ema=not args.no_ema)
  demo = demo_lib.Demo(run, scorer, batch_size=args.batch_size, max_samples=args.max_samples)
  _import_gradio()  # The run and scorer are fine: now the page's own dependency.
  print(f"upgen demo: compiling the samplers of {args.workdir} (family {demo.family})...",
        flush=True)
  print(f"upgen demo: compiled in {demo.warm_up():.1f} s", flush=True)
  serve(demo, title=f"upgen demo: {os.path.basename(os.path.abspath(args.workdir))}",
        host=args.host, port=args.port)
  return 0


if __name__ == "__main__":
  sys.exit(main())
